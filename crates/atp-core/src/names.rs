//! Tenant, source and partition names (CONTRACT §1). A partition is one chain: `<tenant>:<source>`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("tenantId {0:?} must match ^[a-z0-9][a-z0-9-]{{0,62}}$")]
    Tenant(String),
    #[error("sourceId {0:?} must match ^[a-z0-9][a-z0-9_-]{{0,62}}$")]
    Source(String),
    #[error("partition {0:?} must be <tenantId>:<sourceId>")]
    Partition(String),
    #[error("tenantId {0:?} is reserved for ATP's own use (`atp` and every `atp-…` id)")]
    Reserved(String),
}

fn valid_name(s: &str, extra: &[u8]) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
}

/// A tenant id. Because it is restricted to `[a-z0-9-]`, it is always a single, safe NATS
/// subject token and a safe SQL literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if valid_name(&s, b"-") {
            Ok(Self(s))
        } else {
            Err(NameError::Tenant(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether ATP keeps this id for itself: `atp`, the tenant of its platform-wide admin trail
    /// (ADR 0010), and every `atp-…` id, kept free for whatever else ATP comes to need, so
    /// that no customer ever holds an id ATP's own records are filed under.
    pub fn is_reserved(&self) -> bool {
        self.0 == crate::registry::SYSTEM_TENANT || self.0.starts_with("atp-")
    }

    /// A tenant id a customer may be given: valid and not reserved. Used wherever a customer
    /// tenant comes into being (producer registration, tokens minted for customers); ATP's own
    /// code names its tenant with [`Self::new`].
    pub fn customer(s: impl Into<String>) -> Result<Self, NameError> {
        let t = Self::new(s)?;
        if t.is_reserved() {
            return Err(NameError::Reserved(t.0));
        }
        Ok(t)
    }
}

/// A source id, registered per tenant; a single NATS subject token like the tenant id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceId(String);

impl SourceId {
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        if valid_name(&s, b"-_") {
            Ok(Self(s))
        } else {
            Err(NameError::Source(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_conversions!(TenantId);
string_conversions!(SourceId);

/// One partition = one chain = one Merkle log: `<tenantId>:<sourceId>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub tenant: TenantId,
    pub source: SourceId,
}

impl PartitionKey {
    pub fn new(tenant: TenantId, source: SourceId) -> Self {
        Self { tenant, source }
    }
    /// The key written `<tenant>:<source>` (the idempotency key's and the CLI's form).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (t, src) = s
            .split_once(':')
            .ok_or_else(|| NameError::Partition(s.to_owned()))?;
        Self::from_ids(t, src)
    }

    /// The key of two ids as stored apart (columns, headers, subject tokens), each checked.
    pub fn from_ids(tenant: &str, source: &str) -> Result<Self, NameError> {
        Ok(Self::new(TenantId::new(tenant)?, SourceId::new(source)?))
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tenant, self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atps_own_tenant_ids_are_reserved_for_customers_only() {
        for own in ["atp", "atp-platform", "atp-"] {
            let t = TenantId::new(own);
            assert!(t.is_ok(), "ATP itself may name {own}");
            assert!(t.unwrap().is_reserved());
            assert_eq!(
                TenantId::customer(own),
                Err(NameError::Reserved(own.to_owned()))
            );
        }
        for customer in ["acme", "atpx", "atp1", "xatp", "my-atp"] {
            assert!(TenantId::customer(customer).is_ok(), "{customer}");
        }
        assert!(matches!(
            TenantId::customer("Bad"),
            Err(NameError::Tenant(_))
        ));
    }

    #[test]
    fn names_follow_the_contract_patterns() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("a-1").is_ok());
        assert!(TenantId::new("-a").is_err());
        assert!(
            TenantId::new("a_b").is_err(),
            "underscore is for sources only"
        );
        assert!(TenantId::new("A").is_err());
        assert!(
            TenantId::new("a.b").is_err(),
            "a dot would split a NATS subject token"
        );
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("a".repeat(63)).is_ok());
        assert!(TenantId::new("a".repeat(64)).is_err());
        assert!(SourceId::new("crm_core-1").is_ok());
        assert!(SourceId::new("_x").is_err());
        assert!(SourceId::new("x*").is_err());
        let p = PartitionKey::parse("acme:crm").unwrap();
        assert_eq!(p.to_string(), "acme:crm");
        assert!(PartitionKey::parse("acme").is_err());
    }
}
