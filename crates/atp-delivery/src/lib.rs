//! Export bundles on their way out, shared by the exporter (which stores and announces them)
//! and the gateway (which serves them and registers webhooks) without either linking the
//! other: [`cold`] (the cold store: JetStream's Object Store, S3 or a directory), [`object_key`],
//! [`webhook`] (targets, signatures, backoff) and [`outbound`] (which addresses are public; an
//! HTTP client that connects only to the addresses it vetted).

pub mod cold;
pub mod outbound;
pub mod webhook;

/// The cold-store key of an export's bundle.
pub fn object_key(tenant: &str, export_id: &str) -> String {
    format!("{tenant}/{export_id}.tar")
}
