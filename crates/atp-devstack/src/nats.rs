//! A real `nats-server` with JetStream on free loopback ports, for the dev stack and tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::DevstackError;
use crate::process::{
    Launch, Watchdog, find_on_path, free_port, http_status, launch_with_port_retry, open_log,
    parse_version, repo_root, start_failed, tcp_accepts, terminate, terminate_sync, version_output,
    wait_ready,
};

/// Oldest nats-server ATP accepts; older ones silently ignore newer stream settings.
pub const MIN_NATS_SERVER_VERSION: (u64, u64, u64) = (2, 14, 0);
const MIN_NATS_SERVER_VERSION_STR: &str = "2.14.0";

/// How long `start`/`restart` wait for the server to accept connections and report healthy.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// JetStream's storage cap for dev and test servers, declared. Left unset, nats-server takes
/// 75 % of the disk free at start and refuses a stream whose `max_bytes` exceeds it, so
/// ATP_INGRESS (16 GiB) could not be created on a machine with less than ~21 GiB free even
/// though tests write megabytes. Production sizes its store for the streams instead
/// (`ops/runbooks/append.md`).
const MAX_FILE_STORE: &str = "1TB";

/// Options for [`NatsServer::start`].
#[derive(Debug, Default, Clone)]
pub struct NatsOptions {
    /// Client port; `None` picks a free one.
    pub port: Option<u16>,
    /// JetStream store dir; `None` uses a fresh temp dir deleted on drop. A given dir is created
    /// if missing and kept (across restarts and after drop).
    pub store_dir: Option<PathBuf>,
    /// Appended verbatim to the generated config file. Note: a `jetstream { ... }` block here
    /// replaces the generated one entirely, so repeat `store_dir` in it.
    pub extra_config: Option<String>,
    /// A configuration file to include (read again on every reload): ATP's users and their
    /// permissions, `auth.conf` of an auth directory.
    pub include: Option<PathBuf>,
}

/// A running `nats-server` child process with JetStream enabled, bound to `127.0.0.1`.
///
/// Dropping it kills the server and removes its temp dir (config, log, and the store dir unless
/// one was given in [`NatsOptions::store_dir`]).
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    keep_store: bool,
    extra_config: Option<String>,
    include: Option<PathBuf>,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    // Declared last: removed only after the child is gone.
    temp: TempDir,
}

/// nats-server resolves an include relative to the including file's directory, even a path
/// that starts with `/`; so climb from there to the root and descend to `file`.
fn include_path(config: &Path, file: &Path) -> Result<String, DevstackError> {
    let file = std::path::absolute(file)
        .map_err(|e| DevstackError::io(format!("resolving {}", file.display()), e))?;
    let depth = config
        .parent()
        .map(|d| d.components().count().saturating_sub(1))
        .unwrap_or(0);
    let below_root: PathBuf = file.components().skip(1).collect();
    Ok(format!(
        "{}{}",
        "../".repeat(depth),
        below_root.to_string_lossy()
    ))
}

