//! `atp verify`: an export bundle offline, a partition's chain from the ledger, or one record
//! with its proof. Prints the report; exits 1 when something does not verify (a bundle checked
//! against no trusted key included, unless `--allow-unanchored`), 2 when it could not check.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{NatsArgs, SourceArgs};

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    what: Option<What>,
    /// An export bundle: manifest signature, file hashes, every record and proof, every
    /// checkpoint signature.
    bundle: Option<PathBuf>,
    /// Keys to trust: a note verifier key, a PEM public key file, or a JWKS file (as
    /// GET /api/v1/integrity/keys answers); repeat for several. Without one, the bundle is
    /// checked against the keys it carries (intact, but not anchored).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// Without --key, report an intact bundle as verified (exit 0) although its signing key
    /// was not checked against one you trust.
    #[arg(long)]
    allow_unanchored: bool,
}

#[derive(clap::Subcommand)]
enum What {
    /// Re-walk a partition from the ledger: every link, every leaf, every checkpoint signature.
    Chain {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        at: SourceArgs,
        /// Note verifier keys to trust (default: every key published in ATP_SIGNING_KEYS).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Check a record, its inclusion proof and its checkpoint with no server.
    Record {
        /// The record: its canonical bytes, or a proof answer that embeds it.
        record: PathBuf,
        /// The proof answer of GET /api/v1/audit/records/{id}/proof (JSON) or its tlog-proof text.
        #[arg(long)]
        proof: PathBuf,
        /// The note verifier key of the log (`<name>+<id>+<key>`); repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ok = match (args.what, args.bundle) {
        (None, Some(bundle)) => verify_bundle(&bundle, &args.keys, args.allow_unanchored)?,
        (None, None) => {
            anyhow::bail!("give a bundle (atp verify <bundle.tar>) or a subcommand (chain, record)")
        }
        (Some(What::Chain { nats, at, keys }), _) => {
            let p = at.partition()?;
            let report = crate::verify::chain(&nats.jetstream().await?, &p, &keys).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            report.ok
        }
        (
            Some(What::Record {
                record,
                proof,
                keys,
            }),
            _,
        ) => {
            let report = crate::verify::record_offline(&record, &proof, &keys)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            report.ok
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_bundle(
    bundle: &std::path::Path,
    keys: &[String],
    allow_unanchored: bool,
) -> anyhow::Result<bool> {
    let report = crate::verify::bundle(bundle, keys)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    match report.first() {
        None if report.anchored => eprintln!(
            "OK: {} records, {} disclosed values and {} checkpoints verified; signed by a \
             trusted key",
            report.records_verified, report.disclosures_verified, report.checkpoints_verified
        ),
        None if allow_unanchored => eprintln!(
            "OK (not anchored): {} records, {} disclosed values and {} checkpoints are intact \
             and consistent, but no --key was given; compare signing-key.pem with GET \
             /api/v1/integrity/keys",
            report.records_verified, report.disclosures_verified, report.checkpoints_verified
        ),
        None => {
            eprintln!(
                "NOT ANCHORED: {} records, {} disclosed values and {} checkpoints are intact and \
                 consistent, but signed by a key nobody vouched for: give the log's key with \
                 --key (a JWKS file as GET /api/v1/integrity/keys answers, a note verifier key \
                 or a PEM public key), or pass --allow-unanchored",
                report.records_verified, report.disclosures_verified, report.checkpoints_verified
            );
            return Ok(false);
        }
        Some(f) => {
            eprintln!("FAILED [{}]: {}", f.code, f.message);
            return Ok(false);
        }
    }
    Ok(true)
}
