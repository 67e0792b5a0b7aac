//! Editions: the capabilities a tenant has bought. The gateway gates a route on the caller's
//! edition, and the use-case behind it checks again with the edition it was handed, so no path
//! that skips the gateway's gate (a CLI, a worker, another route) becomes a confused deputy.

use serde::{Deserialize, Serialize};

/// Ordered: each edition has every feature of the ones before it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    #[default]
    Standard,
    Enterprise,
}

/// A capability not every edition has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Signed completion webhooks for exports.
    ExportWebhooks,
    /// Server-side re-verification of a whole range of a partition's records.
    RangeVerification,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::ExportWebhooks => "export webhooks",
            Feature::RangeVerification => "range verification",
        }
    }

    /// The least edition with this feature.
    pub fn edition(self) -> Edition {
        match self {
            Feature::ExportWebhooks | Feature::RangeVerification => Edition::Enterprise,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} needs the {:?} edition; this tenant has {:?}", feature.as_str(), feature.edition(), edition)]
pub struct EditionError {
    pub feature: Feature,
    pub edition: Edition,
}

impl Edition {
    pub fn as_str(self) -> &'static str {
        match self {
            Edition::Standard => "standard",
            Edition::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Edition> {
        match s {
            "standard" => Some(Edition::Standard),
            "enterprise" => Some(Edition::Enterprise),
            _ => None,
        }
    }

    pub fn allows(self, feature: Feature) -> bool {
        self >= feature.edition()
    }

    pub fn require(self, feature: Feature) -> Result<(), EditionError> {
        if self.allows(feature) {
            Ok(())
        } else {
            Err(EditionError {
                feature,
                edition: self,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enterprise_features_are_refused_to_standard_and_named_in_the_refusal() {
        assert!(Edition::Enterprise.allows(Feature::ExportWebhooks));
        let err = Edition::Standard
            .require(Feature::RangeVerification)
            .unwrap_err();
        assert_eq!(err.edition, Edition::Standard);
        assert!(err.to_string().contains("range verification"), "{err}");
        assert_eq!(Edition::default(), Edition::Standard);
        assert_eq!(Edition::parse("enterprise"), Some(Edition::Enterprise));
        assert_eq!(Edition::parse("gold"), None);
        let e: Edition = serde_json::from_str("\"standard\"").unwrap();
        assert_eq!(e, Edition::Standard);
    }
}
