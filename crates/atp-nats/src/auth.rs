//! Who may connect to ATP's NATS servers, and what each identity may publish and read.
//!
//! nats-server enforces it: every identity is an nkey user with publish and subscribe
//! allow-lists (ADR 0008). ATP's own identities live in the `ATP` account, where the streams
//! are; each tenant's producers live in the tenant's own account, `TENANT_<tenant>`, with that
//! tenant's connection, subscription and payload limits (ADR 0014).
//!
//! - A **producer** of `tenant/source` may publish to `atp.ingress.<tenant>.<source>` (imported
//!   from the `ATP` account as a service, so JetStream's acknowledgement comes back) and
//!   subscribe to inboxes of its own account only: not another tenant's subjects, not the
//!   ledger, not the JetStream API. Its seed file is a plain nkey seed, which every official
//!   client loads as it is.
//! - Each **worker role** may publish only what it produces: ingest the ledger and rejections,
//!   the projector dead letters, integrity checkpoints and alerts, the exporter completions and
//!   bundles, the gateway ingress and export requests. Roles read ATP's streams through the
//!   JetStream API but cannot create, change, purge or delete them.
//! - **admin** (the CLI that applies streams, registers producers and replays) may do anything.
//! - **system** is a user of the server's system account, used only to ask servers to reload.
//!
//! The users live in `users.json` of an auth directory, beside the seeds of ATP's own
//! identities; [`AuthDir`] renders them to `auth.conf`, which the server's configuration
//! includes, and [`reload`] asks every server to apply it without a restart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_nats::Client;
use atp_core::role::Role;
use atp_core::{PartitionKey, SourceId, TenantId};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The account ATP's streams and every ATP identity live in.
pub const ACCOUNT: &str = "ATP";
/// The server's system account.
pub const SYSTEM_ACCOUNT: &str = "SYS";
/// The rendered users file the server's configuration includes.
pub const CONF_FILE: &str = "auth.conf";
const USERS_FILE: &str = "users.json";
/// Per-tenant limits that differ from [`TenantLimits::default`] (optional).
const TENANTS_FILE: &str = "tenants.json";
/// Held (an advisory lock) by whoever changes `users.json`.
const LOCK_FILE: &str = ".lock";
/// A seed file's line naming the inbox prefix the identity must use.
const INBOX_LINE: &str = "# inbox-prefix: ";
/// How long [`reload`] collects answers from the servers of a cluster.
const GATHER: Duration = Duration::from_millis(500);

/// Someone connecting to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Producer(PartitionKey),
    /// One of ATP's roles (spelled `worker:<role>` in the auth directory).
    Role(Role),
    Admin,
    System,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Producer(p) => write!(f, "producer:{}:{}", p.tenant, p.source),
            Identity::Role(w) => write!(f, "worker:{}", w.as_str()),
            Identity::Admin => f.write_str("admin"),
            Identity::System => f.write_str("system"),
        }
    }
}

impl FromStr for Identity {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, AuthError> {
        let bad = || AuthError::Identity(s.to_owned());
        Ok(match s.split(':').collect::<Vec<_>>().as_slice() {
            ["admin"] => Identity::Admin,
            ["system"] => Identity::System,
            ["worker", r] => Identity::Role(Role::parse(r).ok_or_else(bad)?),
            ["producer", t, s] => Identity::Producer(PartitionKey::new(
                TenantId::new(*t).map_err(|_| bad())?,
                SourceId::new(*s).map_err(|_| bad())?,
            )),
            _ => return Err(bad()),
        })
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Subjects an identity may publish to and subscribe to; everything else is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

impl Identity {
    /// The prefix of the inboxes this identity's requests are answered on: the only subjects
    /// it may subscribe to, unless it is admin.
    pub fn inbox_prefix(&self) -> String {
        match self {
            // The client's default: in the tenant's own account, inboxes are the tenant's alone.
            Identity::Producer(_) => "_INBOX".to_owned(),
            Identity::Role(w) => format!("_INBOX.{}", w.as_str()),
            Identity::Admin => "_INBOX.admin".to_owned(),
            Identity::System => "_INBOX.system".to_owned(),
        }
    }