impl NatsServer {
    /// Starts nats-server with JetStream on 127.0.0.1 and a free port (or `opts.port`), with its
    /// store dir in a fresh temp dir (or `opts.store_dir`, kept across restarts). Returns once the
    /// client port accepts TCP connections and `/healthz?js-enabled-only=true` on the monitoring
    /// port (also a free loopback port) answers 200; gives up after 10 s.
    pub async fn start(opts: NatsOptions) -> Result<NatsServer, DevstackError> {
        let started = Instant::now();
        let binary = nats_server_binary()?;
        let temp = tempfile::Builder::new()
            .prefix("atp-nats-")
            .tempdir()
            .map_err(|e| DevstackError::io("creating a temp dir for nats-server", e))?;
        let (store_dir, keep_store) = match &opts.store_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    DevstackError::io(format!("creating JetStream store dir {}", dir.display()), e)
                })?;
                (dir.clone(), true)
            }
            None => (temp.path().join("jetstream"), false),
        };
        let mut server = NatsServer {
            binary,
            port: 0,
            monitor_port: 0,
            store_dir,
            keep_store,
            extra_config: opts.extra_config.clone(),
            include: opts.include.clone(),
            config_path: temp.path().join("nats-server.conf"),
            log_path: temp.path().join("nats-server.log"),
            child: None,
            watchdog: None,
            temp,
        };
        launch_with_port_retry("nats-server", opts.port, async |port| {
            server.port = port;
            server.monitor_port = free_port().map_err(Launch::Failed)?;
            server.launch().await
        })
        .await?;
        tracing::debug!(
            port = server.port,
            elapsed_ms = started.elapsed().as_millis(),
            "nats-server ready"
        );
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/jsz`, `/varz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `http://127.0.0.1:<monitor port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The JetStream store dir.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The file that receives the server's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The nats-server binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s) and starts it again on the same ports
    /// and store dir.
    pub async fn restart(&mut self) -> Result<(), DevstackError> {
        self.stop().await;
        Ok(self.launch().await?)
    }

    /// `server_name` in the generated config, as cluster and stream info report it.
    pub fn server_name(&self) -> String {
        format!("atp-devstack-{}", self.port)
    }

    /// Kills the server at once (SIGKILL): a crash, for fault tests. [`Self::restart`] brings
    /// it back on the same ports and store.
    pub async fn kill(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, None, "KILL", Duration::ZERO, "nats-server").await;
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL after 5 s. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, None, "TERM", STOP_GRACE, "nats-server").await;
        }
    }

    fn write_config(&self) -> Result<(), DevstackError> {
        let mut config = format!(
            "# Generated by atp-devstack; edits are overwritten on every start.\n\
             server_name: \"atp-devstack-{port}\"\n\
             listen: \"127.0.0.1:{port}\"\n\
             http: \"127.0.0.1:{monitor}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_file_store: {max_file_store}\n}}\n",
            port = self.port,
            monitor = self.monitor_port,
            store = config_string(&self.store_dir.to_string_lossy()),
            max_file_store = MAX_FILE_STORE,
        );
        if let Some(file) = &self.include {
            config.push_str(&format!(
                "include \"{}\"\n",
                config_string(&include_path(&self.config_path, file)?)
            ));
        }
        if let Some(extra) = &self.extra_config {
            config.push_str("\n# extra_config\n");
            config.push_str(extra);
            config.push('\n');
        }
        std::fs::write(&self.config_path, config)
            .map_err(|e| DevstackError::io(format!("writing {}", self.config_path.display()), e))
    }

    /// Spawns the server with the current ports and waits until it is ready.
    async fn launch(&mut self) -> Result<(), Launch> {
        self.write_config().map_err(Launch::Failed)?;
        let (stdout, stderr, log_offset) = open_log(&self.log_path).map_err(Launch::Failed)?;
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.temp.path())
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

        let (port, monitor_port) = (self.port, self.monitor_port);
        let waited = wait_ready(
            &mut child,
            START_DEADLINE,
            async || {
                tcp_accepts(port).await
                    && http_status(monitor_port, "/healthz?js-enabled-only=true").await == Some(200)
            },
            || {
                format!(
                    "127.0.0.1:{port} did not accept connections with \
                     /healthz?js-enabled-only=true on 127.0.0.1:{monitor_port} answering 200"
                )
            },
        )
        .await;
        match waited {
            Ok(()) => {
                if let Some(pid) = child.id() {
                    self.watchdog = Watchdog::spawn(pid, "TERM", self.temp.path());
                }
                self.child = Some(child);
                Ok(())
            }
            Err(failure) => {
                terminate(&mut child, None, "KILL", Duration::ZERO, "nats-server").await;
                let reason = format!("{failure} (config {})", self.config_path.display());
                Err(start_failed(
                    "nats-server",
                    reason,
                    &self.log_path,
                    log_offset,
                ))
            }
        }
    }
}

/// A JetStream cluster of nats-servers on loopback ports, routed to one another: for tests of
/// replicated (R3) streams and of losing a node.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` servers of one cluster (`atp-devstack`), each with its own store. Returns
    /// once every node is up; electing a JetStream meta leader takes the cluster a moment more,
    /// so the first JetStream calls may need a retry.
    pub async fn start(size: usize) -> Result<NatsCluster, DevstackError> {
        let mut ports = Vec::with_capacity(size);
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        let routes = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(size);
        for (client, route) in &ports {
            let cluster = format!(
                "cluster {{\n  name: \"atp-devstack\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}"
            );
            nodes.push(
                NatsServer::start(NatsOptions {
                    port: Some(*client),
                    store_dir: None,
                    extra_config: Some(cluster),
                    include: None,
                })
                .await?,
            );
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated (what `atp` takes as `--nats-url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The node whose `server_name` is `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.server_name() == name)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            // A throwaway store needs no graceful shutdown; a kept one gets a clean stop.
            let signal = if self.keep_store { "TERM" } else { "KILL" };
            terminate_sync(&mut child, None, signal, STOP_GRACE);
        }
    }
}

