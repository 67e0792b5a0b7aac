//! A throwaway (or durable) PostgreSQL cluster on a free loopback port, copied from a cached
//! `initdb` template so that each start costs a file copy instead of an `initdb`.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::DevstackError;
use crate::process::{
    Launch, POLL_INTERVAL, Watchdog, display_command, find_on_path, launch_with_port_retry,
    log_since, open_log, parse_version, run_checked, running_as_root, start_failed, target_dir,
    tcp_accepts, terminate, terminate_sync, version_output,
};

/// The cluster superuser created by `initdb` (trust authentication, loopback only).
pub const SUPERUSER: &str = "atp_admin";
/// Oldest supported PostgreSQL major version.
pub const MIN_POSTGRES_MAJOR: u64 = 15;
/// Where Debian/Ubuntu install PostgreSQL 15's server binaries.
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The unprivileged account PostgreSQL runs as when we are root.
const SERVICE_USER: &str = "postgres";

/// How long `start`/`restart` wait for "ready to accept connections".
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long `stop` waits after SIGINT (fast shutdown) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Printed by the postmaster once it accepts connections (we force `lc_messages=C`).
const READY_LINE: &str = "database system is ready to accept connections";

/// Options for [`Postgres::start`].
#[derive(Debug, Default, Clone)]
pub struct PostgresOptions {
    /// Port; `None` picks a free one.
    pub port: Option<u16>,
    /// Data dir; `None` = a temp dir removed on drop. A given dir is initialised from the template
    /// if missing or empty, reused if it already holds a cluster, and never deleted.
    pub data_dir: Option<PathBuf>,
    /// `false` (tests): `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`.
    /// `true` (dev stack, benchmarks): PostgreSQL's crash-safe defaults.
    pub durable: bool,
}

/// A running PostgreSQL cluster listening on `127.0.0.1:<port>` with superuser [`SUPERUSER`].
///
/// Dropping it stops the server (immediate shutdown for throwaway clusters, fast shutdown for a
/// caller-provided data dir; SIGKILL if that does not work) and removes its temp dir.
#[derive(Debug)]
pub struct Postgres {
    ctx: PgContext,
    port: u16,
    data_dir: PathBuf,
    keep_data: bool,
    durable: bool,
    log_path: PathBuf,
    child: Option<Child>,
    postmaster_pid: Option<u32>,
    watchdog: Option<Watchdog>,
    // Declared last: removed only after the server is gone.
    temp: TempDir,
}

impl Postgres {
    /// Starts a throwaway PostgreSQL (>= 15) cluster on `127.0.0.1:<free port>` (or `opts.port`)
    /// and waits until it accepts connections (deadline 15 s).
    ///
    /// The first start on a machine runs `initdb` once into
    /// `<target>/atp-devstack/pg-template-<major>`; later starts copy that template.
    /// When running as root, the server runs as the system user `postgres`.
    pub async fn start(opts: PostgresOptions) -> Result<Postgres, DevstackError> {
        let started = Instant::now();
        let ctx = PgContext::get()?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("atp-pg-");
        let throwaway = !opts.durable && opts.data_dir.is_none();
        let temp = match throwaway.then(fast_scratch_parent).flatten() {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .map_err(|e| DevstackError::io("creating a temp dir for PostgreSQL", e))?;
        if let Some(user) = &ctx.run_as {
            user.chown(temp.path())?;
        }
        let template = ensure_template(&ctx).await?;
        let (data_dir, keep_data) = match &opts.data_dir {
            Some(dir) => {
                prepare_given_data_dir(&ctx, &template, dir).await?;
                (dir.clone(), true)
            }
            None => {
                let dir = temp.path().join("data");
                copy_template(&ctx, &template, &dir).await?;
                (dir, false)
            }
        };
        let mut pg = Postgres {
            ctx,
            port: 0,
            log_path: temp.path().join("postgres.log"),
            data_dir,
            keep_data,
            durable: opts.durable,
            child: None,
            postmaster_pid: None,
            watchdog: None,
            temp,
        };
        launch_with_port_retry("postgres", opts.port, async |port| {
            pg.port = port;
            pg.launch().await
        })
        .await?;
        tracing::debug!(
            port = pg.port,
            elapsed_ms = started.elapsed().as_millis(),
            "postgres ready"
        );
        Ok(pg)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://atp_admin@127.0.0.1:<port>/postgres` (trust auth on loopback, no password).
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL for `database` as the superuser.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// `postgres://<user>@127.0.0.1:<port>/<database>` (trust auth on loopback, no password).
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// The superuser's name ([`SUPERUSER`]).
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file that receives the server's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// The postmaster's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?;
        self.postmaster_pid
    }

    /// Runs `CREATE DATABASE <name>` with `psql` as the superuser and returns the new database's
    /// URL. `name` must match `^[a-z_][a-z0-9_]{0,62}$`.
    pub async fn create_database(&self, name: &str) -> Result<String, DevstackError> {
        validate_database_name(name)?;
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.url_for(name))
    }

