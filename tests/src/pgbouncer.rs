//! A private PgBouncer in front of the test server, for the pooler tests.
//!
//! Each [`Pgbouncer`] is its own `pgbouncer` process on a free loopback port
//! with a configuration file in a temporary directory; it is stopped when
//! dropped. The Debian package `pgbouncer` provides the binary (the README's
//! set-up installs it); without it the pooler tests fail and say so.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tokio_postgres::Client;

use crate::{DATABASE, TestDb};

/// A running PgBouncer whose one database, `bulk_tests`, leads to a server
/// (the test server, or a Citus coordinator) with `search_path` set to a
/// test's schema on every server connection.
pub struct Pgbouncer {
    child: Child,
    dir: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    /// The user its clients (and its server connections) log in as.
    user: String,
    /// That user's password, if the server wants one.
    password: Option<String>,
}

/// Where a [`Pgbouncer`] leads: a server, its user and database, and the
/// schema every server connection gets as its `search_path`.
pub struct Upstream {
    /// The server's host.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    /// Its password, if any.
    pub password: Option<String>,
    /// The database on the server.
    pub dbname: String,
    /// The test's schema.
    pub schema: String,
}

impl Upstream {
    /// The test server's database and `db`'s schema.
    pub fn test_db(db: &TestDb) -> Upstream {
        let (host, port) = crate::server_address();
        Upstream {
            host,
            port,
            user: crate::server_user(),
            password: crate::server_password(),
            dbname: DATABASE.to_owned(),
            schema: db.schema.clone(),
        }
    }
}

/// The pgbouncer binary: on `PATH`, or where the Debian package puts it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join("pgbouncer")).find(|p| p.is_file()));
    on_path.flatten().or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file())).unwrap_or_else(
        || {
            panic!(
                "the pooler tests need PgBouncer, which is not installed (no `pgbouncer` on PATH or in /usr/sbin): \
                 `sudo apt-get install -y postgresql pgbouncer` (see \"The two commands\" in README.md)"
            )
        },
    )
}

/// Whether this process runs as root (pgbouncer then must switch user).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

impl Pgbouncer {
    /// Starts a pgbouncer in `pool_mode` (`session` or `transaction`) with at
    /// most `pool_size` server connections, in front of `db`'s schema.
    pub async fn start(db: &TestDb, pool_mode: &str, pool_size: u32) -> Pgbouncer {
        Self::start_for(&Upstream::test_db(db), pool_mode, pool_size).await
    }

    /// As [`start`](Self::start), in front of `upstream`.
    pub async fn start_for(upstream: &Upstream, pool_mode: &str, pool_size: u32) -> Pgbouncer {
        Self::start_with(upstream, pool_mode, pool_size, "").await
    }

    /// As [`start_for`](Self::start_for), with `extra` lines of settings in
    /// its `[pgbouncer]` section (`query_timeout = 1`; a `server_reset_query`
    /// there replaces the default `DISCARD ALL`).
    pub async fn start_with(upstream: &Upstream, pool_mode: &str, pool_size: u32, extra: &str) -> Pgbouncer {
        // A port found free may be taken again before pgbouncer binds it
        // (by another test's pgbouncer or proxy, which the readiness probe
        // would then reach instead): a pgbouncer that exits is started
        // again on another port.
        for _ in 0..10 {
            if let Some(bouncer) = Self::try_start(upstream, pool_mode, pool_size, extra).await {
                return bouncer;
            }
        }
        panic!(
            "pgbouncer did not start (10 ports tried); run it by hand with a config like Pgbouncer::start's to see why"
        );
    }

    /// One attempt of [`start`](Self::start): `None` when pgbouncer exited
    /// (its port was taken meanwhile).
    async fn try_start(upstream: &Upstream, pool_mode: &str, pool_size: u32, extra: &str) -> Option<Pgbouncer> {
        let Upstream { host, port, user, dbname, .. } = upstream;
        // PgBouncer logs in to the server with the test connections' password, if any.
        let password = upstream.password.clone().unwrap_or_default();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let free_port = listen.local_addr().unwrap().port();
        drop(listen);
        let dir = std::env::temp_dir().join(format!("bulk-pgbouncer-{}-{free_port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let schema = bulk_runtime::quote_ident(&upstream.schema);
        assert!(!schema.contains('\''), "schema names of the pooler tests are plain");
        let reset = if extra.lines().any(|l| l.split('=').next().is_some_and(|k| k.trim() == "server_reset_query")) {
            ""
        } else {
            "server_reset_query = DISCARD ALL\n"
        };
        let ini = format!(
            "[databases]\n\
             {DATABASE} = host={host} port={port} dbname={dbname} user={user} connect_query='SET search_path = {schema}'\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {free_port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 200\n\
             {reset}\
             logfile = {log}\n\
             {extra}\n",
            auth = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
        );
        // (pgbouncer runs as `postgres` when the tests run as root, and
        // writes its log here.)
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let config_path = dir.join("pgbouncer.ini");
        std::fs::write(&config_path, ini).unwrap();
        let quote = |s: &str| s.replace('"', "\"\"");
        std::fs::write(dir.join("users.txt"), format!("\"{}\" \"{}\"\n", quote(user), quote(&password))).unwrap();
        let mut command = Command::new(binary());
        if is_root() {
            // pgbouncer refuses to run as root.
            command.arg("-u").arg("postgres");
        }
        let child = command
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let mut bouncer =
            Pgbouncer { child, dir, port: free_port, user: user.clone(), password: upstream.password.clone() };
        // Up when its log says it listens on its port (a probe of the port
        // alone could reach another listener that took it), gone when it
        // exits (it could not bind the port).
        let listening = format!("listening on 127.0.0.1:{free_port}");
        for _ in 0..2000 {
            if bouncer.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if bouncer.log().contains(&listening) {
                return Some(bouncer);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("pgbouncer did not start listening on 127.0.0.1:{free_port} within 10 s");
    }

    /// A new client connection through the pooler.
    pub async fn connect(&self) -> Client {
        crate::connect_as("127.0.0.1", self.port, &self.user, self.password.as_deref()).await
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the process and removes its directory (what dropping it does).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        self.stop();
    }
}