/// Quotes a value for the nats-server config format.
fn config_string(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The install script, as an absolute path for error messages.
fn install_hint() -> String {
    repo_root()
        .join("ops/bin/install-nats-server")
        .display()
        .to_string()
}

/// Finds the nats-server binary: `ATP_NATS_SERVER` if set, else `<repo>/.atp/bin/nats-server`
/// (installed by `ops/bin/install-nats-server`), else `nats-server` on `PATH`. Checks that
/// `--version` reports >= 2.14.0 (Debian ships 2.9.10, which silently ignores newer stream
/// settings) and errors clearly otherwise.
pub fn nats_server_binary() -> Result<PathBuf, DevstackError> {
    if let Some(path) = std::env::var_os("ATP_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(not_found(path));
        }
        check_nats_version(&path)?;
        return Ok(path);
    }
    let local = repo_root().join(".atp/bin/nats-server");
    if local.is_file() {
        check_nats_version(&local)?;
        return Ok(local);
    }
    match find_on_path("nats-server") {
        Some(on_path) => {
            check_nats_version(&on_path)?;
            Ok(on_path)
        }
        None => Err(not_found(local)),
    }
}

fn not_found(path: PathBuf) -> DevstackError {
    DevstackError::NatsServerNotFound {
        path,
        install: install_hint(),
        required: MIN_NATS_SERVER_VERSION_STR,
    }
}