    /// Runs `sql` with `psql -X -tA -v ON_ERROR_STOP=1` against `database` as the superuser and
    /// returns psql's output (unaligned, tuples only: one row per line, columns split by `|`).
    pub async fn psql(&self, database: &str, sql: &str) -> Result<String, DevstackError> {
        validate_database_name(database)?;
        let port = self.port.to_string();
        let args: [&OsStr; 15] = [
            "-X".as_ref(),
            "-q".as_ref(),
            "-tA".as_ref(),
            "-h".as_ref(),
            "127.0.0.1".as_ref(),
            "-p".as_ref(),
            port.as_ref(),
            "-U".as_ref(),
            SUPERUSER.as_ref(),
            "-d".as_ref(),
            database.as_ref(),
            "-v".as_ref(),
            "ON_ERROR_STOP=1".as_ref(),
            "-c".as_ref(),
            sql.as_ref(),
        ];
        let (command, display) = self.ctx.command("psql", &args, false);
        run_checked(command, display).await
    }

    /// Stops the cluster (fast shutdown, SIGKILL after 10 s) and starts it again on the same
    /// port and data dir.
    pub async fn restart(&mut self) -> Result<(), DevstackError> {
        self.stop().await;
        Ok(self.launch().await?)
    }

    /// Stops the cluster with a fast shutdown (SIGINT to the postmaster, the same as
    /// `pg_ctl stop -m fast`), then SIGKILL after 10 s. Idempotent.
    pub async fn stop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            terminate(
                &mut child,
                self.postmaster_pid.take(),
                "INT",
                STOP_GRACE,
                "postgres",
            )
            .await;
        }
    }

    /// Drop-time / watchdog shutdown signal: data that is thrown away needs no checkpoint.
    fn abandon_signal(&self) -> &'static str {
        if self.keep_data { "INT" } else { "QUIT" }
    }

    /// Spawns the postmaster on the current port and waits until it is ready.
    async fn launch(&mut self) -> Result<(), Launch> {
        let (stdout, stderr, log_offset) = open_log(&self.log_path).map_err(Launch::Failed)?;
        let port = self.port.to_string();
        let socket_dir = setting("unix_socket_directories", self.temp.path());
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-p".into(),
            port.into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            socket_dir,
            "-c".into(),
            "max_connections=200".into(),
            "-c".into(),
            "shared_buffers=128MB".into(),
            "-c".into(),
            "lc_messages=C".into(),
        ];
        if !self.durable {
            for s in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
            ] {
                args.push("-c".into());
                args.push(s.into());
            }
        }
        let arg_refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let (mut command, display) = self.ctx.command("postgres", &arg_refs, true);
        command
            .current_dir(self.temp.path())
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut child = command
            .spawn()
            .map_err(|e| Launch::Failed(DevstackError::io(format!("spawning `{display}`"), e)))?;

        let deadline = Instant::now() + START_DEADLINE;
        let failure = loop {
            match child.try_wait() {
                Ok(Some(status)) => break format!("it exited with {status} during start-up"),
                Err(e) => break format!("waiting for it failed: {e}"),
                Ok(None) => {}
            }
            if log_since(&self.log_path, log_offset).contains(READY_LINE)
                && tcp_accepts(self.port).await
            {
                let pid = self.ctx.postmaster_pid(&child, &self.data_dir);
                self.child = Some(child);
                self.postmaster_pid = pid;
                if let Some(pid) = pid {
                    self.watchdog = Watchdog::spawn(pid, self.abandon_signal(), self.temp.path());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                break format!(
                    "no \"{READY_LINE}\" with 127.0.0.1:{} accepting connections within \
                     {START_DEADLINE:?}",
                    self.port
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let pid = self.ctx.postmaster_pid(&child, &self.data_dir);
        terminate(&mut child, pid, "QUIT", Duration::from_secs(2), "postgres").await;
        Err(start_failed(
            "postgres",
            format!("{failure}; command: {display}"),
            &self.log_path,
            log_offset,
        ))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
        if let Some(mut child) = self.child.take() {
            let (signal, grace) = if self.keep_data {
                ("INT", Duration::from_secs(5))
            } else {
                ("QUIT", Duration::from_secs(2))
            };
            terminate_sync(&mut child, self.postmaster_pid.take(), signal, grace);
        }
    }
}

/// Free space `/dev/shm` must have before throwaway clusters are put there.
const SHM_MIN_FREE_KIB: u64 = 2 * 1024 * 1024;

/// `/dev/shm` when it is a roomy tmpfs and `TMPDIR` is not set, else `None` (system temp dir).
///
/// Copying the ~40 MB template is the dominant start-up cost; on tmpfs it takes ~70 ms instead
/// of up to a second on a busy disk. Only used for non-durable clusters in a temp dir, whose
/// contents are thrown away anyway. Containers often have a 64 MB `/dev/shm`: then we skip it.
fn fast_scratch_parent() -> Option<PathBuf> {
    static PARENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            if std::env::var_os("TMPDIR").is_some_and(|d| !d.is_empty()) {
                return None;
            }
            let shm = Path::new("/dev/shm");
            let output = std::process::Command::new("df")
                .arg("-Pk")
                .arg(shm)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&output.stdout);
            let fields: Vec<&str> = text.lines().nth(1)?.split_whitespace().collect();
            let available_kib: u64 = fields.get(3)?.parse().ok()?;
            (output.status.success()
                && fields.first() == Some(&"tmpfs")
                && available_kib >= SHM_MIN_FREE_KIB)
                .then(|| shm.to_path_buf())
        })
        .clone()
}

