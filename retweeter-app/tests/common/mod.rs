//! Helpers of the end-to-end tests: a schema of its own per test on the real
//! PostgreSQL server, the built binary, the `fake-api` on loopback, and a
//! TCP proxy that can take the database away.
//!
//! The server is `RETWEETER_TEST_DATABASE_URL` (a libpq-style connection
//! string without `dbname`), by default
//! `host=127.0.0.1 port=5432 user=postgres password=postgres` (the password is
//! ignored by a server that trusts local connections).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Row};

/// The database the tests create their schemas in.
pub const DATABASE: &str = "retweeter_app_tests";

/// The longest any single command may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

const HOW_TO_START: &str = "the retweeter-app tests need PostgreSQL on 127.0.0.1:5432 that lets user postgres \
log in with password `postgres` (or trusts it), or RETWEETER_TEST_DATABASE_URL pointing at another server; \
see \"The two commands\" in README.md: install it with `sudo apt-get install -y postgresql pgbouncer`, \
start it with `sudo pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` and set the \
password with `sudo -u postgres psql -c \"ALTER ROLE postgres PASSWORD 'postgres'\"`";

/// The server's connection string, without a database name.
pub fn server_url() -> String {
    std::env::var("RETWEETER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres password=postgres".to_owned())
}

/// The server's settings, parsed.
pub fn server_config() -> tokio_postgres::Config {
    server_url().parse().expect("RETWEETER_TEST_DATABASE_URL")
}

/// The address of the server (for the proxy).
pub fn server_addr() -> SocketAddr {
    let config = server_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = if host == "localhost" { "127.0.0.1".to_owned() } else { host };
    format!("{host}:{port}").parse().expect("a numeric host in RETWEETER_TEST_DATABASE_URL")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime").block_on(f)
}

async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("{HOW_TO_START}\n\ncause: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn ensure_database() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    block_on(async {
        let admin = connect(&format!("{} dbname=postgres", server_url())).await;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await
            .expect("query pg_database")
            .is_some();
        if !exists && let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await {
            // Another test binary may have created it at the same moment.
            let duplicate = e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::DUPLICATE_DATABASE
                    || *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            });
            assert!(duplicate, "CREATE DATABASE {DATABASE}: {e:?}");
        }
    });
    *done = true;
}

/// A schema of its own for one test, dropped at the end.
pub struct TestSchema {
    /// The schema's name.
    pub name: String,
    /// The connection string of its database.
    database_url: String,
}

impl TestSchema {
    /// A fresh schema named after the test.
    pub fn new(test: &str) -> TestSchema {
        ensure_database();
        TestSchema::in_database(&format!("{} dbname={DATABASE}", server_url()), test)
    }

    /// A fresh schema named after the test in the database `database_url`
    /// names (which must exist), e.g. on a Citus coordinator.
    pub fn in_database(database_url: &str, test: &str) -> TestSchema {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("rt_{test}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let schema = TestSchema { name, database_url: database_url.to_owned() };
        schema.admin(&format!("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}", schema.name));
        schema
    }

    /// The connection string the app gets (`--database-url`).
    pub fn url(&self) -> String {
        self.database_url.clone()
    }

    /// `--database-url URL --schema NAME`.
    pub fn args(&self) -> Vec<String> {
        vec!["--database-url".to_owned(), self.url(), "--schema".to_owned(), self.name.clone()]
    }

    /// Runs SQL with the default search_path.
    pub fn admin(&self, sql: &str) {
        let url = self.url();
        block_on(async { connect(&url).await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) });
    }

    /// Runs a query with the default search_path.
    pub fn query_admin(&self, sql: &str) -> Vec<Row> {
        let url = self.url();
        block_on(async { connect(&url).await.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) })
    }

    /// Runs a query in the schema.
    pub fn query(&self, sql: &str) -> Vec<Row> {
        let url = format!("{} options='-c search_path={}'", self.url(), self.name);
        block_on(async { connect(&url).await.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) })
    }

    /// Runs a script in the schema.
    pub fn execute(&self, sql: &str) {
        let url = format!("{} options='-c search_path={}'", self.url(), self.name);
        block_on(async { connect(&url).await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")) });
    }

    /// The stored rows: (tweet, retweeter, original_author).
    pub fn rows(&self) -> Vec<(i64, i64, i64)> {
        self.query("SELECT tweet, retweeter, original_author FROM retweet ORDER BY 1, 2")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    /// Retweets per (retweeter, author), counted here from the raw rows.
    pub fn counts(&self) -> HashMap<(i64, i64), i64> {
        let mut counts = HashMap::new();
        for (_, retweeter, author) in self.rows() {
            *counts.entry((retweeter, author)).or_insert(0) += 1;
        }
        counts
    }
}

/// Dropped also when the test fails: the schema never outlives its test.
/// On a thread of its own, so that a failure is reported, never a second
/// panic while the test's panic unwinds.
impl Drop for TestSchema {
    fn drop(&mut self) {
        let url = self.url();
        let sql = format!("SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let dropped = std::thread::spawn(move || {
            block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await.map_err(|e| e.to_string())?;
                let connection = tokio::spawn(connection);
                client.batch_execute(&sql).await.map_err(|e| format!("{e:?}"))?;
                drop(client);
                let _ = connection.await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test schema {}: {e}", self.name),
            Err(_) => eprintln!("could not drop the test schema {}: panicked", self.name),
        }
    }
}

/// The app, with none of the caller's configuration leaking in.
pub fn app() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_retweeter-app"));
    for var in [
        "DATABASE_URL",
        "RETWEETER_SCHEMA",
        "RETWEETER_DATA_DIR",
        "RETWEETER_PG_BIN",
        "RETWEETER_API_URL",
        "RETWEETER_SEED",
        "TWITTER_BEARER_TOKEN",
        "FAKE_API_TOKEN",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.stdin(Stdio::null());
    command
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts failure and returns stderr.
    pub fn failed(&self) -> &str {
        assert!(!self.status.success(), "expected failure\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        &self.stderr
    }
}

/// Runs the app with these arguments and waits (at most [`COMMAND_TIMEOUT`]).
pub fn run<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_command(app().args(args))
}

/// Runs a prepared command and waits (at most [`COMMAND_TIMEOUT`]).
pub fn run_command(command: &mut Command) -> Finished {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn retweeter-app");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT);
    Finished { status, stdout: out_thread.join().unwrap_or_default(), stderr: err_thread.join().unwrap_or_default() }
}

/// Waits for a child, killing it (and failing) past the deadline.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for retweeter-app") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("retweeter-app did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A background process, killed when dropped.
pub struct Background {
    pub child: Child,
    lines: Receiver<String>,
    /// Every stdout line received so far.
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Background {
    /// Starts the app in the background, reading its stdout line by line.
    pub fn start(command: &mut Command) -> Background {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn retweeter-app");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let collected = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&collected);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Background { child, lines, seen: Vec::new(), stderr: collected }
    }

    /// Waits (at most `timeout`) for a stdout line matching `pred`; returns it.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no matching line within {timeout:?}; stdout so far:\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        self.stderr()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the process ended; stdout:\n{}\nstderr:\n{}", self.seen.join("\n"), self.stderr())
                }
            }
        }
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn interrupt(&self) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -INT failed");
    }

    /// Waits for the exit and collects the rest of stdout.
    pub fn finish(&mut self) -> ExitStatus {
        let status = wait_bounded(&mut self.child, COMMAND_TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            self.seen.push(line);
        }
        status
    }

    /// Everything on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `retweeter-app fake-api ARGS` on a free loopback port; returns it and its
