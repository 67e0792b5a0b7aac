//! Policy stamped on a record at acceptance (ARCHITECTURE decision 7): classification and
//! retention, with the version of the policy that decided them.

use serde::{Deserialize, Serialize};

/// The `policy` object of a record. Its field names are part of the record's canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStamp {
    pub policy_version: u32,
    pub classification: String,
    pub retention_policy_id: String,
}

impl Default for PolicyStamp {
    /// The platform default until a tenant configures its own: internal data, kept seven years
    /// (the common floor for financial and audit records).
    fn default() -> Self {
        Self {
            policy_version: 1,
            classification: "internal".to_owned(),
            retention_policy_id: "default-7y".to_owned(),
        }
    }
}