/// `name=value` for a `-c` flag.
fn setting(name: &str, value: &Path) -> OsString {
    let mut s = OsString::from(name);
    s.push("=");
    s.push(value);
    s
}

/// Accepts only `^[a-z_][a-z0-9_]{0,62}$` (safe to splice into SQL unquoted).
pub(crate) fn validate_database_name(name: &str) -> Result<(), DevstackError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(DevstackError::InvalidDatabaseName {
            name: name.to_owned(),
        })
    }
}

/// How to drop root privileges for the server processes.
#[derive(Debug, Clone)]
enum Launcher {
    /// `setpriv --reuid --regid --init-groups --`: execs, so the child pid is the postmaster.
    Setpriv(PathBuf),
    /// `runuser -u postgres --`: forks, so the postmaster pid comes from `postmaster.pid`.
    Runuser(PathBuf),
}

/// The unprivileged user servers run as when this process is root.
#[derive(Debug, Clone)]
struct RunAs {
    uid: u32,
    gid: u32,
    launcher: Launcher,
}

impl RunAs {
    fn lookup() -> Result<RunAs, DevstackError> {
        let id = |flag: &str| -> Result<u32, DevstackError> {
            let output = std::process::Command::new("id")
                .arg(flag)
                .arg(SERVICE_USER)
                .output()
                .map_err(|e| DevstackError::NoPostgresUser {
                    detail: format!("running `id {flag} {SERVICE_USER}` failed: {e}"),
                })?;
            let text = String::from_utf8_lossy(&output.stdout);
            if !output.status.success() {
                return Err(DevstackError::NoPostgresUser {
                    detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
            text.trim()
                .parse()
                .map_err(|_| DevstackError::NoPostgresUser {
                    detail: format!("`id {flag} {SERVICE_USER}` printed {:?}", text.trim()),
                })
        };
        let uid = id("-u")?;
        let gid = id("-g")?;
        if uid == 0 {
            return Err(DevstackError::NoPostgresUser {
                detail: "it has uid 0".to_owned(),
            });
        }
        let find = |name: &str| {
            find_on_path(name).or_else(|| {
                ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                    .iter()
                    .map(|dir| Path::new(dir).join(name))
                    .find(|p| p.is_file())
            })
        };
        let launcher = if let Some(path) = find("setpriv") {
            Launcher::Setpriv(path)
        } else if let Some(path) = find("runuser") {
            Launcher::Runuser(path)
        } else {
            return Err(DevstackError::io(
                "running as root: PostgreSQL must run as user postgres, which needs setpriv or \
                 runuser (util-linux)",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        };
        Ok(RunAs { uid, gid, launcher })
    }

    fn chown(&self, path: &Path) -> Result<(), DevstackError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|e| {
            DevstackError::io(
                format!("chown {}:{} {}", self.uid, self.gid, path.display()),
                e,
            )
        })
    }

    async fn chown_recursive(&self, path: &Path) -> Result<(), DevstackError> {
        let owner = format!("{}:{}", self.uid, self.gid);
        let args: [&OsStr; 3] = ["-R".as_ref(), owner.as_ref(), path.as_os_str()];
        let mut command = Command::new("chown");
        command.args(args);
        run_checked(command, display_command(Path::new("chown"), &args)).await?;
        Ok(())
    }
}

/// Where PostgreSQL is and whom it runs as; resolved once per process.
#[derive(Debug, Clone)]
struct PgContext {
    bin_dir: PathBuf,
    major: u64,
    run_as: Option<RunAs>,
}

impl PgContext {
    fn get() -> Result<PgContext, DevstackError> {
        static RESOLVED: OnceLock<PgContext> = OnceLock::new();
        if let Some(ctx) = RESOLVED.get() {
            return Ok(ctx.clone());
        }
        let ctx = Self::resolve()?;
        Ok(RESOLVED.get_or_init(|| ctx).clone())
    }

    fn resolve() -> Result<PgContext, DevstackError> {
        let bin_dir = find_bin_dir()?;
        let postgres = bin_dir.join("postgres");
        let output = version_output(&postgres)?;
        let (major, minor, _) =
            parse_version(&output).ok_or_else(|| DevstackError::VersionUnknown {
                path: postgres.clone(),
                detail: format!("unrecognised --version output {:?}", output.trim()),
            })?;
        if major < MIN_POSTGRES_MAJOR {
            return Err(DevstackError::PostgresTooOld {
                bin_dir,
                found: format!("{major}.{minor}"),
            });
        }
        let run_as = if running_as_root()? {
            Some(RunAs::lookup()?)
        } else {
            None
        };
        Ok(PgContext {
            bin_dir,
            major,
            run_as,
        })
    }

    /// A command for `program` from the bin dir; `as_server_user` drops root privileges.
    fn command(&self, program: &str, args: &[&OsStr], as_server_user: bool) -> (Command, String) {
        let binary = self.bin_dir.join(program);
        let (launcher, mut full): (PathBuf, Vec<OsString>) = match (&self.run_as, as_server_user) {
            (Some(user), true) => match &user.launcher {
                Launcher::Setpriv(setpriv) => (
                    setpriv.clone(),
                    vec![
                        format!("--reuid={}", user.uid).into(),
                        format!("--regid={}", user.gid).into(),
                        "--init-groups".into(),
                        "--".into(),
                        binary.into(),
                    ],
                ),
                Launcher::Runuser(runuser) => (
                    runuser.clone(),
                    vec!["-u".into(), SERVICE_USER.into(), "--".into(), binary.into()],
                ),
            },
            _ => (binary, Vec::new()),
        };
        full.extend(args.iter().map(|a| a.to_os_string()));
        let full_refs: Vec<&OsStr> = full.iter().map(OsString::as_os_str).collect();
        let display = display_command(&launcher, &full_refs);
        let mut command = Command::new(&launcher);
        command.args(&full);
        // Keep the caller's libpq environment from changing what we connect to or how.
        for var in [
            "PGOPTIONS",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGSYSCONFDIR",
            "PGDATA",
        ] {
            command.env_remove(var);
        }
        (command, display)
    }

    /// The postmaster's pid: the child itself unless `runuser` forked in between.
    fn postmaster_pid(&self, child: &Child, data_dir: &Path) -> Option<u32> {
        match self.run_as.as_ref().map(|u| &u.launcher) {
            Some(Launcher::Runuser(_)) => std::fs::read_to_string(data_dir.join("postmaster.pid"))
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok(),
            _ => child.id(),
        }
    }

    fn template_path(&self) -> PathBuf {
        target_dir()
            .join("atp-devstack")
            .join(format!("pg-template-{}", self.major))
    }
}

/// `ATP_PG_BIN`, else `/usr/lib/postgresql/15/bin`, else `pg_config --bindir`.
fn find_bin_dir() -> Result<PathBuf, DevstackError> {
    let usable = |dir: &Path| dir.join("postgres").is_file() && dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("ATP_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if usable(&dir) {
            Ok(dir)
        } else {
            Err(DevstackError::PostgresNotFound {
                detail: format!(
                    "ATP_PG_BIN={} has no postgres and initdb executables",
                    dir.display()
                ),
            })
        };
    }
    let default = Path::new(DEFAULT_BIN_DIR);
    if usable(default) {
        return Ok(default.to_path_buf());
    }
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output();
    let detail = match from_pg_config {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if usable(&dir) {
                return Ok(dir);
            }
            format!(
                "nothing in {DEFAULT_BIN_DIR}, and `pg_config --bindir` names {} which has no \
                 postgres and initdb (only the client package is installed?)",
                dir.display()
            )
        }
        Ok(out) => format!(
            "nothing in {DEFAULT_BIN_DIR}, and `pg_config --bindir` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("nothing in {DEFAULT_BIN_DIR}, and pg_config could not be run: {e}"),
    };
    Err(DevstackError::PostgresNotFound { detail })
}

/// True if `dir` looks like a complete cluster.
fn is_cluster(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file() && dir.join("global/pg_control").is_file()
}

/// Serialises template creation within this process (other processes are handled by `rename`).
static TEMPLATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Returns the cached template cluster, creating it on first use.
async fn ensure_template(ctx: &PgContext) -> Result<PathBuf, DevstackError> {
    let path = ctx.template_path();
    if is_cluster(&path) {
        return Ok(path);
    }
    let _guard = TEMPLATE_LOCK.lock().await;
    ensure_template_at(ctx, &path).await?;
    Ok(path)
}

/// Creates a template cluster at `dest` unless one is there. Safe against concurrent callers in
/// other processes: each runs `initdb` into a private staging dir next to `dest` and `rename`s
/// it into place; whoever loses the race deletes its copy.
async fn ensure_template_at(ctx: &PgContext, dest: &Path) -> Result<(), DevstackError> {
    if is_cluster(dest) {
        return Ok(());
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| DevstackError::io(format!("creating {}", parent.display()), e))?;
    let file_name = dest.file_name().map_or_else(
        || "pg-template".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{file_name}.staging-"))
        .tempdir_in(parent)
        .map_err(|e| {
            DevstackError::io(format!("creating a staging dir in {}", parent.display()), e)
        })?;
    let staged = staging.path().join("data");

    let started = Instant::now();
    // As root, initdb runs as `postgres`, which may not be able to traverse the target dir:
    // run it under the system temp dir and copy the result over.
    let scratch = match &ctx.run_as {
        Some(user) => {
            let scratch = tempfile::Builder::new()
                .prefix("atp-pg-initdb-")
                .tempdir()
                .map_err(|e| DevstackError::io("creating a temp dir for initdb", e))?;
            user.chown(scratch.path())?;
            Some(scratch)
        }
        None => None,
    };
    let (init_dir, cwd) = match &scratch {
        Some(scratch) => (scratch.path().join("data"), scratch.path().to_path_buf()),
        None => (staged.clone(), staging.path().to_path_buf()),
    };
    let args: [&OsStr; 10] = [
        "-D".as_ref(),
        init_dir.as_os_str(),
        "-U".as_ref(),
        SUPERUSER.as_ref(),
        "--auth=trust".as_ref(),
        "-E".as_ref(),
        "UTF8".as_ref(),
        "--locale=C".as_ref(),
        "--no-sync".as_ref(),
        "--no-instructions".as_ref(),
    ];
    let (mut command, display) = ctx.command("initdb", &args, true);
    command.current_dir(&cwd);
    run_checked(command, display).await?;
    if scratch.is_some() {
        copy_tree(&init_dir, &staged).await?;
    }
    match std::fs::rename(&staged, dest) {
        Ok(()) => {
            tracing::info!(
                "created PostgreSQL template cluster {} in {:?}",
                dest.display(),
                started.elapsed()
            );
            Ok(())
        }
        // Another process won the race; its template is as good as ours.
        Err(_) if is_cluster(dest) => Ok(()),
        Err(e) => Err(DevstackError::io(
            format!(
                "moving the new template cluster to {} (delete that path if it is a broken \
                 leftover)",
                dest.display()
            ),
            e,
        )),
    }
}

/// `cp -a src dest` (keeps ownership when root, modes and timestamps always).
async fn copy_tree(src: &Path, dest: &Path) -> Result<(), DevstackError> {
    let args: [&OsStr; 3] = ["-a".as_ref(), src.as_os_str(), dest.as_os_str()];
    let mut command = Command::new("cp");
    command.args(args);
    run_checked(command, display_command(Path::new("cp"), &args)).await?;
    Ok(())
}

/// Copies the template into `dest` (which must not exist) and gives it to the server user.
async fn copy_template(ctx: &PgContext, template: &Path, dest: &Path) -> Result<(), DevstackError> {
    copy_tree(template, dest).await.map_err(|e| match e {
        DevstackError::CommandFailed {
            command,
            status,
            output,
        } => DevstackError::CommandFailed {
            command,
            status,
            output: format!(
                "{output}\n(if the template is unreadable or broken, delete {} and retry)",
                template.display()
            ),
        },
        other => other,
    })?;
    if let Some(user) = &ctx.run_as {
        let meta = std::fs::metadata(dest)
            .map_err(|e| DevstackError::io(format!("reading {}", dest.display()), e))?;
        if meta.uid() != user.uid {
            user.chown_recursive(dest).await?;
        }
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| DevstackError::io(format!("chmod 0700 {}", dest.display()), e))
}

/// Makes a caller-provided data dir hold a cluster: reuse, or initialise from the template.
async fn prepare_given_data_dir(
    ctx: &PgContext,
    template: &Path,
    dir: &Path,
) -> Result<(), DevstackError> {
    if dir.join("PG_VERSION").is_file() {
        if let Some(user) = &ctx.run_as {
            let meta = std::fs::metadata(dir)
                .map_err(|e| DevstackError::io(format!("reading {}", dir.display()), e))?;
            if meta.uid() != user.uid {
                user.chown_recursive(dir).await?;
            }
        }
        return Ok(());
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .map_err(|e| DevstackError::io(format!("listing {}", dir.display()), e))?;
        if entries.next().is_some() {
            return Err(DevstackError::DataDirNotEmpty {
                path: dir.to_path_buf(),
            });
        }
        std::fs::remove_dir(dir)
            .map_err(|e| DevstackError::io(format!("removing empty {}", dir.display()), e))?;
    } else if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DevstackError::io(format!("creating {}", parent.display()), e))?;
    }
    copy_template(ctx, template, dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn two_clusters_databases_restart_and_cleanup() {
        let t0 = Instant::now();
        let (a, b) = tokio::join!(
            Postgres::start(PostgresOptions::default()),
            Postgres::start(PostgresOptions::default())
        );
        eprintln!("two concurrent postgres starts: {:?}", t0.elapsed());
        let mut a = a.unwrap();
        let mut b = b.unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.pid(), b.pid());
        assert_eq!(
            a.admin_url(),
            format!("postgres://atp_admin@127.0.0.1:{}/postgres", a.port())
        );

        let url = a.create_database("atp_devstack_test").await.unwrap();
        assert_eq!(url, a.url_for("atp_devstack_test"));
        assert_eq!(
            a.psql(
                "atp_devstack_test",
                "SELECT current_database(), current_user"
            )
            .await
            .unwrap()
            .trim(),
            "atp_devstack_test|atp_admin"
        );
        let dup = a.create_database("atp_devstack_test").await.unwrap_err();
        assert!(dup.to_string().contains("already exists"), "{dup}");
        let bad = a.create_database("Robert'); DROP").await.unwrap_err();
        assert!(
            matches!(bad, DevstackError::InvalidDatabaseName { .. }),
            "{bad}"
        );
        // The clusters are independent.
        assert!(b.psql("atp_devstack_test", "SELECT 1").await.is_err());
        b.create_database("atp_devstack_test").await.unwrap();

        // Non-durable settings and the fixed ones.
        let show = |setting: &'static str| {
            let pg = &a;
            async move {
                pg.psql("postgres", &format!("SHOW {setting}"))
                    .await
                    .unwrap()
                    .trim()
                    .to_owned()
            }
        };
        assert_eq!(show("fsync").await, "off");
        assert_eq!(show("synchronous_commit").await, "off");
        assert_eq!(show("full_page_writes").await, "off");
        assert_eq!(show("max_connections").await, "200");
        assert_eq!(show("listen_addresses").await, "127.0.0.1");
        let version_num: u32 = show("server_version_num").await.parse().unwrap();
        assert!(
            version_num >= MIN_POSTGRES_MAJOR as u32 * 10_000,
            "{version_num}"
        );

        let port = a.port();
        let old_pid = a.pid().unwrap();
        let t1 = Instant::now();
        a.restart().await.unwrap();
        eprintln!("postgres restart: {:?}", t1.elapsed());
        assert_eq!(a.port(), port);
        assert_ne!(a.pid().unwrap(), old_pid);
        assert!(gone(old_pid));
        assert_eq!(
            a.psql("atp_devstack_test", "SELECT 42")
                .await
                .unwrap()
                .trim(),
            "42",
            "database lost across restart"
        );

        let data_dir = a.data_dir().to_path_buf();
        let temp_dir = a.log_path().parent().unwrap().to_path_buf();
        assert!(is_cluster(&data_dir));
        let pid = a.pid().unwrap();
        drop(a);
        assert!(gone(pid), "postmaster {pid} survived drop");
        assert!(!data_dir.exists(), "{} survived drop", data_dir.display());
        assert!(!temp_dir.exists());
        assert!(!tcp_accepts(port).await);

        let b_pid = b.pid().unwrap();
        b.stop().await;
        b.stop().await;
        assert!(gone(b_pid));
        assert_eq!(b.pid(), None);
        assert!(b.psql("postgres", "SELECT 1").await.is_err());
    }

