//! An embedded PostgreSQL: a private cluster run from the local binaries.
//!
//! The server listens only on a Unix socket inside its data directory (no
//! TCP port, so it never clashes with another server) and trusts local
//! connections, which only its owner (and root) can open. PostgreSQL refuses
//! to run as root: as root, the cluster is owned by and runs as the
//! unprivileged `postgres` OS user.
//!
//! A process that starts the server stops it when it is done; a server that
//! was already running is left alone.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow, bail};
use tracing::{debug, info, warn};

/// The port number in the socket's name (`.s.PGSQL.5432`); no TCP port is opened.
pub const PORT: u16 = 5432;
/// The cluster's superuser.
pub const SUPERUSER: &str = "postgres";
/// The OS user that runs the cluster when we are root.
const OS_USER: &str = "postgres";
/// Settings we own, included from `postgresql.conf` and rewritten at each start.
const CONF: &str = "retweeter-app.conf";

const INSTALL_HINT: &str = "install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`, \
Fedora: `dnf install postgresql-server`, macOS: `brew install postgresql`), point --pg-bin at its \
binaries, or set DATABASE_URL to a running server";

/// An embedded cluster.
#[derive(Debug)]
pub struct Embedded {
    bin: PathBuf,
    data: PathBuf,
    /// The directory to delete at the end, for a throwaway cluster.
    throwaway: Option<PathBuf>,
    run_as: Option<RunAs>,
    /// Whether this process started the server (and so stops it).
    started: AtomicBool,
}

