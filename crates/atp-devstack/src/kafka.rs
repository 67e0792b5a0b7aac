//! A real Kafka-protocol broker on a free loopback port, for the Kafka relay's tests: Tansu
//! (`ops/bin/install-tansu`), one process, its topics and consumer-group offsets in an SQLite
//! file that a restart keeps.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::DevstackError;
use crate::process::{
    Launch, Watchdog, display_command, launch_with_port_retry, open_log, repo_root, run_checked,
    start_failed, tcp_accepts, terminate, terminate_sync, wait_ready,
};

const START_DEADLINE: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The version `ops/bin/install-tansu` builds, and where it caches it.
const TANSU_CACHE: &str = "atp/tansu-0.6.0-libsql/bin/tansu";

/// A running Tansu broker bound to `127.0.0.1`. Dropping it kills the broker and removes its
/// directory (log and storage).
#[derive(Debug)]
pub struct KafkaBroker {
    binary: PathBuf,
    port: u16,
    log_path: PathBuf,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    // Declared last: removed only after the child is gone.
    dir: TempDir,
}

impl KafkaBroker {
    pub async fn start() -> Result<KafkaBroker, DevstackError> {
        let binary = tansu_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("atp-kafka-")
            .tempdir()
            .map_err(|e| DevstackError::io("creating a temp dir for the Kafka broker", e))?;
        let mut broker = KafkaBroker {
            binary,
            port: 0,
            log_path: dir.path().join("tansu.log"),
            child: None,
            watchdog: None,
            dir,
        };
        launch_with_port_retry("tansu", None, async |port| {
            broker.port = port;
            broker.launch().await
        })
        .await?;
        Ok(broker)
    }

    /// `bootstrap.servers` for a client.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// Creates `topic` with `partitions` partitions, with the broker's own CLI.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), DevstackError> {
        let broker = format!("tcp://{}", self.bootstrap());
        let partitions = partitions.to_string();
        let args = [
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions,
            "--broker",
            &broker,
        ];
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).current_dir(self.dir.path());
        let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        run_checked(cmd, display_command(&self.binary, &os)).await?;
        Ok(())
    }

    /// Stops the broker (SIGTERM, then SIGKILL) and starts it again on the same port with the
    /// same storage.
    pub async fn restart(&mut self) -> Result<(), DevstackError> {
        self.stop().await;
        Ok(self.launch().await?)
    }

    pub async fn stop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, None, "TERM", STOP_GRACE, "tansu").await;
        }
    }

    async fn launch(&mut self) -> Result<(), Launch> {
        let (stdout, stderr, log_offset) = open_log(&self.log_path).map_err(Launch::Failed)?;
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        // Relative to the working directory: the broker's own directory.
        let mut child = Command::new(&self.binary)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(["--cluster-id", "atp-test"])
            .current_dir(self.dir.path())
            // Tansu reads `.env` and these from the environment: none of the caller's.
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                Launch::Failed(DevstackError::io(
                    format!("spawning {}", self.binary.display()),
                    e,
                ))
            })?;
        let port = self.port;
        let waited = wait_ready(
            &mut child,
            START_DEADLINE,
            async || tcp_accepts(port).await,
            || format!("127.0.0.1:{port} did not accept connections"),
        )
        .await;
        match waited {
            Ok(()) => {
                if let Some(pid) = child.id() {
                    self.watchdog = Watchdog::spawn(pid, "KILL", self.dir.path());
                }
                self.child = Some(child);
                Ok(())
            }
            Err(reason) => {
                terminate(&mut child, None, "KILL", Duration::ZERO, "tansu").await;
                Err(start_failed("tansu", reason, &self.log_path, log_offset))
            }
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            terminate_sync(&mut child, None, "KILL", STOP_GRACE);
        }
    }
}

/// The Tansu binary: `ATP_TANSU` if set, else where `ops/bin/install-tansu` caches it
/// (`$XDG_CACHE_HOME` or `~/.cache`, then `atp/tansu-<version>-libsql/bin/tansu`).
pub fn tansu_binary() -> Result<PathBuf, DevstackError> {
    let not_found = |path: PathBuf| DevstackError::KafkaBrokerNotFound {
        path,
        install: repo_root()
            .join("ops/bin/install-tansu")
            .display()
            .to_string(),
    };
    if let Some(path) = std::env::var_os("ATP_TANSU").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(not_found(path))
        };
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    let path = cache.join(TANSU_CACHE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(not_found(path))
    }
}