    #[tokio::test]
    async fn durable_cluster_in_a_given_data_dir_survives_drop() {
        let keep = tempfile::tempdir().unwrap();
        // Let the `postgres` user traverse it when we are root.
        std::fs::set_permissions(keep.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = keep.path().join("cluster");
        let port = crate::free_port().unwrap();
        let opts = PostgresOptions {
            port: Some(port),
            data_dir: Some(dir.clone()),
            durable: true,
        };
        let pg = Postgres::start(opts.clone()).await.unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.data_dir(), dir);
        assert_eq!(
            pg.psql("postgres", "SHOW fsync").await.unwrap().trim(),
            "on"
        );
        pg.create_database("kept").await.unwrap();
        drop(pg);
        assert!(is_cluster(&dir), "caller-provided data dir removed on drop");

        let t0 = Instant::now();
        let pg = Postgres::start(opts).await.unwrap();
        eprintln!("postgres start on an existing data dir: {:?}", t0.elapsed());
        assert_eq!(pg.psql("kept", "SELECT 7").await.unwrap().trim(), "7");
    }

    #[tokio::test]
    async fn refuses_a_non_empty_foreign_data_dir() {
        let keep = tempfile::tempdir().unwrap();
        std::fs::write(keep.path().join("precious.txt"), "do not touch").unwrap();
        let err = Postgres::start(PostgresOptions {
            data_dir: Some(keep.path().to_path_buf()),
            ..PostgresOptions::default()
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, DevstackError::DataDirNotEmpty { .. }),
            "{err}"
        );
        assert!(keep.path().join("precious.txt").is_file());
    }

    #[tokio::test]
    async fn concurrent_template_creation_is_safe() {
        let ctx = PgContext::get().unwrap();
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("pg-template-test");
        let t0 = Instant::now();
        let (x, y) = tokio::join!(
            ensure_template_at(&ctx, &dest),
            ensure_template_at(&ctx, &dest)
        );
        eprintln!("two racing initdb template creations: {:?}", t0.elapsed());
        x.unwrap();
        y.unwrap();
        assert!(is_cluster(&dest));
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![OsString::from("pg-template-test")]);
        // Idempotent once present.
        ensure_template_at(&ctx, &dest).await.unwrap();
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Postgres>();
        check::<crate::NatsServer>();
        check::<DevstackError>();
    }

    #[test]
    fn database_names() {
        for ok in ["a", "_", "atp_store", "t1", &"x".repeat(63)] {
            validate_database_name(ok).unwrap();
        }
        for bad in ["", "1abc", "Abc", "a-b", "a b", "a;", "é", &"x".repeat(64)] {
            let err = validate_database_name(bad).unwrap_err();
            assert!(err.to_string().contains("^[a-z_][a-z0-9_]{0,62}$"), "{err}");
        }
    }
}