    /// The file name of this identity's seed in an auth directory.
    fn seed_file(&self) -> String {
        match self {
            Identity::Producer(p) => format!("producer-{}-{}.nk", p.tenant, p.source),
            Identity::Role(w) => format!("{}.nk", w.as_str()),
            Identity::Admin => "admin.nk".to_owned(),
            Identity::System => "system.nk".to_owned(),
        }
    }

    pub fn permissions(&self) -> Permissions {
        let inbox = vec![format!("{}.>", self.inbox_prefix())];
        let (publish, subscribe) = match self {
            Identity::Producer(p) => (vec![crate::subjects::ingress(p)], inbox),
            Identity::Admin | Identity::System => (vec![">".to_owned()], vec![">".to_owned()]),
            Identity::Role(w) => {
                let mut publish = reading_streams(reads(*w));
                publish.extend(writes(*w));
                (publish, inbox)
            }
        };
        Permissions { publish, subscribe }
    }
}

/// What a worker may ask the JetStream API: any stream's and consumer's information, and the messages of
/// the streams it reads (consumers of its own on them, acks, messages by sequence or subject).
/// Not: read any other stream; create, update, purge or delete a stream; delete a message.
fn reading_streams(reads: &[Reads]) -> Vec<String> {
    let mut subjects: Vec<String> = [
        "$JS.API.INFO",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        // How far each role's consumers are (the gateway's lag figures).
        "$JS.API.CONSUMER.INFO.*.*",
        "$JS.FC.>",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for s in reads.iter().map(|r| r.stream()) {
        subjects.extend([
            // Create (named, filtered, or durable), info, delete, names, list, next.
            format!("$JS.API.CONSUMER.*.{s}"),
            format!("$JS.API.CONSUMER.*.{s}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{s}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{s}.>"),
            format!("$JS.API.STREAM.MSG.GET.{s}"),
            format!("$JS.API.DIRECT.GET.{s}"),
            format!("$JS.API.DIRECT.GET.{s}.>"),
            format!("$JS.ACK.{s}.>"),
        ]);
    }
    subjects
}

/// What a worker reads: a stream, a KV bucket or an object store (named as the crate names
/// them; the server knows the last two by their streams, `KV_<bucket>` and `OBJ_<store>`).
#[derive(Debug, Clone, Copy)]
enum Reads {
    Stream(&'static str),
    Bucket(&'static str),
    Objects(&'static str),
}

impl Reads {
    fn stream(self) -> String {
        match self {
            Reads::Stream(s) => s.to_owned(),
            Reads::Bucket(b) => format!("KV_{b}"),
            Reads::Objects(o) => format!("OBJ_{o}"),
        }
    }
}

/// What each worker reads.
fn reads(w: Role) -> &'static [Reads] {
    use crate::streams::*;
    use Reads::{Bucket, Objects, Stream};
    match w {
        Role::Gateway => &[
            Bucket(PRODUCERS_BUCKET),
            // Ingest's resume hints: the ingest lag figure of `/metrics`.
            Bucket(INGEST_BUCKET),
            Bucket(SIGNING_KEYS_BUCKET),
            Bucket(EXPORT_WEBHOOKS_BUCKET),
            Bucket(DLQ_REPLAYS_BUCKET),
            Bucket(POLICIES_BUCKET),
            Objects(EXPORT_BUNDLES),
            Stream(DLQ),
            Stream(LEDGER),
            Stream(REJECTED),
        ],
        Role::Ingest => &[
            Stream(INGRESS),
            Stream(LEDGER),
            Stream(REJECTED),
            Bucket(INGEST_BUCKET),
            Bucket(PRODUCERS_BUCKET),
            Bucket(POLICIES_BUCKET),
            Bucket(SUBJECT_KEYS_BUCKET),
        ],
        Role::Projector => &[
            Stream(LEDGER),
            Stream(REJECTED),
            Bucket(POLICIES_BUCKET),
            Bucket(SUBJECT_KEYS_BUCKET),
        ],
        Role::Integrity => &[
            Stream(LEDGER),
            Stream(CHECKPOINTS),
            Bucket(SIGNING_KEYS_BUCKET),
        ],
        Role::Exporter => &[
            Stream(EXPORTS),
            Objects(EXPORT_BUNDLES),
            Bucket(EXPORT_WEBHOOKS_BUCKET),
            Bucket(SIGNING_KEYS_BUCKET),
            Bucket(POLICIES_BUCKET),
            Bucket(SUBJECT_KEYS_BUCKET),
        ],
        Role::Lifecycle => &[
            Bucket(POLICIES_BUCKET),
            Bucket(SUBJECT_KEYS_BUCKET),
            // Bundles that disclose destroyed keys' values are withdrawn.
            Objects(EXPORT_BUNDLES),
        ],
    }
}

/// The subjects each worker produces, built from the subject templates.
fn writes(w: Role) -> Vec<String> {
    use crate::subjects::{self, all};
    let dlq_of = |role: &str| subjects::dlq(role, "*");
    let mut out = match w {
        Role::Gateway => vec![
            all(subjects::INGRESS),
            all(subjects::EXPORT_REQUESTED),
            subjects::render(subjects::POLICY_CHANGED, "*", ""),
        ],
        Role::Ingest => vec![all(subjects::LEDGER), all(subjects::REJECTED)],
        Role::Projector => vec![dlq_of("projector")],
        Role::Integrity => vec![all(subjects::CHECKPOINT), all(subjects::ALERT_INTEGRITY)],
        Role::Exporter => vec![all(subjects::EXPORT_COMPLETED), dlq_of("exporter")],
        // Erasure and deletion attestations, on each tenant's admin trail (ADR 0010); the
        // exports of data-subject access requests (ADR 0020).
        Role::Lifecycle => vec![
            subjects::render(subjects::INGRESS, "*", atp_core::registry::SYSTEM_SOURCE),
            all(subjects::EXPORT_REQUESTED),
        ],
    };
    let api: &[&str] = match w {
        Role::Gateway => &[
            "$KV.ATP_EXPORT_WEBHOOKS.>",
            "$KV.ATP_DLQ_REPLAYS.>",
            "$KV.ATP_POLICIES.>",
            // The oldest waiting submission's age (the ingest lag figure of `/metrics`): one
            // message per tenant with a backlog. The gateway reads every record already.
            "$JS.API.DIRECT.GET.ATP_INGRESS",
            "$JS.API.DIRECT.GET.ATP_INGRESS.>",
        ],
        Role::Ingest => &[
            "$KV.ATP_INGEST.>",
            // Subject keys are created on first use (ADR 0019).
            "$KV.ATP_SUBJECT_KEYS.>",
            // Trimming what every lane has handled (ADR 0017).
            "$JS.API.STREAM.PURGE.ATP_INGRESS",
        ],
        Role::Projector => &[],
        Role::Integrity => &["$KV.ATP_SIGNING_KEYS.>"],
        // Destroying subject keys (erasure, retention), withdrawing bundles that disclose them.
        Role::Lifecycle => &[
            "$KV.ATP_SUBJECT_KEYS.>",
            "$O.ATP_EXPORT_BUNDLES.>",
            "$JS.API.STREAM.PURGE.OBJ_ATP_EXPORT_BUNDLES",
        ],
        Role::Exporter => &[
            "$O.ATP_EXPORT_BUNDLES.>",
            // Replacing an object purges its old chunks.
            "$JS.API.STREAM.PURGE.OBJ_ATP_EXPORT_BUNDLES",
        ],
    };
    out.extend(api.iter().map(|s| (*s).to_owned()));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("not an ATP NATS identity: {0:?}")]
    Identity(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid users file: {source}")]
    Users {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{0} is not an auth directory: run `atp nats init-auth --dir {0}`")]
    NotInitialised(PathBuf),
    #[error("nkey: {0}")]
    Nkey(String),
    #[error("{path} holds no nkey seed")]
    NoSeed { path: PathBuf },
    #[error("no NATS server answered the reload request: {0}")]
    NoServer(String),
    #[error("nats-server {server} refused the reload: {reason}")]
    Refused { server: String, reason: String },
}

/// One user of the rendered configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// The public nkey (`U...`).
    pub nkey: String,
    pub identity: Identity,
    pub created_at: DateTime<Utc>,
}

/// A directory holding ATP's NATS users (`users.json`, public keys only), the configuration
/// rendered from them (`auth.conf`) and the seeds of ATP's own identities (`*.nk`, mode 0600).
#[derive(Debug, Clone)]
pub struct AuthDir {
    dir: PathBuf,
}

impl AuthDir {
    /// Creates the directory with fresh identities for system, admin and every worker; an
    /// initialised directory is opened as it is.
    pub fn init(dir: &Path) -> Result<AuthDir, AuthError> {
        let me = AuthDir {
            dir: dir.to_owned(),
        };
        if me.users_path().exists() {
            return AuthDir::open(dir);
        }
        std::fs::create_dir_all(dir).map_err(|source| AuthError::Io {
            what: "creating",
            path: dir.to_owned(),
            source,
        })?;
        let mut users = Vec::new();
        let own = [Identity::System, Identity::Admin]
            .into_iter()
            .chain(Role::ALL.into_iter().map(Identity::Role));
        for identity in own {
            let path = dir.join(identity.seed_file());
            users.push(new_user(identity, &path)?);
        }
        me.save(&users)?;
        Ok(me)
    }

    pub fn open(dir: &Path) -> Result<AuthDir, AuthError> {
        let me = AuthDir {
            dir: dir.to_owned(),
        };
        if !me.users_path().exists() {
            return Err(AuthError::NotInitialised(dir.to_owned()));
        }
        Ok(me)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration to include from the server's: `include "<this path>"`.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join(CONF_FILE)
    }

    /// The seed file of one of ATP's own identities (or of a producer whose seed was written
    /// here by [`AuthDir::add_producer`] without another path).
    pub fn seed_path(&self, identity: &Identity) -> PathBuf {
        self.dir.join(identity.seed_file())
    }

    fn users_path(&self) -> PathBuf {
        self.dir.join(USERS_FILE)
    }

    pub fn users(&self) -> Result<Vec<User>, AuthError> {
        let path = self.users_path();
        let bytes = std::fs::read(&path).map_err(|source| AuthError::Io {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| AuthError::Users { path, source })
    }

    /// A new user for a producer, its seed written to `seed_out` (default: in this directory).
    /// Earlier users of the same producer stay until removed, so credentials can be rotated
    /// without a gap. The caller then asks the servers to [`reload`].
    pub fn add_producer(
        &self,
        p: &PartitionKey,
        seed_out: Option<&Path>,
    ) -> Result<(User, PathBuf), AuthError> {
        let identity = Identity::Producer(p.clone());
        let path = seed_out
            .map(Path::to_owned)
            .unwrap_or_else(|| self.seed_path(&identity));
        let _lock = self.lock()?;
        let user = new_user(identity, &path)?;
        let mut users = self.users()?;
        users.push(user.clone());
        self.save(&users)?;
        Ok((user, path))
    }

    /// Removes every user of a producer; returns how many there were. Their connections are
    /// closed by the server on the next [`reload`].
    pub fn remove_producer(&self, p: &PartitionKey) -> Result<usize, AuthError> {
        let identity = Identity::Producer(p.clone());
        let _lock = self.lock()?;
        let mut users = self.users()?;
        let before = users.len();
        users.retain(|u| u.identity != identity);
        self.save(&users)?;
        Ok(before - users.len())
    }

    /// The directory's lock, held until dropped: two commands changing the users at once
    /// (say, two `atp producer add`) would otherwise each write back what it read, and one
    /// user would be lost.
    fn lock(&self) -> Result<std::fs::File, AuthError> {
        let path = self.dir.join(LOCK_FILE);
        let io = |source| AuthError::Io {
            what: "locking",
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(file)
    }

    /// The limits set for tenants by [`AuthDir::set_tenant_limits`]; other tenants have the
    /// defaults.
    pub fn tenant_limits(
        &self,
    ) -> Result<std::collections::BTreeMap<String, TenantLimits>, AuthError> {
        let path = self.dir.join(TENANTS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| AuthError::Users { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(source) => Err(AuthError::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    /// Sets one tenant's limits and renders the configuration again; the caller then asks the
    /// servers to [`reload`].
    pub fn set_tenant_limits(
        &self,
        tenant: &TenantId,
        limits: TenantLimits,
    ) -> Result<(), AuthError> {
        let _lock = self.lock()?;
        let mut all = self.tenant_limits()?;
        all.insert(tenant.to_string(), limits);
        let path = self.dir.join(TENANTS_FILE);
        let json = serde_json::to_vec_pretty(&all).map_err(|source| AuthError::Users {
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, &json, false)?;
        self.save(&self.users()?)
    }

    fn save(&self, users: &[User]) -> Result<(), AuthError> {
        let json = serde_json::to_vec_pretty(users).map_err(|source| AuthError::Users {
            path: self.users_path(),
            source,
        })?;
        write_atomically(&self.users_path(), &json, false)?;
        let conf = render(users, &self.tenant_limits()?);
        write_atomically(&self.conf_path(), conf.as_bytes(), false)
    }
}

/// What one tenant's producers may use of the NATS servers, enforced by nats-server on the
/// tenant's account (ADR 0014). A flooding tenant fills its own budget, not the others'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TenantLimits {
    /// Concurrent connections of all the tenant's producers. 64: a producer service holds one
    /// or two; this leaves room for dozens of instances while a leak or a flood of connections
    /// stops at the tenant's own door.
    pub max_connections: u32,
    /// Concurrent subscriptions (a producer subscribes only to its inbox, one or two each).
    pub max_subscriptions: u32,
    /// Largest message a producer may publish: ATP_INGRESS's own 1 MiB. A source's event limit
    /// (64 KiB by default) is ATP's to judge, with a rejection that says so; this is the bound
    /// past which the server closes the connection instead.
    pub max_payload: u32,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_subscriptions: 256,
            max_payload: 1024 * 1024,
        }
    }
}

/// The account a tenant's producers connect in.
pub fn tenant_account(tenant: &TenantId) -> String {
    format!("TENANT_{tenant}")
}

/// The server configuration for `users`: the `ATP` account with JetStream, ATP's own users and,
/// for each tenant with producers, a service export of its ingress subjects to the tenant's
/// account; one account per such tenant, with its limits, its producers and the import; and
/// the system account.
pub fn render(users: &[User], limits: &std::collections::BTreeMap<String, TenantLimits>) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let list = |items: &[String]| items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let user_line = |u: &User| {
        let p = u.identity.permissions();
        format!(
            "      # {}\n      {{ nkey: {}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}\n",
            u.identity,
            q(&u.nkey),
            list(&p.publish),
            list(&p.subscribe),
        )
    };
    // Tenants in name order, so the rendered file is stable.
    let mut tenants: std::collections::BTreeMap<&TenantId, Vec<&User>> = Default::default();
    for u in users {
        if let Identity::Producer(p) = &u.identity {
            tenants.entry(&p.tenant).or_default().push(u);
        }
    }
    let mut out = String::from(
        "# Rendered by ATP from users.json; change it with `atp producer add`, not by hand.\n",
    );
    out.push_str(&format!(
        "accounts {{\n  {ACCOUNT} {{\n    jetstream: enabled\n    users: [\n"
    ));
    for u in users
        .iter()
        .filter(|u| u.identity != Identity::System && !matches!(u.identity, Identity::Producer(_)))
    {
        out.push_str(&user_line(u));
    }
    out.push_str("    ]\n    exports: [\n");
    for tenant in tenants.keys() {
        out.push_str(&format!(
            "      {{ service: {}, accounts: [{}] }}\n",
            q(&crate::subjects::tenant_all(
                crate::subjects::INGRESS,
                tenant
            )),
            q(&tenant_account(tenant)),
        ));
    }
    out.push_str("    ]\n  }\n");
    for (tenant, producers) in &tenants {
        let l = limits.get(tenant.as_str()).copied().unwrap_or_default();
        out.push_str(&format!(
            "  {} {{\n    limits: {{ max_connections: {}, max_subscriptions: {}, max_payload: {} }}\n    imports: [ {{ service: {{ account: {ACCOUNT}, subject: {} }} }} ]\n    users: [\n",
            q(&tenant_account(tenant)),
            l.max_connections,
            l.max_subscriptions,
            l.max_payload,
            q(&crate::subjects::tenant_all(crate::subjects::INGRESS, tenant)),
        ));
        for u in producers {
            out.push_str(&user_line(u));
        }
        out.push_str("    ]\n  }\n");
    }
    out.push_str(&format!("  {SYSTEM_ACCOUNT} {{\n    users: [\n"));
    for u in users.iter().filter(|u| u.identity == Identity::System) {
        out.push_str(&format!("      {{ nkey: {} }}\n", q(&u.nkey)));
    }
    out.push_str(&format!(
        "    ]\n  }}\n}}\nsystem_account: {SYSTEM_ACCOUNT}\n"
    ));
    out
}

fn new_user(identity: Identity, seed_path: &Path) -> Result<User, AuthError> {
    let kp = nkeys::KeyPair::new_user();
    let seed = kp.seed().map_err(|e| AuthError::Nkey(e.to_string()))?;
    let body = match identity {
        // What a producer's engineer hands to the official clients (`nats --nkey`, nats.go's
        // `NkeyOptionFromSeed`, nats-py's `nkeys_seed`, nats.js, async-nats): the seed alone,
        // without even a newline, since nats-py decodes the file's every byte as the seed.
        Identity::Producer(_) => seed.clone(),
        _ => format!(
            "# ATP NATS identity {identity}. This seed is the credential: keep it secret.\n{INBOX_LINE}{}\n{seed}\n",
            identity.inbox_prefix()
        ),
    };
    write_atomically(seed_path, body.as_bytes(), true)?;
    Ok(User {
        nkey: kp.public_key(),
        identity,
        created_at: Utc::now(),
    })
}

fn write_atomically(path: &Path, bytes: &[u8], secret: bool) -> Result<(), AuthError> {
    let io = |what, source| AuthError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(|e| io("writing", e))?;
        f.write_all(bytes).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("writing", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("replacing", e))
}

/// A seed file's contents: the seed, and the inbox prefix if the file names one.
pub fn read_seed(path: &Path) -> Result<(String, Option<String>), AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })?;
    parse_seed(&text).ok_or_else(|| AuthError::NoSeed {
        path: path.to_owned(),
    })
}

/// The seed (`SU...`) and inbox prefix of a seed file, `None` when it holds no user seed (a
/// JWT `.creds` file, say).
pub fn parse_seed(text: &str) -> Option<(String, Option<String>)> {
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))?
        .to_owned();
    let inbox = text
        .lines()
        .find_map(|l| l.strip_prefix(INBOX_LINE))
        .map(|s| s.trim().to_owned());
    Some((seed, inbox))
}

/// Asks every server the system user reaches to reload its configuration, and checks each one
/// applied it. Returns the ids of the servers that did.
pub async fn reload(system: &Client) -> Result<Vec<String>, AuthError> {
    let no_server = |e: &dyn fmt::Display| AuthError::NoServer(e.to_string());
    // Every server of the cluster answers a ping; gather the answers for a moment.
    let inbox = system.new_inbox();
    let mut answers = system
        .subscribe(inbox.clone())
        .await
        .map_err(|e| no_server(&e))?;
    system
        .publish_with_reply("$SYS.REQ.SERVER.PING.IDZ", inbox, "".into())
        .await
        .map_err(|e| no_server(&e))?;
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + GATHER;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, answers.next()).await {
        // IDZ answers `{"name", "host", "id"}`.
        if let Ok(idz) = serde_json::from_slice::<ServerId>(&msg.payload) {
            ids.push(idz.id);
        }
    }
    if ids.is_empty() {
        return Err(AuthError::NoServer(
            "the system account's ping went unanswered".to_owned(),
        ));
    }
    // Twice: an account a reload introduces (a new tenant's) does not route its service import
    // until the next reload (nats-server 2.15.1; without the second pass the test
    // `nats_auth::a_producer_added_to_the_running_server_publishes_only_into_its_own_partition`
    // gets no responder). Reloading an unchanged file again changes nothing else.
    for _ in 0..2 {
        for id in &ids {
            let msg = system
                .request(format!("$SYS.REQ.SERVER.{id}.RELOAD"), "".into())
                .await
                .map_err(|e| no_server(&e))?;
            let answer: ServerAnswer =
                serde_json::from_slice(&msg.payload).map_err(|e| no_server(&e))?;
            if let Some(e) = answer.error {
                return Err(AuthError::Refused {
                    server: id.clone(),
                    reason: e.description,
                });
            }
        }
    }
    tracing::info!(servers = ids.len(), "NATS servers reloaded their users");
    Ok(ids)
}

/// A server API answer: `{"server": {...}, "data": ..., "error": {"code", "description"}}`.
#[derive(Deserialize)]
struct ServerAnswer {
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ServerId {
    id: String,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, s: &str) -> PartitionKey {
        PartitionKey::new(TenantId::new(t).unwrap(), SourceId::new(s).unwrap())
    }