#[derive(Debug, Clone)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl Embedded {
    /// The persistent cluster in `data` (default: see [`default_data_dir`]).
    ///
    /// # Errors
    /// No PostgreSQL binaries, or (as root) no `postgres` OS user.
    pub fn persistent(bin: Option<&Path>, data: Option<&Path>) -> anyhow::Result<Embedded> {
        let bin = find_bin(bin)?;
        let run_as = run_as()?;
        let data = match data {
            Some(d) => absolute(d)?,
            None => default_data_dir(run_as.is_some())?,
        };
        Ok(Embedded { bin, data, throwaway: None, run_as, started: AtomicBool::new(false) })
    }

    /// A throwaway cluster in a new temporary directory, deleted by [`Embedded::stop`].
    ///
    /// # Errors
    /// No PostgreSQL binaries, no `postgres` OS user (as root), or no temporary directory.
    pub fn throwaway(bin: Option<&Path>) -> anyhow::Result<Embedded> {
        let bin = find_bin(bin)?;
        let run_as = run_as()?;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let root = std::env::temp_dir().join(format!("retweeter-demo-{}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&root).with_context(|| format!("could not create {}", root.display()))?;
        // Reachable by the postgres OS user when we are root.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        let data = absolute(&root.join("pgdata"))?;
        Ok(Embedded { bin, data, throwaway: Some(root), run_as, started: AtomicBool::new(false) })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Whether the cluster has been created (initdb ran in its data directory).
    pub fn exists(&self) -> bool {
        self.data.join("PG_VERSION").exists()
    }

    /// Whether the cluster is deleted at the end.
    pub fn is_throwaway(&self) -> bool {
        self.throwaway.is_some()
    }

    /// Connection settings (database `postgres`; the caller picks another).
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.data).port(PORT).user(SUPERUSER).dbname("postgres");
        config
    }

    /// Initialises the cluster if needed and starts the server unless it runs.
    ///
    /// # Errors
    /// initdb or pg_ctl failing (with the end of the server log).
    pub fn start(&self) -> anyhow::Result<()> {
        self.init()?;
        if self.running()? {
            debug!("embedded PostgreSQL in {} is already running", self.data.display());
            return Ok(());
        }
        self.write_conf()?;
        info!("starting the embedded PostgreSQL in {}", self.data.display());
        let log = self.data.join("server.log");
        let out = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-s", "start"])
            .output()
            .context("could not run pg_ctl")?;
        if !out.status.success() {
            // Another process may have started it at the same moment.
            if self.running()? {
                return Ok(());
            }
            bail!(
                "pg_ctl could not start the embedded PostgreSQL in {}: {}\n--- end of {} ---\n{}",
                self.data.display(),
                output_text(&out),
                log.display(),
                tail(&log, 15)
            );
        }
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the server if this process started it, and deletes a throwaway cluster.
    pub fn stop(&self) {
        if self.started.swap(false, Ordering::SeqCst) {
            info!("stopping the embedded PostgreSQL in {}", self.data.display());
            let result = self
                .pg("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "60", "-s", "stop"])
                .output();
            match result {
                Ok(out) if out.status.success() => {}
                Ok(out) => warn!("pg_ctl stop failed: {}", output_text(&out)),
                Err(e) => warn!("could not run pg_ctl stop: {e}"),
            }
        }
        if let Some(root) = &self.throwaway
            && root.exists()
            && let Err(e) = fs::remove_dir_all(root)
        {
            warn!("could not delete {}: {e}", root.display());
        }
    }

    fn pg(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir("/").env("LC_ALL", "C").env_remove("PGDATA");
        if let Some(user) = &self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    fn running(&self) -> anyhow::Result<bool> {
        let out = self.pg("pg_ctl").arg("-D").arg(&self.data).arg("status").output().context("could not run pg_ctl")?;
        Ok(out.status.success())
    }

    /// Creates the data directory and runs initdb, unless the cluster exists.
    fn init(&self) -> anyhow::Result<()> {
        let data = &self.data;
        if data.join("PG_VERSION").exists() {
            let owner = fs::metadata(data)?.uid();
            let expected = self.run_as.as_ref().map_or_else(effective_uid, |u| Some(u.uid));
            if let Some(expected) = expected
                && owner != expected
            {
                bail!(
                    "the embedded PostgreSQL data directory {} belongs to uid {owner}, but the server would run as uid {expected}; \
                     choose another --data-dir",
                    data.display()
                );
            }
            return Ok(());
        }
        if data.exists() && fs::read_dir(data)?.next().is_some() {
            bail!(
                "{} exists but is not a PostgreSQL data directory (no PG_VERSION); remove it or choose another --data-dir",
                data.display()
            );
        }
        let socket = data.join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > 100 {
            bail!(
                "the data directory path {} is too long for a Unix socket inside it; choose a shorter --data-dir",
                data.display()
            );
        }
        let parent = data.parent().ok_or_else(|| anyhow!("{} has no parent directory", data.display()))?;
        if !parent.exists() {
            fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
            if self.run_as.is_some() {
                fs::set_permissions(parent, fs::Permissions::from_mode(0o755))?;
            }
        }
        if !data.exists() {
            fs::create_dir(data).with_context(|| format!("could not create {}", data.display()))?;
        }
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))?;
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(data, Some(user.uid), Some(user.gid))
                .with_context(|| format!("could not hand {} to the {OS_USER} user", data.display()))?;
            check_reachable(data, user.uid)?;
        }
        info!("creating the embedded PostgreSQL cluster in {} (initdb)", data.display());
        let mut initdb = self.pg("initdb");
        initdb.arg("-D").arg(data).args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"]);
        if self.throwaway.is_some() {
            initdb.arg("--no-sync");
        }
        let out = initdb.output().context("could not run initdb")?;
        if !out.status.success() {
            bail!("initdb failed in {}: {}", data.display(), output_text(&out));
        }
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).with_context(|| format!("could not read {}", conf.display()))?;
        text.push_str(&format!(
            "\n# Added by retweeter-app: socket, port and other settings it manages.\ninclude_if_exists = '{CONF}'\n"
        ));
        fs::write(&conf, text).with_context(|| format!("could not write {}", conf.display()))?;
        Ok(())
    }

    /// Writes the settings that depend on where the cluster is now.
    fn write_conf(&self) -> anyhow::Result<()> {
        let dir = self.data.to_str().ok_or_else(|| anyhow!("{} is not valid UTF-8", self.data.display()))?;
        let quoted = dir.replace('\\', "\\\\").replace('\'', "''");
        let mut text = format!(
            "# Written by retweeter-app at each start.\nlisten_addresses = ''\nunix_socket_directories = '{quoted}'\nport = {PORT}\n"
        );
        if self.throwaway.is_some() {
            text.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = self.data.join(CONF);
        fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))?;
        }
        Ok(())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the persistent cluster lives by default: `/var/lib/retweeter-app/pgdata`
