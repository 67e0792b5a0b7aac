//! What the fuzz targets share: the fixed partition, registration and keys they run against,
//! and the byte layout of an admission input (so seeds can be written by hand or by
//! `examples/seeds.rs`).
//!
//! Everything here is fixed on purpose: libFuzzer needs a target to be a deterministic function
//! of its input, and the seeds' signatures only verify against these keys.

use atp_core::event::{Channel, Submission};
use atp_core::names::{PartitionKey, SourceId, TenantId};
use atp_core::registry::{ProducerKey, SourceRegistration};
use ed25519_dalek::SigningKey;

/// The CloudEvents `source` the fixed registration stands for.
pub const SOURCE_URI: &str = "https://crm.example.com/core";
/// The producer key id the fixed registration lists.
pub const PRODUCER_KEY_ID: &str = "k1";
/// The note (checkpoint) key name the bundle and checkpoint seeds are signed under.
pub const LOG_NAME: &str = "atp.fuzz";

/// The producer's signing key: the same bytes as the core's admission unit tests.
pub fn producer_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// The log's key: checkpoints and bundle manifests of the seeds are signed with it.
pub fn log_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub fn partition() -> Option<PartitionKey> {
    Some(PartitionKey::new(
        TenantId::new("acme").ok()?,
        SourceId::new("crm").ok()?,
    ))
}

/// `acme/crm`, registered with [`producer_key`] and [`SOURCE_URI`].
pub fn registration(allow_unsigned: bool) -> Option<SourceRegistration> {
    let mut r = SourceRegistration::new(
        TenantId::new("acme").ok()?,
        SourceId::new("crm").ok()?,
        SOURCE_URI,
    );
    r.keys.push(ProducerKey::new(
        PRODUCER_KEY_ID,
        producer_key().verifying_key().to_bytes(),
        // Admission never reads a key's creation time; any fixed instant does.
        chrono::DateTime::UNIX_EPOCH,
    ));
    r.allow_unsigned = allow_unsigned;
    Some(r)
}

/// Flag bits of an admission input's first byte.
pub mod flags {
    /// Submitted through the gateway (unsigned events are attributed to the token).
    pub const GATEWAY: u8 = 1;
    /// The registration accepts unsigned events on NATS.
    pub const ALLOW_UNSIGNED: u8 = 2;
    /// The tenant has no such source (`admit` gets no registration).
    pub const UNREGISTERED: u8 = 4;
}

/// An admission input, decoded: `flags byte`, then header lines `name:value\n` up to an empty
/// line, then the body. Without an empty line everything after the flags is the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionInput {
    pub flags: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl AdmissionInput {
    pub fn decode(data: &[u8]) -> Self {
        let Some((&flags, mut rest)) = data.split_first() else {
            return Self {
                flags: 0,
                headers: Vec::new(),
                body: Vec::new(),
            };
        };
        let mut headers = Vec::new();
        let body = loop {
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                // No empty line: what looked like headers was the body.
                headers.clear();
                break data[1..].to_vec();
            };
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            if line.is_empty() {
                break rest.to_vec();
            }
            let line = String::from_utf8_lossy(line);
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            headers.push((name.to_owned(), value.to_owned()));
        };
        Self {
            flags,
            headers,
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    pub fn channel(&self) -> Channel {
        if self.flags & flags::GATEWAY != 0 {
            Channel::Gateway {
                subject: "svc-fuzz".to_owned(),
            }
        } else {
            Channel::Nats
        }
    }

    pub fn submission(&self) -> Submission<'_> {
        Submission::from_headers(
            &self.body,
            self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            self.channel(),
        )
    }
}