    #[test]
    fn producers_added_at_once_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::init(dir.path()).unwrap();
        let before = auth.users().unwrap().len();
        std::thread::scope(|s| {
            for i in 0..8 {
                let auth = auth.clone();
                s.spawn(move || {
                    auth.add_producer(&p("acme", &format!("src-{i}")), None)
                        .unwrap()
                });
            }
        });
        let users = auth.users().unwrap();
        assert_eq!(users.len(), before + 8);
        let conf = std::fs::read_to_string(auth.conf_path()).unwrap();
        for u in &users {
            assert!(
                conf.contains(&u.nkey),
                "{} is in users.json but not in auth.conf",
                u.nkey
            );
        }
    }

    #[test]
    fn identities_round_trip_through_their_names() {
        for id in [
            Identity::Admin,
            Identity::System,
            Identity::Role(Role::Projector),
            Identity::Producer(p("acme", "crm")),
        ] {
            assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);
        }
        assert!("producer:ACME:crm".parse::<Identity>().is_err());
        assert!("worker:janitor".parse::<Identity>().is_err());
    }

    #[test]
    fn a_producer_publishes_to_its_own_partition_and_reads_only_its_inbox() {
        let perm = Identity::Producer(p("acme", "crm")).permissions();
        assert_eq!(perm.publish, vec!["atp.ingress.acme.crm"]);
        // The client's default inboxes, inside the tenant's own account.
        assert_eq!(perm.subscribe, vec!["_INBOX.>"]);
    }