/// as root (the `postgres` user cannot reach root's home), else
/// `$XDG_DATA_HOME/retweeter-app/pgdata` (`~/.local/share/...`).
///
/// # Errors
/// Neither `XDG_DATA_HOME` nor `HOME` is set.
pub fn default_data_dir(root: bool) -> anyhow::Result<PathBuf> {
    if root {
        return Ok(PathBuf::from("/var/lib/retweeter-app/pgdata"));
    }
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .ok_or_else(|| anyhow!("neither XDG_DATA_HOME nor HOME is set; pass --data-dir"))?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("retweeter-app/pgdata"))
}

/// Finds initdb, pg_ctl and postgres.
fn find_bin(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let has_all = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|p| dir.join(p).is_file());
    if let Some(dir) = explicit {
        if has_all(dir) {
            return Ok(dir.to_owned());
        }
        bail!("PostgreSQL's server programs (initdb, pg_ctl, postgres) are not in {}; {INSTALL_HINT}", dir.display());
    }
    let mut tried = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_all(&dir) {
            return Ok(dir);
        }
        tried.push(dir);
    }
    // Debian and Ubuntu keep each major version apart; take the newest.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    for (_, dir) in versions.into_iter().rev() {
        if has_all(&dir) {
            return Ok(dir);
        }
        tried.push(dir);
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/local/pgsql/bin", "/usr/local/bin", "/opt/homebrew/bin"].map(PathBuf::from));
    for dir in dirs {
        if has_all(&dir) {
            return Ok(dir);
        }
    }
    bail!(
        "no database configured and PostgreSQL is not installed here: no local server accepted a connection, \
         and initdb, pg_ctl and postgres were not found (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH{}); {INSTALL_HINT}",
        if tried.is_empty() {
            String::new()
        } else {
            format!(", {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
        }
    )
}

/// The user to run the server as: `None` (ourselves) unless we are root.
fn run_as() -> anyhow::Result<Option<RunAs>> {
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == OS_USER).then_some(())?;
        let _password = fields.next()?;
        Some(RunAs { uid: fields.next()?.parse().ok()?, gid: fields.next()?.parse().ok()? })
    });
    match entry {
        Some(user) if user.uid != 0 => Ok(Some(user)),
        _ => bail!(
            "PostgreSQL refuses to run as root, and there is no unprivileged `{OS_USER}` OS user to run the embedded \
             server as; create one (`useradd --system {OS_USER}`), run retweeter-app as a regular user, or set DATABASE_URL"
        ),
    }
}

/// The effective uid, from /proc (Linux) or `id -u`.
fn effective_uid() -> Option<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
    {
        return line.split_whitespace().nth(2).and_then(|v| v.parse().ok());
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Checks that every directory above `dir` lets `uid` through.
fn check_reachable(dir: &Path, uid: u32) -> anyhow::Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        if meta.uid() != uid && meta.mode() & 0o001 == 0 {
            bail!(
                "the {OS_USER} user cannot reach {}: {} is not searchable by others (mode {:o}); choose another --data-dir",
                dir.display(),
                ancestor.display(),
                meta.mode() & 0o777
            );
        }
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("invalid path {}", path.display()))
}

fn output_text(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    let text = text.trim();
    if text.is_empty() { format!("exit status {}", out.status) } else { text.to_owned() }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
