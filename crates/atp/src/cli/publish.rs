//! `atp publish`: sign sample events and publish them straight to NATS, as a producer would.

use std::path::PathBuf;

use super::NatsArgs;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[arg(long, env = "ATP_DEV_TENANT")]
    tenant: String,
    #[arg(long, env = "ATP_DEV_SOURCE")]
    source: String,
    #[arg(long, env = "ATP_DEV_SOURCE_URI")]
    source_uri: String,
    #[arg(long, env = "ATP_DEV_PRODUCER_KEY")]
    key: PathBuf,
    #[arg(long, env = "ATP_DEV_PRODUCER_KEY_ID")]
    key_id: String,
    #[arg(long, default_value_t = 1)]
    count: u64,
    #[arg(long, default_value = "alice")]
    actor: String,
    #[arg(long, default_value = "UPDATE")]
    action: String,
    /// Publish without a signature (ATP refuses it: SIGNATURE_MISSING).
    #[arg(long)]
    unsigned: bool,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let p = crate::admin::partition(&args.tenant, &args.source)?;
    let key = crate::keys::read_private(&args.key)?;
    let js = args.nats.jetstream().await?;
    for _ in 0..args.count {
        let id = ulid::Ulid::generate().to_string();
        let mut ev = atp_core::producer::example_event(
            &id,
            &args.source_uri,
            chrono::Utc::now(),
            &args.actor,
            &args.action,
        );
        if !args.unsigned {
            atp_core::producer::sign_structured(&mut ev, &key, &args.key_id)?;
        }
        // No Nats-Msg-Id: ATP recognises repeats by (tenant, source, id) (ADR 0013).
        let h = atp_nats::headers::IngressHeaders::structured();
        let ack = js
            .publish_with_headers(
                atp_nats::subjects::ingress(&p),
                h.into_map(),
                serde_json::to_vec(&ev)?.into(),
            )
            .await?
            .await?;
        println!("published {id} (ingress seq {})", ack.sequence);
    }
    Ok(())
}