    #[test]
    fn only_ingest_writes_the_ledger_and_no_worker_manages_streams() {
        for w in Role::ALL {
            let perm = Identity::Role(w).permissions();
            let writes_ledger = perm.publish.iter().any(|s| s.starts_with("atp.ledger"));
            assert_eq!(writes_ledger, w == Role::Ingest, "{w:?}");
            assert!(
                !perm.publish.iter().any(|s| s.contains("STREAM.DELETE")
                    || s.contains("STREAM.CREATE")
                    || s.contains("STREAM.UPDATE")
                    || s.contains("MSG.DELETE")
                    || s == ">"),
                "{w:?}: {:?}",
                perm.publish
            );
            assert_eq!(perm.subscribe, vec![format!("_INBOX.{}.>", w.as_str())]);
        }
    }

    #[test]
    fn each_worker_reads_only_its_streams() {
        let reads = |w: Role, stream: &str| {
            let perm = Identity::Role(w).permissions();
            let direct = format!("$JS.API.DIRECT.GET.{stream}");
            let consumer = format!("$JS.API.CONSUMER.CREATE.{stream}.>");
            (
                perm.publish.contains(&direct),
                perm.publish.contains(&consumer.replace("CREATE", "*")),
            )
        };
        for w in Role::ALL {
            // Only ingest consumes ingress; the gateway reads one message per waiting tenant
            // for the lag figure.
            let ingress = reads(w, crate::streams::INGRESS);
            assert_eq!(
                ingress,
                (matches!(w, Role::Ingest | Role::Gateway), w == Role::Ingest),
                "{w:?}"
            );
            // The lifecycle role withdraws bundles that disclose destroyed keys' values.
            let bundles = reads(w, "OBJ_ATP_EXPORT_BUNDLES").0;
            assert_eq!(
                bundles,
                matches!(w, Role::Gateway | Role::Exporter | Role::Lifecycle),
                "{w:?}"
            );
            assert!(
                !Identity::Role(w)
                    .permissions()
                    .publish
                    .iter()
                    .any(|s| s == "$JS.API.CONSUMER.>" || s == "$JS.API.DIRECT.GET.>"),
                "{w:?} reads every stream"
            );
        }
    }

