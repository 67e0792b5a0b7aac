//! Connecting to NATS, and refusing servers too old for ATP's stream settings.

use async_nats::{Client, ConnectOptions};

/// nats-server 2.14 is the oldest with every stream setting ATP relies on (atomic batches from
/// 2.12, and the fixes after). Older servers, such as Debian's 2.9.10, accept those settings and
/// silently ignore them, which would quietly drop ATP's no-fork guarantee.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 14, 0);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {found} at {url} is too old: ATP needs >= {}.{}.{} (run ops/bin/install-nats-server for a pinned build)",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1, MIN_SERVER_VERSION.2
    )]
    TooOld { url: String, found: String },
    #[error("cannot read credentials {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
}

pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

static RECONNECTS: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
    std::sync::OnceLock::new();

fn reconnect_counter() -> &'static tokio::sync::watch::Sender<u64> {
    RECONNECTS.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// Changes each time a connection made by [`connect`] comes back after losing its server.
///
/// Readers restart on it: an ordered consumer only notices a restarted server after missing
/// its 15 s idle heartbeats, while re-reading from the durable position is immediate and safe.
pub fn reconnects() -> tokio::sync::watch::Receiver<u64> {
    reconnect_counter().subscribe()
}

/// Connects as `name` (shown in the server's connection list) and checks the server version.
/// `credentials` is a file: an nkey seed file of ATP's, or a user JWT `.creds` file.
/// `url` may list several servers of a cluster, comma-separated; the client also learns the
/// others from the one it reaches, and fails over between them.
pub async fn connect(
    url: &str,
    name: &str,
    credentials: Option<&str>,
) -> Result<Client, ConnectError> {
    // The first `Connected` is this connection being made; later ones are reconnections.
    let connected_before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut opts = ConnectOptions::new()
        .name(name)
        .event_callback(move |event| {
            let connected_before = connected_before.clone();
            async move {
                match event {
                    async_nats::Event::Connected
                        if connected_before.swap(true, std::sync::atomic::Ordering::SeqCst) =>
                    {
                        reconnect_counter().send_modify(|n| *n += 1);
                        tracing::info!("NATS connection re-established");
                    }
                    async_nats::Event::Disconnected => tracing::warn!("NATS connection lost"),
                    _ => {}
                }
            }
        });
    if let Some(path) = credentials {
        let unreadable = |source| ConnectError::Credentials {
            path: path.to_owned(),
            source,
        };
        let text = tokio::fs::read_to_string(path).await.map_err(unreadable)?;
        // An nkey seed file of ATP's (`atp producer add`, `atp nats init-auth`), or else a
        // user JWT `.creds` file.
        opts = match crate::auth::parse_seed(&text) {
            Some((seed, inbox)) => {
                let opts = opts.nkey(seed);
                match inbox {
                    Some(prefix) => opts.custom_inbox_prefix(prefix),
                    None => opts,
                }
            }
            None => opts.credentials(&text).map_err(unreadable)?,
        };
    }
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let client = opts
        .connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let found = client.server_info().version;
    match parse_version(&found) {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(client),
        _ => Err(ConnectError::TooOld {
            url: url.to_owned(),
            found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("v2.14.0-RC.1"), Some((2, 14, 0)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("2.10.0").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("3.0").unwrap() >= MIN_SERVER_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }
}