/// base URL, which is its first line of output, alone.
pub fn fake_api(args: &[&str]) -> (Background, String) {
    let mut api = Background::start(app().arg("fake-api").args(args));
    let url = api.wait_for_line(Duration::from_secs(30), |_| true);
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/1.1"), "first line: {url:?}");
    (api, url)
}

/// The line `database: ...` that every command using a database prints first on stderr.
pub fn database_line(stderr: &str) -> &str {
    let first = stderr.lines().next().unwrap_or_default();
    first.strip_prefix("database: ").unwrap_or_else(|| panic!("stderr does not start with `database: `:\n{stderr}"))
}

/// Parses the `n of m records added` lines that start with `prefix` (after indentation).
pub fn outcomes(stdout: &str, prefix: &str) -> Vec<(u64, u64)> {
    stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            let rest = l.split_once(": ")?.1;
            let mut words = rest.split_whitespace();
            let n = words.next()?.parse().ok()?;
            (words.next()? == "of").then_some(())?;
            let m = words.next()?.parse().ok()?;
            Some((n, m))
        })
        .collect()
}

/// A temporary directory, deleted when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rt-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback TCP proxy to the database that the test can take down (closing
/// every connection and refusing new ones) and bring back, as a restarting
/// server would.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (up2, stop2, conns2) = (Arc::clone(&up), Arc::clone(&stop), Arc::clone(&connections));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if !up2.load(Ordering::SeqCst) {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                            continue;
                        };
                        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                        {
                            let mut conns = conns2.lock().unwrap_or_else(|e| e.into_inner());
                            conns.push(client.try_clone().expect("clone"));
                            conns.push(server.try_clone().expect("clone"));
                        }
                        pump(client, s2);
                        pump(server, c2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { port, up, stop, connections }
    }

    /// Takes the database away (`false`) or brings it back (`true`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.connections.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// The app's `--database-url` through the proxy.
    pub fn url(&self) -> String {
        let config = server_config();
        let user = config.get_user().unwrap_or("postgres");
        let password = match config.get_password() {
            Some(p) => format!(" password='{}'", String::from_utf8_lossy(p).replace('\\', "\\\\").replace('\'', "\\'")),
            None => String::new(),
        };
        format!("host=127.0.0.1 port={} user={user}{password} dbname={DATABASE} connect_timeout=5", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_up(false);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// What the report should show, computed here from the stored `(retweeter,
/// author) -> count` pairs: each retweeter's and each author's total, and
/// both ranked by total (highest first, ties by id).
pub struct Totals {
    pub retweeter: HashMap<i64, i64>,
    pub author: HashMap<i64, i64>,
    pub retweeters: Vec<i64>,
    pub authors: Vec<i64>,
}

impl Totals {
    pub fn of(counts: &HashMap<(i64, i64), i64>) -> Totals {
        let mut retweeter: HashMap<i64, i64> = HashMap::new();
        let mut author: HashMap<i64, i64> = HashMap::new();
        for (&(r, a), &n) in counts {
            *retweeter.entry(r).or_default() += n;
            *author.entry(a).or_default() += n;
        }
        let ranked = |totals: &HashMap<i64, i64>| {
            let mut v: Vec<(i64, i64)> = totals.iter().map(|(&id, &n)| (id, n)).collect();
            v.sort_by_key(|&(id, n)| (-n, id));
            v.into_iter().map(|(id, _)| id).collect::<Vec<i64>>()
        };
        let (retweeters, authors) = (ranked(&retweeter), ranked(&author));
        Totals { retweeter, author, retweeters, authors }
    }
}