/// Errors unless `binary --version` reports at least [`MIN_NATS_SERVER_VERSION`].
pub(crate) fn check_nats_version(binary: &Path) -> Result<(u64, u64, u64), DevstackError> {
    let output = version_output(binary)?;
    let version = parse_version(&output).ok_or_else(|| DevstackError::VersionUnknown {
        path: binary.to_path_buf(),
        detail: format!("unrecognised --version output {:?}", output.trim()),
    })?;
    if version < MIN_NATS_SERVER_VERSION {
        return Err(DevstackError::NatsServerTooOld {
            path: binary.to_path_buf(),
            found: format!("{}.{}.{}", version.0, version.1, version.2),
            required: MIN_NATS_SERVER_VERSION_STR,
            install: install_hint(),
        });
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    #[test]
    fn includes_climb_to_the_root_from_the_config_dir() {
        let path = include_path(
            Path::new("/tmp/atp-nats-x/nats-server.conf"),
            Path::new("/work/.atp/dev/nats/auth.conf"),
        )
        .unwrap();
        assert_eq!(path, "../../work/.atp/dev/nats/auth.conf");
    }

    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::OnceLock;

    use super::*;

    /// Makes sure a good nats-server is available, installing the pinned one if needed.
    fn ensure_nats_server() -> PathBuf {
        static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
        INSTALLED
            .get_or_init(|| match nats_server_binary() {
                Ok(path) => path,
                Err(e) => {
                    assert!(
                        std::env::var_os("ATP_NATS_SERVER").is_none(),
                        "ATP_NATS_SERVER is set but unusable: {e}"
                    );
                    let script = repo_root().join("ops/bin/install-nats-server");
                    let status = std::process::Command::new(&script).status().unwrap();
                    assert!(status.success(), "{} failed: {status}", script.display());
                    nats_server_binary().unwrap()
                }
            })
            .clone()
    }

    /// Reads the INFO line a NATS server sends to every new client.
    fn read_info(port: u16) -> String {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    }

    #[tokio::test]
    async fn starts_accepts_clients_and_restarts_on_the_same_port() {
        ensure_nats_server();
        let t0 = Instant::now();
        let mut nats = NatsServer::start(NatsOptions::default()).await.unwrap();
        eprintln!("nats-server start: {:?}", t0.elapsed());

        let port = nats.port();
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
        let info = read_info(port);
        assert!(info.starts_with("INFO {"), "unexpected greeting {info:?}");
        assert!(info.contains("\"jetstream\":true"), "JetStream off: {info}");
        let log = std::fs::read_to_string(nats.log_path()).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("Max Storage:") && l.contains("1.00 TB")),
            "JetStream's cap is declared, not measured from the free disk: {log}"
        );
        assert!(
            info.contains("\"version\":\"2.15"),
            "unexpected version: {info}"
        );
        assert_eq!(
            http_status(nats.monitor_port(), "/healthz?js-enabled-only=true").await,
            Some(200)
        );
        let temp_dir = nats.log_path().parent().unwrap().to_path_buf();
        let store = nats.store_dir().to_path_buf();
        assert!(store.starts_with(&temp_dir));
        let first_pid = nats.pid().unwrap();

        let t1 = Instant::now();
        nats.restart().await.unwrap();
        eprintln!("nats-server restart: {:?}", t1.elapsed());
        assert_eq!(nats.port(), port);
        assert_eq!(nats.store_dir(), store);
        assert_ne!(nats.pid().unwrap(), first_pid);
        assert!(read_info(port).starts_with("INFO {"));

        nats.stop().await;
        nats.stop().await; // idempotent
        assert_eq!(nats.pid(), None);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts connections after stop"
        );
        drop(nats);
        assert!(!temp_dir.exists(), "{} survived drop", temp_dir.display());
    }

    #[tokio::test]
    async fn drop_kills_the_server_and_honours_options() {
        ensure_nats_server();
        let keep = tempfile::tempdir().unwrap();
        let store = keep.path().join("js");
        let port = free_port().unwrap();
        let nats = NatsServer::start(NatsOptions {
            port: Some(port),
            store_dir: Some(store.clone()),
            extra_config: Some("max_payload: 65536".to_owned()),
            include: None,
        })
        .await
        .unwrap();
        assert_eq!(nats.port(), port);
        assert_eq!(nats.store_dir(), store);
        let info = read_info(port);
        assert!(
            info.contains("\"max_payload\":65536"),
            "extra_config ignored: {info}"
        );
        let pid = nats.pid().unwrap();
        let temp_dir = nats.log_path().parent().unwrap().to_path_buf();

        drop(nats);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "nats-server pid {pid} still exists after drop"
        );
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(!temp_dir.exists());
        assert!(
            store.is_dir(),
            "a caller-provided store dir must survive drop"
        );
        assert!(
            store.join("jetstream").is_dir(),
            "JetStream did not use the given store dir"
        );
    }

    #[tokio::test]
    async fn start_failure_reports_the_log() {
        ensure_nats_server();
        let err = NatsServer::start(NatsOptions {
            extra_config: Some("this is { not valid".to_owned()),
            ..NatsOptions::default()
        })
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, DevstackError::StartFailed { .. }),
            "{message}"
        );
        assert!(message.contains("nats-server failed to start"), "{message}");
        assert!(message.contains("last lines of"), "{message}");
    }

    #[test]
    fn rejects_old_and_broken_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let fake = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let old = fake("old", "echo 'nats-server: v2.9.10'");
        let err = check_nats_version(&old).unwrap_err();
        assert!(
            matches!(err, DevstackError::NatsServerTooOld { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("2.9.10") && message.contains(">= 2.14.0"),
            "{message}"
        );
        assert!(message.contains("ops/bin/install-nats-server"), "{message}");

        let new = fake("new", "echo 'nats-server: v2.14.0'");
        assert_eq!(check_nats_version(&new).unwrap(), (2, 14, 0));

        let garbage = fake("garbage", "echo hello");
        assert!(matches!(
            check_nats_version(&garbage).unwrap_err(),
            DevstackError::VersionUnknown { .. }
        ));
        let failing = fake("failing", "exit 3");
        assert!(matches!(
            check_nats_version(&failing).unwrap_err(),
            DevstackError::VersionUnknown { .. }
        ));
    }

    #[test]
    fn not_found_message_is_actionable() {
        let message = not_found(PathBuf::from("/nowhere/nats-server")).to_string();
        assert!(message.contains("/nowhere/nats-server"), "{message}");
        assert!(message.contains("ops/bin/install-nats-server"), "{message}");
        assert!(message.contains("ATP_NATS_SERVER"), "{message}");
    }
}
