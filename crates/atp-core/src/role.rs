//! ATP's roles: the parts of ATP a process can run (`atp serve --roles`), each with its own NATS
//! identity and least privilege. One word for one concept: a *role* is one of these; the set a
//! process runs is [`Roles`]; what a caller's token allows at the gateway is a permission
//! (`atp_gateway::Permission`); how a role that reads a stream works is the runtime's `Worker`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One part of ATP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Gateway,
    Ingest,
    Projector,
    Integrity,
    Exporter,
    /// Data-subject requests and retention (CONTRACT §8): destroys subject keys, scrubs the
    /// read model, attests on the admin trail.
    Lifecycle,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Gateway,
        Role::Ingest,
        Role::Projector,
        Role::Integrity,
        Role::Exporter,
        Role::Lifecycle,
    ];

    /// The name in `--roles`, in seed file names and in NATS identities.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Ingest => "ingest",
            Role::Projector => "projector",
            Role::Integrity => "integrity",
            Role::Exporter => "exporter",
            Role::Lifecycle => "lifecycle",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller may do at the gateway, granted by its token's `roles` claim (CONTRACT §5 and
/// §8: `producer`, `auditor`, `admin`, `privacy`). Not to be confused with ATP's own roles
/// ([`Role`], the parts a process runs). A tenant's policy says which classifications each
/// permission reads in clear ([`crate::policy::PolicyDocument::readers`]).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Producer,
    Auditor,
    Admin,
    /// A data-protection officer: data-subject requests, legal holds, and (by default) the only
    /// permission that reads `personal` and `sensitive` values in clear.
    Privacy,
}

impl Permission {
    pub const ALL: [Permission; 4] = [
        Permission::Producer,
        Permission::Auditor,
        Permission::Admin,
        Permission::Privacy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Producer => "producer",
            Permission::Auditor => "auditor",
            Permission::Admin => "admin",
            Permission::Privacy => "privacy",
        }
    }
}

/// The roles one process runs.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

/// A `--roles` entry that names no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}: choose from gateway, ingest, projector, integrity, exporter, lifecycle (or all)"
)]
pub struct UnknownRole(pub String);

impl Roles {
    pub const NONE: Roles = Roles(0);
    pub const ALL: Roles = Roles(0b11_1111);

    /// A comma-separated list (`ATP_ROLES`): role names, or `all`; blanks are ignored.
    pub fn parse(s: &str) -> Result<Roles, UnknownRole> {
        let mut roles = Roles::NONE;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            roles = match (part, Role::parse(part)) {
                ("all", _) => Roles::ALL,
                (_, Some(r)) => roles.with(r),
                (other, None) => return Err(UnknownRole(other.to_owned())),
            };
        }
        Ok(roles)
    }

    pub fn only(role: Role) -> Roles {
        Roles(role.bit())
    }

    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.has(*r))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_as_atp_roles_spells_them() {
        let cases: [(&str, Result<Roles, UnknownRole>); 6] = [
            ("all", Ok(Roles::ALL)),
            ("", Ok(Roles::NONE)),
            ("ingest", Ok(Roles::only(Role::Ingest))),
            (
                " gateway , projector,",
                Ok(Roles::only(Role::Gateway).with(Role::Projector)),
            ),
            ("ingest,all", Ok(Roles::ALL)),
            ("ingest,witness", Err(UnknownRole("witness".to_owned()))),
        ];
        for (input, expected) in cases {
            assert_eq!(Roles::parse(input), expected, "{input:?}");
        }
    }

    #[test]
    fn each_role_is_named_once_and_read_back() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(Roles::only(r).has(r));
            assert_eq!(Roles::only(r).iter().collect::<Vec<_>>(), vec![r]);
        }
        assert_eq!(Roles::ALL.iter().count(), Role::ALL.len());
        assert_eq!(
            Roles::ALL.to_string(),
            "gateway,ingest,projector,integrity,exporter,lifecycle"
        );
    }
}