    #[test]
    fn seed_files_carry_the_inbox_prefix() {
        let text = "# ATP NATS identity producer:acme:crm.\n# inbox-prefix: _INBOX.p.acme.crm\nSUAEXAMPLE\n";
        let (seed, inbox) = parse_seed(text).unwrap();
        assert_eq!(seed, "SUAEXAMPLE");
        assert_eq!(inbox.as_deref(), Some("_INBOX.p.acme.crm"));
        assert!(parse_seed("-----BEGIN NATS USER JWT-----\neyJ...\n").is_none());
    }

    #[test]
    fn the_rendered_configuration_quotes_subjects_and_keeps_system_apart() {
        let dir = tempfile::tempdir().unwrap();
        let auth = AuthDir::init(dir.path()).unwrap();
        let (u, seed) = auth.add_producer(&p("acme", "crm"), None).unwrap();
        let conf = std::fs::read_to_string(auth.conf_path()).unwrap();
        assert!(conf.contains(&format!("nkey: \"{}\"", u.nkey)));
        assert!(conf.contains("\"$JS.API.INFO\""));
        assert!(conf.contains("system_account: SYS"));
        let system = auth
            .users()
            .unwrap()
            .into_iter()
            .find(|u| u.identity == Identity::System)
            .unwrap();
        let sys_block = conf.split("SYS {").nth(1).unwrap();
        assert!(sys_block.contains(&system.nkey));
        // A producer's seed file is the seed alone, as the official clients read it.
        let text = std::fs::read_to_string(&seed).unwrap();
        assert!(
            text.starts_with("SU") && !text.contains(char::is_whitespace),
            "{text:?}"
        );
        let (seed, inbox) = read_seed(&seed).unwrap();
        assert!(seed.starts_with("SU"));
        assert_eq!(inbox, None);
        // The producer is in its tenant's account, which imports only its tenant's ingress.
        let tenant_block = conf.split("\"TENANT_acme\" {").nth(1).unwrap();
        assert!(
            tenant_block
                .split("\n  }")
                .next()
                .unwrap()
                .contains(&u.nkey)
        );
        assert!(tenant_block.contains("max_connections: 64"));
        assert!(tenant_block.contains("subject: \"atp.ingress.acme.*\""));
        let atp_block = conf.split("ATP {").nth(1).unwrap();
        assert!(
            atp_block.contains("{ service: \"atp.ingress.acme.*\", accounts: [\"TENANT_acme\"] }")
        );
        auth.set_tenant_limits(
            &TenantId::new("acme").unwrap(),
            TenantLimits {
                max_connections: 3,
                ..TenantLimits::default()
            },
        )
        .unwrap();
        let conf = std::fs::read_to_string(auth.conf_path()).unwrap();
        assert!(conf.contains("max_connections: 3,"));
        assert_eq!(auth.remove_producer(&p("acme", "crm")).unwrap(), 1);
        assert!(
            !std::fs::read_to_string(auth.conf_path())
                .unwrap()
                .contains(&u.nkey)
        );
    }
}
