//! Administration used by the CLI, the dev stack and tests: preparing servers, registering
//! producers and their keys.

use anyhow::Context as _;
use async_nats::jetstream::Context;
use atp_core::producer::AdminAction;
use atp_core::registry::{ProducerKey, SourceRegistration};
use atp_core::registry::{SYSTEM_SOURCE, SYSTEM_TENANT};
use atp_core::{PartitionKey, SourceId, TenantId};
use atp_nats::admin_trail;
use atp_nats::auth::{AuthDir, Identity};
use atp_nats::{registry, streams};
use chrono::Utc;

/// Applies streams and buckets (idempotent) and runs migrations.
pub async fn prepare(js: &Context, database_url: &str, replicas: usize) -> anyhow::Result<()> {
    for (name, applied) in streams::apply(js, replicas).await? {
        tracing::info!(stream = %name, ?applied, "stream applied");
    }
    let kv = js.get_key_value(streams::PRODUCERS_BUCKET).await?;
    admin_trail::ensure_source(&kv, &TenantId::new(SYSTEM_TENANT)?).await?;
    let pool = atp_store::connect(database_url, 2).await?;
    atp_store::migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

pub fn partition(tenant: &str, source: &str) -> anyhow::Result<PartitionKey> {
    Ok(PartitionKey::new(
        TenantId::new(tenant)?,
        SourceId::new(source)?,
    ))
}

/// Makes a source a NATS identity of `auth` (a new nkey user that may publish only to its
/// ingress subject) and has the servers at `nats_url` apply it. Returns the user's public nkey
/// and the seed file's path.
pub async fn add_nats_producer(
    nats_url: &str,
    auth: &AuthDir,
    p: &PartitionKey,
    seed_out: Option<&std::path::Path>,
) -> anyhow::Result<(String, std::path::PathBuf)> {
    let (user, seed) = auth.add_producer(p, seed_out)?;
    reload_nats(nats_url, auth).await?;
    Ok((user.nkey, seed))
}

/// Has every server at `nats_url` reload its configuration, as `auth`'s system user.
pub async fn reload_nats(nats_url: &str, auth: &AuthDir) -> anyhow::Result<Vec<String>> {
    let seed = auth.seed_path(&Identity::System);
    let seed = seed
        .to_str()
        .context("the auth directory's path is not UTF-8")?;
    let system = atp_nats::connect(nats_url, "atp-reload", Some(seed)).await?;
    Ok(atp_nats::auth::reload(&system).await?)
}

/// Who the CLI acts as on the admin trail.
pub fn operator() -> String {
    format!(
        "operator:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// Records an admin action of the CLI's on `tenant`'s admin trail (ADR 0010).
pub async fn record_action(
    js: &Context,
    tenant: &str,
    action: &str,
    resource: (&str, &str),
    attributes: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let actor = operator();
    let id = admin_trail::record(
        js,
        &TenantId::new(tenant)?,
        &AdminAction {
            actor: &actor,
            action,
            resource_type: resource.0,
            resource_id: resource.1,
            attributes,
        },
    )
    .await?;
    eprintln!("recorded {action} on {tenant}'s admin trail (event {id})");
    Ok(())
}

/// Records an admin action of the CLI's on a producer (`tenant:source`) on its tenant's trail.
pub async fn record_producer_action(
    js: &Context,
    p: &PartitionKey,
    action: &str,
    attributes: serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    record_action(
        js,
        p.tenant.as_str(),
        action,
        ("producer", &p.to_string()),
        attributes,
    )
    .await
}

/// Registers a source (or updates its URI) and adds a key to it.
pub async fn add_producer(
    js: &Context,
    tenant: &str,
    source: &str,
    source_uri: &str,
    key: Option<(&str, [u8; 32])>,
) -> anyhow::Result<SourceRegistration> {
    if source == SYSTEM_SOURCE {
        anyhow::bail!("source {SYSTEM_SOURCE:?} is reserved for ATP's own admin trail");
    }
    // Registering a producer is where a customer tenant comes into being: ATP's own tenant
    // ids are refused here (its admin trail's source is registered by `prepare`, not here).
    let p = PartitionKey::new(TenantId::customer(tenant)?, SourceId::new(source)?);
    let kv = js
        .get_key_value(streams::PRODUCERS_BUCKET)
        .await
        .context("the producer registry bucket (run `atp streams apply`)")?;
    admin_trail::ensure_source(&kv, &p.tenant).await?;
    let mut reg = registry::get(&kv, &p)
        .await?
        .unwrap_or_else(|| SourceRegistration::new(p.tenant.clone(), p.source.clone(), source_uri));
    reg.source_uri = source_uri.to_owned();
    if let Some((key_id, public_key)) = key {
        if reg.key(key_id).is_some() {
            anyhow::bail!(
                "key id {key_id:?} is already registered for {p}; key ids are never reused"
            );
        }
        let key = ProducerKey::new(key_id, public_key, Utc::now());
        match key.verifying_key() {
            // A small-order key would "verify" forged signatures: refuse it at the door.
            Some(vk) if !vk.is_weak() => {}
            _ => anyhow::bail!("the public key for {key_id:?} is not a usable Ed25519 key"),
        }
        reg.keys.push(key);
    }
    registry::put(&kv, &reg).await?;
    Ok(reg)
}

/// Adds a webhook HMAC secret (32 random bytes) to a registered source, for
/// `POST /ingest/webhooks/{sourceId}` signed with Standard Webhooks `v1`. The secret is
/// returned once; the registry bucket keeps it for the gateway.
pub async fn add_webhook_secret(
    js: &Context,
    tenant: &str,
    source: &str,
    secret_id: &str,
) -> anyhow::Result<atp_core::registry::WebhookSecret> {
    let p = PartitionKey::new(TenantId::new(tenant)?, SourceId::new(source)?);
    anyhow::ensure!(
        !secret_id.is_empty()
            && secret_id.len() <= 128
            && secret_id.bytes().all(|b| b.is_ascii_graphic()),
        "a webhook secret id is 1 to 128 printable ASCII characters"
    );
    let kv = js.get_key_value(streams::PRODUCERS_BUCKET).await?;
    let mut reg = registry::get(&kv, &p)
        .await?
        .with_context(|| format!("{p} is not registered"))?;
    anyhow::ensure!(
        reg.webhook_secrets.iter().all(|s| s.id != secret_id),
        "webhook secret id {secret_id:?} is already used for {p}; ids are never reused"
    );
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let secret = atp_core::registry::WebhookSecret {
        id: secret_id.to_owned(),
        secret: bytes.to_vec(),
        created_at: Utc::now(),
        revoked_at: None,
    };
    reg.webhook_secrets.push(secret.clone());
    registry::put(&kv, &reg).await?;
    Ok(secret)
}

pub async fn revoke_key(
    js: &Context,
    tenant: &str,
    source: &str,
    key_id: &str,
) -> anyhow::Result<()> {
    let p = PartitionKey::new(TenantId::new(tenant)?, SourceId::new(source)?);
    let kv = js.get_key_value(streams::PRODUCERS_BUCKET).await?;
    let mut reg = registry::get(&kv, &p)
        .await?
        .with_context(|| format!("{p} is not registered"))?;
    let k = reg
        .keys
        .iter_mut()
        .find(|k| k.key_id == key_id)
        .with_context(|| format!("{p} has no key {key_id:?}"))?;
    k.revoked_at.get_or_insert_with(Utc::now);
    registry::put(&kv, &reg).await?;
    Ok(())
}
