//! Process plumbing shared by the server fixtures: paths, log files, signals, readiness polling
//! and the orphan watchdog that cleans up when the owning process dies without running `Drop`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::DevstackError;

/// How often start-up and shutdown conditions are re-checked.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The repository root: two levels above this crate's manifest (fixed at compile time).
pub(crate) fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Cargo's target dir: `CARGO_TARGET_DIR` (run time, then compile time) or `<repo>/target`.
pub(crate) fn target_dir() -> PathBuf {
    let configured = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match configured {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// Whether this process runs with effective uid 0 (the owner of `/proc/self` is our euid).
pub(crate) fn running_as_root() -> Result<bool, DevstackError> {
    let meta = std::fs::metadata("/proc/self").map_err(|e| {
        DevstackError::io("reading /proc/self to find out whether we run as root", e)
    })?;
    Ok(meta.uid() == 0)
}

/// Ports handed out by [`crate::free_port`] in this process, so two calls never return the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Binds `127.0.0.1:0`, reads the port the kernel picked and releases it again.
///
/// Never returns the same port twice within one process. Another process can still grab the
/// port before the server binds it; the fixtures retry with a new port when that happens.
pub fn free_port() -> Result<u16, DevstackError> {
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| DevstackError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| DevstackError::io("reading the address of a 127.0.0.1:0 listener", e))?
            .port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(DevstackError::io(
        "finding a free loopback port",
        std::io::Error::other("the kernel kept returning ports already handed out"),
    ))
}

/// Why a server's launch failed: the retryable free-port race, or anything else.
pub(crate) enum Launch {
    PortTaken(DevstackError),
    Failed(DevstackError),
}

impl From<Launch> for DevstackError {
    fn from(l: Launch) -> Self {
        match l {
            Launch::PortTaken(e) | Launch::Failed(e) => e,
        }
    }
}

/// Launch attempts when ports are chosen automatically (another process may grab a free port
/// between [`free_port`] and the server binding it).
const AUTO_PORT_ATTEMPTS: usize = 3;

/// Launches a server on `fixed` (once), or on a fresh free port, again on another one when the
/// port was taken meanwhile. `launch` gets the port to use; `what` names the server in logs.
pub(crate) async fn launch_with_port_retry(
    what: &str,
    fixed: Option<u16>,
    mut launch: impl AsyncFnMut(u16) -> Result<(), Launch>,
) -> Result<(), DevstackError> {
    let attempts = if fixed.is_some() {
        1
    } else {
        AUTO_PORT_ATTEMPTS
    };
    let mut attempt = 1;
    loop {
        let port = match fixed {
            Some(port) => port,
            None => free_port()?,
        };
        match launch(port).await {
            Ok(()) => return Ok(()),
            Err(Launch::PortTaken(_)) if attempt < attempts => {
                tracing::debug!("{what} port race on attempt {attempt}; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for a just-spawned server: until `ready` says so (`Ok`), or until `child` exits or
/// `within` passes (`Err` with why, `not_ready` naming what was awaited).
pub(crate) async fn wait_ready(
    child: &mut Child,
    within: Duration,
    mut ready: impl AsyncFnMut() -> bool,
    not_ready: impl FnOnce() -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("it exited with {status} during start-up")),
            Err(e) => return Err(format!("waiting for it failed: {e}")),
            Ok(None) => {}
        }
        if ready().await {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{} within {within:?}", not_ready()));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A failed start, with the log's last lines; a port race when what this launch logged says
/// the address was in use (the caller then tries another port).
pub(crate) fn start_failed(
    server: &'static str,
    reason: String,
    log: &Path,
    log_offset: u64,
) -> Launch {
    let error = DevstackError::StartFailed {
        server,
        reason,
        log: log.to_path_buf(),
        tail: log_tail(log, 20),
    };
    if mentions_address_in_use(&log_since(log, log_offset)) {
        Launch::PortTaken(error)
    } else {
        Launch::Failed(error)
    }
}

/// Opens (appending) the server log and returns stdout/stderr handles plus the current length,
/// so readiness checks only look at what this launch writes.
pub(crate) fn open_log(path: &Path) -> Result<(Stdio, Stdio, u64), DevstackError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DevstackError::io(format!("opening log file {}", path.display()), e))?;
    let offset = file
        .metadata()
        .map_err(|e| DevstackError::io(format!("reading log file {}", path.display()), e))?
        .len();
    let stdout = file
        .try_clone()
        .map_err(|e| DevstackError::io(format!("duplicating log file {}", path.display()), e))?;
    Ok((Stdio::from(stdout), Stdio::from(file), offset))
}

/// The log written since `offset` (lossy UTF-8; empty when unreadable).
pub(crate) fn log_since(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_end(&mut bytes);
    }
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of the log (for error messages).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = log_since(path, 0);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        "(log is empty)".to_owned()
    } else {
        tail
    }
}

/// Whether the log text reports that a listen address was taken (the free-port race).
pub(crate) fn mentions_address_in_use(log: &str) -> bool {
    log.to_ascii_lowercase().contains("address already in use")
}

/// `kill -s <signal> <pid>`, quiet (no libc needed).
fn kill_command(pid: u32, signal: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Sends `signal` (a name such as "TERM") to `pid`.
pub(crate) async fn send_signal(pid: u32, signal: &str) -> bool {
    tokio::process::Command::from(kill_command(pid, signal))
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Blocking variant of [`send_signal`] for `Drop`.
pub(crate) fn send_signal_sync(pid: u32, signal: &str) -> bool {
    kill_command(pid, signal)
        .status()
        .is_ok_and(|s| s.success())
}

/// Asks the process to exit with `signal` sent to `target_pid`, waits up to `grace` for `child`
/// to exit, then SIGKILLs `child`. Returns how it ended, if known.
pub(crate) async fn terminate(
    child: &mut Child,
    target_pid: Option<u32>,
    signal: &str,
    grace: Duration,
    what: &str,
) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if signal != "KILL"
        && let Some(pid) = target_pid.or_else(|| child.id())
        && send_signal(pid, signal).await
    {
        if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
            return Some(status);
        }
        tracing::warn!(
            "{what} (pid {pid}) did not exit within {grace:?} of SIG{signal}; sending SIGKILL"
        );
    }
    kill_target(child, target_pid);
    let _ = child.start_kill();
    child.wait().await.ok()
}

/// SIGKILLs `target_pid` when it is not the child itself (e.g. the postmaster under `runuser`).
fn kill_target(child: &Child, target_pid: Option<u32>) {
    if let Some(pid) = target_pid
        && child.id() != Some(pid)
    {
        send_signal_sync(pid, "KILL");
    }
}

/// Blocking variant of [`terminate`] for `Drop`: polls `try_wait`, never needs a runtime.
pub(crate) fn terminate_sync(
    child: &mut Child,
    target_pid: Option<u32>,
    signal: &str,
    grace: Duration,
) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    if signal != "KILL"
        && let Some(pid) = target_pid.or_else(|| child.id())
        && send_signal_sync(pid, signal)
        && wait_sync(child, grace)
    {
        return;
    }
    kill_target(child, target_pid);
    let _ = child.start_kill();
    // SIGKILL is not ignorable; reap it so it does not linger as a zombie.
    let _ = wait_sync(child, Duration::from_secs(2));
}

/// Polls `try_wait` until the child has exited or `limit` passed. True if it exited.
fn wait_sync(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// True if something accepts TCP connections on `127.0.0.1:port`.
pub(crate) async fn tcp_accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Status code of a plain `GET` against `127.0.0.1:port` (HTTP/1.0), or `None` on any failure.
pub(crate) async fn http_status(port: u16, path_and_query: &str) -> Option<u16> {
    let request = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        stream
            .write_all(
                format!("GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
            )
            .await
            .ok()?;
        let mut head = Vec::new();
        let mut chunk = [0_u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(1), request)
        .await
        .ok()
        .flatten()
}

/// A tiny `sh` process that blocks reading a pipe whose write end only this process holds.
///
/// If this process dies without running `Drop` (SIGKILL, abort, `process::exit`), the kernel
/// closes the pipe, the watchdog wakes up, stops the server (signal, then SIGKILL after 5 s) and
/// deletes the fixture's temp dir. On an orderly stop the watchdog is SIGKILLed first, so it
/// never acts. It ignores SIGINT/SIGTERM/SIGHUP so that Ctrl-C on a test run still cleans up.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: std::process::Child,
}

const WATCHDOG_SCRIPT: &str = r#"trap '' INT TERM HUP
read -r _ || :
if kill -s "$2" "$1" 2>/dev/null; then
  i=0
  while kill -0 "$1" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  kill -s KILL "$1" 2>/dev/null
fi
if [ -n "$3" ]; then rm -rf -- "$3"; fi
exit 0"#;

impl Watchdog {
    /// Best effort: returns `None` (and logs) if `sh` cannot be started.
    pub(crate) fn spawn(server_pid: u32, signal: &str, cleanup_dir: &Path) -> Option<Watchdog> {
        let spawned = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("atp-devstack-watchdog")
            .arg(server_pid.to_string())
            .arg(signal)
            .arg(cleanup_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => Some(Watchdog { child }),
            Err(e) => {
                tracing::warn!("could not start the orphan watchdog (sh): {e}; continuing without");
                None
            }
        }
    }

    /// Stops the watchdog without letting it act.
    pub(crate) fn disarm(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Reached only via `disarm` (already reaped) or a panic path: never let it fire.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a short-lived helper command to completion and turns failure into `CommandFailed`.
pub(crate) async fn run_checked(
    mut command: tokio::process::Command,
    display: String,
) -> Result<String, DevstackError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = command
        .output()
        .await
        .map_err(|e| DevstackError::CommandFailed {
            command: display.clone(),
            status: format!("could not be started: {e}"),
            output: String::new(),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(DevstackError::CommandFailed {
        command: display,
        status: output.status.to_string(),
        output: format!("{}{}", stderr.trim_end(), stdout.trim_end()),
    })
}

/// Renders a command line for messages (arguments with spaces are quoted).
pub(crate) fn display_command(program: &Path, args: &[&std::ffi::OsStr]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if arg.contains(char::is_whitespace) || arg.is_empty() {
            line.push('\'');
            line.push_str(&arg);
            line.push('\'');
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// Parses the first `MAJOR.MINOR[.PATCH]` token of a `--version` line (a leading `v` is allowed,
/// suffixes such as `-beta` or `+build` are ignored).
pub(crate) fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ':')
        .find_map(|token| {
            let token = token.strip_prefix('v').unwrap_or(token);
            let core = token.split(['-', '+']).next()?;
            let mut parts = core.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch = match parts.next() {
                Some(p) => p.parse().ok()?,
                None => 0,
            };
            if parts.next().is_some() {
                return None;
            }
            Some((major, minor, patch))
        })
}

/// Runs `<binary> --version` and returns its combined output.
pub(crate) fn version_output(binary: &Path) -> Result<String, DevstackError> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DevstackError::VersionUnknown {
            path: binary.to_path_buf(),
            detail: format!("running it with --version failed: {e}"),
        })?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(DevstackError::VersionUnknown {
            path: binary.to_path_buf(),
            detail: format!("--version exited with {}: {}", output.status, text.trim()),
        });
    }
    Ok(text)
}

/// Looks a program up on `PATH` (executable regular files only).
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(
            parse_version("nats-server: v2.14.0-beta.2"),
            Some((2, 14, 0))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some((15, 14, 0))
        );
        assert_eq!(parse_version("no version here"), None);
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, a)).unwrap();
    }

    #[test]
    fn log_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(
            &log,
            (1..=30).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        let tail = log_tail(&log, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert!(log_since(&log, 0).starts_with("line 1\n"));
        assert_eq!(log_since(&log, 10_000), "");
        assert_eq!(log_tail(&dir.path().join("missing"), 3), "(log is empty)");
        assert!(mentions_address_in_use("bind: Address already in use"));
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(repo_root().join("crates/atp-devstack").is_dir());
    }
}
