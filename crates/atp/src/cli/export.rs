//! `atp export create|status|download`: signed export bundles through the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use atp_gateway::exports::ExportView;
use atp_store::exports::ExportStatus;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::ApiArgs;
use super::records::RecordFilters;
use crate::api::ApiClient;

#[derive(clap::Subcommand)]
pub(super) enum Export {
    /// Queue an export of what the filters select; with --wait, follow it to the end, and with
    /// -o, download the bundle and check it against the SHA-256 the gateway announced.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filters: RecordFilters,
        /// Wait until the export completes or fails (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
        /// Where to write the bundle (implies --wait).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
    /// An export's status (JSON).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// The export's id (`exportId`).
        export_id: String,
    },
    /// Download a completed export's bundle, checked against its announced SHA-256.
    Download {
        #[command(flatten)]
        api: ApiArgs,
        /// The export's id (`exportId`).
        export_id: String,
        /// Where to write the bundle.
        #[arg(short, long)]
        output: PathBuf,
    },
}

pub(super) async fn run(cmd: Export) -> anyhow::Result<ExitCode> {
    match cmd {
        Export::Create {
            api,
            filters,
            wait,
            output,
            timeout_secs,
        } => {
            let client = api.client()?;
            let selection: serde_json::Map<String, serde_json::Value> = filters
                .pairs()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
                .collect();
            let queued = client.create_export(selection.into()).await?;
            eprintln!("export {} queued", queued.export_id);
            if !wait && output.is_none() {
                println!("{}", queued.export_id);
                return Ok(ExitCode::SUCCESS);
            }
            let done = follow(&client, &queued.export_id, timeout_secs).await?;
            if done.status != ExportStatus::Completed {
                println!("{}", serde_json::to_string_pretty(&done)?);
                let why = done.failure.as_ref().map_or_else(String::new, |f| {
                    format!(
                        ": {} {}",
                        f.code.as_deref().unwrap_or_default(),
                        f.detail.as_deref().unwrap_or_default()
                    )
                });
                eprintln!("export {} failed{why}", done.export_id);
                return Ok(ExitCode::FAILURE);
            }
            match output {
                Some(path) => download(&client, &done, &path).await,
                None => {
                    println!("{}", serde_json::to_string_pretty(&done)?);
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Export::Status { api, export_id } => {
            let view = api.client()?.export(&export_id).await?;
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(ExitCode::SUCCESS)
        }
        Export::Download {
            api,
            export_id,
            output,
        } => {
            let client = api.client()?;
            let view = client.export(&export_id).await?;
            download(&client, &view, &output).await
        }
    }
}

/// Polls the export until it is completed or failed, printing its progress as it changes.
async fn follow(client: &ApiClient, id: &str, timeout_secs: u64) -> anyhow::Result<ExportView> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    let mut pause = Duration::from_millis(250);
    let mut shown = None;
    loop {
        let view = client.export(id).await?;
        if matches!(view.status, ExportStatus::Completed | ExportStatus::Failed) {
            return Ok(view);
        }
        let now = view
            .progress
            .as_ref()
            .map(|p| (p.records_done, p.records_total));
        if now != shown {
            if let Some((done, total)) = now {
                let total = total.map_or_else(|| "?".to_owned(), |t| t.to_string());
                eprintln!(
                    "export {id}: {} records {done}/{total}",
                    view.status.as_str()
                );
            }
            shown = now;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "export {id} is still {} after {timeout_secs} s",
            view.status.as_str()
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Downloads the bundle to `path` and checks it hashes to the announced `bundleSha256`;
/// a bundle that does not is removed and the command fails (exit 1).
async fn download(client: &ApiClient, view: &ExportView, path: &Path) -> anyhow::Result<ExitCode> {
    let Some(want) = view.bundle_sha256.as_deref() else {
        anyhow::bail!(
            "export {} is {}, not completed: nothing to download",
            view.export_id,
            view.status.as_str()
        );
    };
    let bytes = client.download(&view.export_id, path).await?;
    let got = sha256_file(path).await?;
    if got != want {
        let _ = tokio::fs::remove_file(path).await;
        eprintln!(
            "the bundle downloaded from export {} hashes to {got}, not the announced {want}; removed",
            view.export_id
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "wrote {} ({bytes} bytes, {} records, SHA-256 {got}); check it with `atp verify {}`",
        path.display(),
        view.record_count.unwrap_or_default(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
