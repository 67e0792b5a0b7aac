//! `atp publish`: sign sample events and publish them straight to NATS, as a producer would;
//! with `--wait`, through the gateway, printing each event's record id once it is queryable.

use std::path::PathBuf;
use std::time::Duration;

use atp_producer::{AuditEvent, HttpPublisher, NatsPublisher, Outcome, Producer, Signer, Source};

use super::{ApiArgs, NatsArgs};

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
    #[arg(long, conflicts_with = "wait")]
    unsigned: bool,
    /// Send each signed event through the gateway (ATP_URL, with a producer token in
    /// ATP_TOKEN) and wait until it is a queryable record: prints its record id.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let source = Source::new(&args.tenant, &args.source, &args.source_uri)?;
    if args.wait {
        let producer = Producer::new(source, Signer::read_pem_file(&args.key, &args.key_id)?);
        return publish_and_wait(&args, &producer).await;
    }
    let client = args.nats.client().await?;
    if args.unsigned {
        return publish_unsigned(&args, &source, client).await;
    }
    let producer = Producer::new(source, Signer::read_pem_file(&args.key, &args.key_id)?);
    let nats = NatsPublisher::with_client(client, producer.source());
    for _ in 0..args.count {
        let event = producer.sign(sample(&args))?;
        let receipt = nats.publish(&event).await?;
        println!(
            "published {} (ingress seq {})",
            event.id(),
            receipt.ingress_seq
        );
    }
    Ok(())
}

fn sample(args: &Args) -> AuditEvent {
    AuditEvent::new("com.example.audit")
        .actor(&args.actor, "user")
        .action(&args.action)
        .resource("Order", "4711")
        .outcome("success")
        .attribute("ip", "192.0.2.1")
}

/// `--wait`: each event through the gateway with `Prefer: wait`, its record id printed (a
/// repeat prints the record it repeats). An event accepted but not yet recorded when the wait
/// runs out is an error: the caller asked for record ids.
async fn publish_and_wait(args: &Args, producer: &Producer) -> anyhow::Result<()> {
    let token = super::bearer_token()?;
    let http = HttpPublisher::new(&args.api.url, token)?.wait(Duration::from_secs(30));
    for _ in 0..args.count {
        let event = producer.sign(sample(args))?;
        match http.append(&event).await? {
            Outcome::Recorded(r) => println!(
                "{}\t{} (chain index {}{})",
                r.record_id,
                event.id(),
                r.chain_index,
                if r.repeat { ", a repeat" } else { "" }
            ),
            Outcome::Accepted { .. } => anyhow::bail!(
                "event {} was accepted but is not a record within 30 s: find it later with \
                 `atp records list`, or its refusal with `atp rejections list`",
                event.id()
            ),
        }
    }
    Ok(())
}

/// What a producer that does not sign sends: ATP refuses it (`SIGNATURE_MISSING`) unless the
/// source allows unsigned events.
async fn publish_unsigned(
    args: &Args,
    source: &Source,
    client: async_nats::Client,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    for _ in 0..args.count {
        let id = ulid::Ulid::generate().to_string();
        let ev = atp_core::producer::example_event(
            &id,
            source.uri(),
            chrono::Utc::now(),
            &args.actor,
            &args.action,
        );
        let h = atp_nats::headers::IngressHeaders::structured();
        let ack = js
            .publish_with_headers(
                atp_nats::subjects::ingress(source.partition()),
                h.into_map(),
                serde_json::to_vec(&ev)?.into(),
            )
            .await?
            .await?;
        println!("published {id} (ingress seq {})", ack.sequence);
    }
    Ok(())
}
