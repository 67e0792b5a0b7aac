//! `atp token mint`: a dev-issuer token (dev stack only).

use std::path::PathBuf;

use anyhow::Context as _;
use atp_core::edition::Edition;
use atp_gateway::Permission;

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Print a dev-issuer token (dev stack only).
    Mint {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = parse_role)]
        role: Permission,
        #[arg(long, default_value = "dev-user")]
        subject: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// The tenant's edition: standard or enterprise.
        #[arg(long, default_value = "enterprise", value_parser = parse_edition)]
        edition: Edition,
        #[arg(
            long,
            env = "ATP_DEV_ISSUER_KEY",
            default_value = ".atp/dev/issuer.pem"
        )]
        issuer_key: PathBuf,
    },
}

pub(super) fn run(action: Action) -> anyhow::Result<()> {
    let Action::Mint {
        tenant,
        role,
        subject,
        ttl_secs,
        edition,
        issuer_key,
    } = action;
    let t = atp_core::TenantId::new(&tenant)?;
    // The dev issuer mints what the gateway would accept: ATP's own tenant for auditors only.
    atp_gateway::auth::reserved_tenant_roles(&t, &[role]).map_err(anyhow::Error::msg)?;
    let key = crate::keys::read_private(&issuer_key)
        .context("the dev issuer key is made by `atp dev` (ATP_DEV_ISSUER_KEY)")?;
    println!(
        "{}",
        crate::dev::mint_token_in(&key, &tenant, role, &subject, ttl_secs, edition)?
    );
    Ok(())
}

fn parse_edition(s: &str) -> Result<Edition, String> {
    Edition::parse(s).ok_or_else(|| format!("unknown edition {s:?}: standard or enterprise"))
}

fn parse_role(s: &str) -> Result<Permission, String> {
    Permission::ALL
        .into_iter()
        .find(|p| p.as_str() == s)
        .ok_or_else(|| format!("unknown role {s:?}: producer, auditor, admin or privacy"))
}
