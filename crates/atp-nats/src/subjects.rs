//! Subjects, built from the templates of `subjects.yaml` (the test below keeps them equal).

use atp_core::{PartitionKey, SourceId, TenantId};

pub const INGRESS: &str = "atp.ingress.{tenant}.{source}";
pub const LEDGER: &str = "atp.ledger.{tenant}.{source}";
pub const REJECTED: &str = "atp.rejected.{tenant}.{source}";
pub const CHECKPOINT: &str = "atp.checkpoint.{tenant}.{source}";
pub const EXPORT_REQUESTED: &str = "atp.export.requested.{tenant}";
pub const EXPORT_COMPLETED: &str = "atp.export.completed.{tenant}";
pub const ALERT_INTEGRITY: &str = "atp.alert.integrity.{tenant}.{source}";
pub const DLQ: &str = "atp.dlq.{role}.{tenant}";
pub const POLICY_CHANGED: &str = "atp.policy.changed.{tenant}";

/// Every template, keyed as in `subjects.yaml`.
pub const ALL: [(&str, &str); 9] = [
    ("ingress", INGRESS),
    ("ledger", LEDGER),
    ("rejected", REJECTED),
    ("checkpoint", CHECKPOINT),
    ("export_requested", EXPORT_REQUESTED),
    ("export_completed", EXPORT_COMPLETED),
    ("alert_integrity", ALERT_INTEGRITY),
    ("dlq", DLQ),
    ("policy_changed", POLICY_CHANGED),
];

pub fn render(template: &str, tenant: &str, source: &str) -> String {
    template
        .replace("{tenant}", tenant)
        .replace("{source}", source)
}

pub fn ingress(p: &PartitionKey) -> String {
    render(INGRESS, p.tenant.as_str(), p.source.as_str())
}
pub fn ledger(p: &PartitionKey) -> String {
    render(LEDGER, p.tenant.as_str(), p.source.as_str())
}
pub fn rejected(p: &PartitionKey) -> String {
    render(REJECTED, p.tenant.as_str(), p.source.as_str())
}
pub fn checkpoint(p: &PartitionKey) -> String {
    render(CHECKPOINT, p.tenant.as_str(), p.source.as_str())
}
pub fn alert_integrity(p: &PartitionKey) -> String {
    render(ALERT_INTEGRITY, p.tenant.as_str(), p.source.as_str())
}
pub fn export_requested(t: &TenantId) -> String {
    render(EXPORT_REQUESTED, t.as_str(), "")
}
pub fn export_completed(t: &TenantId) -> String {
    render(EXPORT_COMPLETED, t.as_str(), "")
}
pub fn policy_changed(t: &TenantId) -> String {
    render(POLICY_CHANGED, t.as_str(), "")
}

/// Where a role's dead letters for a tenant go (`atp.dlq.projector.acme`). The tenant token is
/// taken as the message carried it, so a letter about a malformed subject still has a home.
pub fn dlq(role: &str, tenant_token: &str) -> String {
    DLQ.replace("{role}", role)
        .replace("{tenant}", tenant_token)
}

/// The rejected subject for raw subject tokens that are not valid names (so that even a
/// submission on a malformed subject is answered, never dropped).
pub fn rejected_raw(tenant_token: &str, source_token: &str) -> String {
    render(REJECTED, tenant_token, source_token)
}

/// The two tokens after the prefix of a two-token subject (`atp.ingress.<t>.<s>` → (t, s)).
pub fn tokens_of<'s>(template: &str, subject: &'s str) -> Option<(&'s str, &'s str)> {
    let prefix = template.split(".{tenant}").next()?;
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (t, s) = rest.split_once('.')?;
    (!s.contains('.')).then_some((t, s))
}

/// The wildcard form of a template: every tenant and source (`atp.ledger.*.*`).
pub fn all(template: &str) -> String {
    render(template, "*", "*").replace("{role}", "*")
}
/// The wildcard form for one tenant (`atp.ledger.acme.*`).
pub fn tenant_all(template: &str, t: &TenantId) -> String {
    render(template, t.as_str(), "*")
}

/// Reads the partition out of a subject built from `template`; `None` if it does not fit.
pub fn partition_of(template: &str, subject: &str) -> Option<PartitionKey> {
    let mut tenant = None;
    let mut source = None;
    let mut t_tokens = template.split('.');
    let mut s_tokens = subject.split('.');
    loop {
        match (t_tokens.next(), s_tokens.next()) {
            (None, None) => break,
            (Some("{tenant}"), Some(v)) => tenant = Some(v),
            (Some("{source}"), Some(v)) => source = Some(v),
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
    Some(PartitionKey::new(
        TenantId::new(tenant?).ok()?,
        SourceId::new(source?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PartitionKey {
        PartitionKey::parse("acme:crm").unwrap()
    }

    #[test]
    fn subjects_yaml_matches_the_code() {
        let yaml = include_str!("../../../subjects.yaml");
        let mut from_yaml = Vec::new();
        let mut current: Option<String> = None;
        for line in yaml.lines() {
            if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
                if !name.starts_with(' ') {
                    current = Some(name.to_owned());
                }
            } else if let Some(pat) = line.trim().strip_prefix("pattern: ") {
                from_yaml.push((current.clone().unwrap(), pat.trim_matches('"').to_owned()));
            }
        }
        let from_code: Vec<(String, String)> = ALL
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(from_yaml, from_code);
    }

    #[test]
    fn streams_capture_exactly_their_subjects() {
        for (file, templates) in [
            (
                include_str!("../../../streams/ATP_INGRESS.json"),
                vec![INGRESS],
            ),
            (
                include_str!("../../../streams/ATP_LEDGER.json"),
                vec![LEDGER],
            ),
            (
                include_str!("../../../streams/ATP_REJECTED.json"),
                vec![REJECTED],
            ),
            (
                include_str!("../../../streams/ATP_CHECKPOINTS.json"),
                vec![CHECKPOINT],
            ),
            (
                include_str!("../../../streams/ATP_EXPORTS.json"),
                vec![EXPORT_REQUESTED, EXPORT_COMPLETED],
            ),
            (
                include_str!("../../../streams/ATP_ALERTS.json"),
                vec![ALERT_INTEGRITY],
            ),
            (include_str!("../../../streams/ATP_DLQ.json"), vec![DLQ]),
        ] {
            let v: serde_json::Value = serde_json::from_str(file).unwrap();
            let subjects: Vec<String> = serde_json::from_value(v["subjects"].clone()).unwrap();
            let expected: Vec<String> = templates.iter().map(|t| all(t)).collect();
            assert_eq!(subjects, expected, "{}", v["name"]);
        }
    }

    #[test]
    fn builds_and_parses() {
        assert_eq!(ingress(&p()), "atp.ingress.acme.crm");
        assert_eq!(ledger(&p()), "atp.ledger.acme.crm");
        assert_eq!(all(LEDGER), "atp.ledger.*.*");
        assert_eq!(dlq("projector", "acme"), "atp.dlq.projector.acme");
        assert_eq!(all(DLQ), "atp.dlq.*.*");
        assert_eq!(export_requested(&p().tenant), "atp.export.requested.acme");
        assert_eq!(partition_of(INGRESS, "atp.ingress.acme.crm"), Some(p()));
        assert_eq!(partition_of(INGRESS, "atp.ledger.acme.crm"), None);
        assert_eq!(partition_of(INGRESS, "atp.ingress.acme"), None);
        assert_eq!(partition_of(INGRESS, "atp.ingress.ACME.crm"), None);
        assert_eq!(partition_of(INGRESS, "atp.ingress.acme.crm.x"), None);
    }
}
