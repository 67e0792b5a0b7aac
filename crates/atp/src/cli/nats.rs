//! `atp nats init-auth|reload|tenant-limits`: ATP's NATS identities and what tenants may use.

use std::path::PathBuf;

use super::NatsArgs;
use atp_nats::auth::AuthDir;

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Create an auth directory: nkey users for ATP's roles, admin and the system account, and
    /// `auth.conf` for the server's configuration to include.
    InitAuth {
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        dir: PathBuf,
    },
    /// Ask every server to reload its configuration (after editing an included file).
    Reload {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        nats_auth_dir: PathBuf,
    },
    /// Set what one tenant's direct producers may use of the NATS servers (enforced by
    /// nats-server on the tenant's account), and apply it by a reload. Unset values keep the
    /// defaults: 64 connections, 256 subscriptions, 1 MiB messages.
    TenantLimits {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        nats_auth_dir: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        max_connections: Option<u32>,
        #[arg(long)]
        max_subscriptions: Option<u32>,
        #[arg(long)]
        max_payload: Option<u32>,
    },
}

pub(super) async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::InitAuth { dir } => {
            let auth = AuthDir::init(&dir)?;
            println!(
                "include \"{}\" in the nats-server configuration",
                std::fs::canonicalize(auth.conf_path())?.display()
            );
        }
        Action::Reload {
            nats,
            nats_auth_dir,
        } => {
            let auth = AuthDir::open(&nats_auth_dir)?;
            let servers = crate::admin::reload_nats(&nats.nats_url, &auth).await?;
            println!("reloaded {} servers", servers.len());
        }
        Action::TenantLimits {
            nats,
            nats_auth_dir,
            tenant,
            max_connections,
            max_subscriptions,
            max_payload,
        } => {
            let tenant = atp_core::TenantId::new(tenant)?;
            let auth = AuthDir::open(&nats_auth_dir)?;
            let mut limits = auth
                .tenant_limits()?
                .get(tenant.as_str())
                .copied()
                .unwrap_or_default();
            limits.max_connections = max_connections.unwrap_or(limits.max_connections);
            limits.max_subscriptions = max_subscriptions.unwrap_or(limits.max_subscriptions);
            limits.max_payload = max_payload.unwrap_or(limits.max_payload);
            auth.set_tenant_limits(&tenant, limits)?;
            let servers = crate::admin::reload_nats(&nats.nats_url, &auth).await?;
            println!(
                "{tenant}: {} connections, {} subscriptions, {} bytes per message; reloaded {} servers",
                limits.max_connections,
                limits.max_subscriptions,
                limits.max_payload,
                servers.len()
            );
        }
    }
    Ok(())
}
