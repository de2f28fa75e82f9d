//! Shared helpers of the integration tests: every test gets its own schema
//! in the `bulk_tests` database of the real PostgreSQL server, so tests run
//! in parallel without seeing each other.
//!
//! The server is found through `BULK_TEST_DATABASE_URL` (a libpq-style
//! connection string without `dbname`), by default
//! `host=127.0.0.1 port=5432 user=postgres password=postgres` (the password
//! is ignored by a server that trusts local connections).
//!
//! A test's schema is dropped when its [`TestDb`] is dropped, also when the
//! test fails: no `t_*` schemas are left behind.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::{Client, Config, NoTls};

pub mod citus;
pub mod pgbouncer;
pub mod recorder;

/// The database the tests create their schemas in.
pub const DATABASE: &str = "bulk_tests";

/// A batch of at least this many rows takes the runtime's streaming path
/// (binary COPY into the scratch table); shorter batches take its
/// one-statement array path. Tests of behaviour both paths share run once
/// with a short batch and once padded to this size.
pub const COPY_BATCH: usize = bulk_runtime::__test_hooks::SMALL_BATCH + 100;

/// The three lengths of padding that send a batch down each path: the short
/// path's `ON CONFLICT` form (under 128 rows), its plain (anti-join) form,
/// and COPY ([`COPY_BATCH`]).
pub const PADS: [usize; 3] = [0, 200, COPY_BATCH];

/// The path a batch padded by `pad` rows (one of [`PADS`]) takes, for
/// messages.
pub fn path(pad: usize) -> &'static str {
    match pad {
        0 => "short/on-conflict",
        p if p < COPY_BATCH => "short/plain",
        _ => "copy",
    }
}

const HOW_TO_START: &str = "the integration tests need PostgreSQL on 127.0.0.1:5432 that lets user postgres \
log in with password `postgres` (or trusts it), or BULK_TEST_DATABASE_URL pointing at another server; \
see \"The two commands\" in README.md: install it with `sudo apt-get install -y postgresql pgbouncer`, \
start it with `sudo pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` and set the \
password with `sudo -u postgres psql -c \"ALTER ROLE postgres PASSWORD 'postgres'\"`";

/// The default server: the README's set-up.
const DEFAULT_SERVER: &str = "host=127.0.0.1 port=5432 user=postgres password=postgres";

/// The server's connection string, without a database name.
pub fn server_url() -> String {
    std::env::var("BULK_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

fn config(dbname: &str, search_path: Option<&str>) -> Config {
    let mut config: Config = server_url().parse().unwrap_or_else(|e| panic!("BULK_TEST_DATABASE_URL: {e}"));
    config.dbname(dbname);
    if let Some(schema) = search_path {
        // Names the test's sessions, so that dropping a failed test's schema can end them.
        config.application_name(application_name(schema));
        // A schema name may hold spaces and quotes: escape for the options string.
        let quoted = bulk_runtime::quote_ident(schema).replace('\\', "\\\\").replace(' ', "\\ ");
        config.options(format!("-c search_path={quoted}"));
    }
    config
}

async fn connect_config(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| panic!("{HOW_TO_START}\n\ncause: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn ensure_database() {
    static CREATED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CREATED
        .get_or_init(|| async {
            let admin = connect_config(&config("postgres", None)).await;
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
                .await
                .expect("query pg_database")
                .is_some();
            if !exists {
                // Another test binary may create it at the same moment.
                if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).await {
                    let duplicate = e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::DUPLICATE_DATABASE
                            || *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    });
                    assert!(duplicate, "CREATE DATABASE {DATABASE}: {e:?}");
                }
            }
        })
        .await;
}

/// The `application_name` of the connections to a test's schema: a hash of
/// the schema's name (which may be longer than the 63 bytes the server keeps).
fn application_name(schema: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    schema.hash(&mut hasher);
    format!("bulk_tests {:016x}", hasher.finish())
}

/// A schema of its own for one test, and connections whose `search_path` is it.
///
/// The schema is dropped by [`TestDb::drop`] at the end of the test or, when
/// the test fails (panics) before that, when the value is dropped: see the
/// [`Drop`] impl.
pub struct TestDb {
    /// The schema's name.
    pub schema: String,
    /// Whether this value drops the schema (not for [`TestDb::existing`]).
    owned: bool,
}

impl TestDb {
    /// Creates a fresh schema named after the test (dropping a leftover one).
    pub async fn new(test: &str) -> TestDb {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        ensure_database().await;
        let schema = format!("t_{test}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        Self::with_schema(schema).await
    }

    /// Creates a fresh schema with exactly this name.
    pub async fn with_schema(schema: String) -> TestDb {
        ensure_database().await;
        let admin = connect_config(&config(DATABASE, None)).await;
        let q = bulk_runtime::quote_ident(&schema);
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE; CREATE SCHEMA {q}"))
            .await
            .expect("create schema");
        TestDb { schema, owned: true }
    }

    /// The schema of a running test, made by another process (the test that
    /// started a `bulk-writer`): neither created nor dropped here.
    pub fn existing(schema: String) -> TestDb {
        TestDb { schema, owned: false }
    }

    /// A new connection with `search_path` set to the test's schema.
    pub async fn connect(&self) -> Client {
        connect_config(&self.config()).await
    }

    /// The settings [`connect`](Self::connect) uses (for a pool): every
    /// session's `search_path` is the test's schema.
    pub fn config(&self) -> Config {
        config(DATABASE, Some(&self.schema))
    }

    /// A new connection with the default `search_path`.
    pub async fn connect_plain(&self) -> Client {
        let mut config = config(DATABASE, None);
        config.application_name(application_name(&self.schema));
        connect_config(&config).await
    }

    /// Drops the schema and everything in it.
    ///
    /// # Panics
    /// The server refuses (the test fails).
    pub async fn drop(mut self) {
        let schema = std::mem::take(&mut self.schema);
        let admin = connect_config(&config(DATABASE, None)).await;
        let q = bulk_runtime::quote_ident(&schema);
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE")).await.expect("drop schema");
    }
}

/// A test that failed (or never called [`TestDb::drop`]) still drops its
/// schema: on a thread of its own with its own runtime, since this may run
/// inside the test's runtime, which cannot block on a future. The test's own
/// sessions may still hold locks in an open transaction (their connection
/// tasks live on the test's runtime, which is blocked here), so they are
/// ended first; a lock timeout bounds the wait for anything else.
impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned || self.schema.is_empty() {
            return;
        }
        let schema = std::mem::take(&mut self.schema);
        let mut config = config(DATABASE, None);
        config.connect_timeout(std::time::Duration::from_secs(10));
        let sessions = application_name(&schema);
        drop_schema_from_a_thread(config, schema, sessions, "test");
    }
}

/// Drops `schema` through a connection made with `config`, after ending the
/// sessions whose `application_name` is `sessions`, on a thread of its own
/// with its own runtime: a drop guard may run inside the test's runtime,
/// which cannot block on a future. A failure is reported on stderr, naming
/// `what` kind of test schema it was.
pub(crate) fn drop_schema_from_a_thread(config: Config, schema: String, sessions: String, what: &str) {
    let q = bulk_runtime::quote_ident(&schema);
    let cleanup = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let (client, connection) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
            let connection = tokio::spawn(connection);
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = $1 AND pid <> pg_backend_pid()",
                    &[&sessions],
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
            client
                .batch_execute(&format!("SET lock_timeout = '30s'; DROP SCHEMA IF EXISTS {q} CASCADE"))
                .await
                .map_err(|e| format!("{e:?}"))?;
            drop(client);
            let _ = connection.await;
            Ok(())
        })
    });
    match cleanup.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("could not drop the {what} schema {schema}: {e}"),
        Err(_) => eprintln!("could not drop the {what} schema {schema}: the cleanup thread panicked"),
    }
}

/// Counts the rows of a table in the test's schema.
pub async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {}", bulk_runtime::quote_ident(table)), &[])
        .await
        .expect("count rows")
        .get(0)
}

/// Whether the backend `pid` is inside a transaction (seen from `admin`).
pub async fn in_transaction(admin: &Client, pid: i32) -> bool {
    let open: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND xact_start IS NOT NULL", &[&pid])
        .await
        .expect("read pg_stat_activity")
        .get(0);
    open > 0
}

/// A small deterministic random number generator (SplitMix64), so that
/// randomized tests can be replayed from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The seed of a randomized test: `BULK_TEST_SEED` when set, else one taken
/// from the clock. Printed (shown when the test fails) so a failure can be
/// replayed with `BULK_TEST_SEED=<seed>`.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("BULK_TEST_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|e| panic!("BULK_TEST_SEED={s}: {e}")),
        Err(_) => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    println!("{test}: BULK_TEST_SEED={seed}");
    seed
}

/// The model the concurrency tests and the `bulk-writer` binary contend on:
/// key `(a, b)`, and a payload naming the writer, round and position that
/// offered the stored row.
#[derive(bulk_runtime::BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "contended", unique(a, b))]
pub struct Contended {
    /// First key column.
    pub a: i32,
    /// Second key column.
    pub b: i64,
    /// Who offered the row: `w<writer> r<round> #<position>`.
    pub payload: String,
}

impl Contended {
    /// The row of key number `k` (keys are numbered densely from 0).
    pub fn key(k: u64, payload: String) -> Contended {
        Contended { a: (k % 7) as i32, b: (k / 7) as i64, payload }
    }

    /// The key number of this row (the inverse of [`Contended::key`]).
    pub fn number(&self) -> u64 {
        self.b as u64 * 7 + self.a as u64
    }
}

/// Adds to table `contended` a CHECK constraint whose function waits on
/// advisory lock `lock` when the insert meets key number `k`: the insert
/// stops there, mid-batch, until the lock is released.
pub async fn gate_at(client: &Client, k: u64, lock: i64) {
    let row = Contended::key(k, String::new());
    client
        .batch_execute(&format!(
            "CREATE FUNCTION gate(a integer, b bigint) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
                 IF a = {} AND b = {} THEN PERFORM pg_advisory_xact_lock_shared({lock}); END IF;
                 RETURN true;
             END $$;
             ALTER TABLE contended ADD CONSTRAINT gated CHECK (gate(a, b));",
            row.a, row.b
        ))
        .await
        .expect("create the gate");
}

/// A key for advisory locks, unique to this test process and `n`.
pub fn lock_key(n: i64) -> i64 {
    (i64::from(std::process::id()) << 16) + n
}

/// Waits (bounded) until backend `pid` runs a statement whose text matches
/// `like` (and, with `gated`, waits on an advisory lock); returns the statement.
pub async fn wait_for_backend(admin: &Client, pid: i32, like: &str, gated: bool) -> String {
    for _ in 0..4000 {
        let row = admin
            .query_opt(
                "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND query LIKE $2
                    AND (NOT $3 OR (wait_event_type = 'Lock' AND wait_event = 'advisory'))",
                &[&pid, &like, &gated],
            )
            .await
            .expect("query pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("backend {pid} never ran a statement like {like:?}");
}

/// The batch writer `writer` offers in `round` of a run seeded with `seed`:
/// `len` rows whose keys are drawn from the round's `universe` keys (keys
/// `round * universe / 2 ..`, so each round overlaps the one before by
/// half), so every writer of a round overlaps the others and repeats keys
/// inside its batch, in a random order of its own.
pub fn contended_batch(seed: u64, round: u64, writer: u64, len: usize, universe: u64) -> Vec<Contended> {
    let mut rng = Rng::new(seed ^ round.wrapping_mul(0x1000_0001) ^ writer.wrapping_mul(0x0100_0000_01b3));
    let base = round * universe / 2;
    (0..len).map(|i| Contended::key(base + rng.below(universe), format!("w{writer} r{round} #{i}"))).collect()
}

/// The distinct keys of some batches.
pub fn distinct_keys<'a>(batches: impl IntoIterator<Item = &'a Vec<Contended>>) -> std::collections::BTreeSet<u64> {
    batches.into_iter().flatten().map(Contended::number).collect()
}

/// Polls `probe` every few milliseconds until it returns `true`, at most
/// `attempts` times; returns whether it did.
pub async fn eventually<F, Fut>(attempts: u32, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..attempts {
        if probe().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

/// A connection to the test database on another host and port (a pooler or
/// a proxy in front of the server), as the server's user with its password,
/// without any startup options.
pub async fn connect_at(host: &str, port: u16) -> Client {
    connect_as(host, port, &server_user(), server_password().as_deref()).await
}

/// A connection to the test database's name on `host`, `port` as `user`
/// with `password` (a pooler whose database of that name leads elsewhere).
pub async fn connect_as(host: &str, port: u16, user: &str, password: Option<&str>) -> Client {
    let mut config = Config::new();
    config.host(host).port(port).user(user).dbname(DATABASE);
    if let Some(password) = password {
        config.password(password);
    }
    connect_config(&config).await
}
/// A new connection to `database` on the test server (not the tests'
/// database), as `user` when given: for tests that make a database or a
/// role of their own.
pub async fn connect_to(database: &str, user: Option<&str>) -> Client {
    let mut config = config(database, None);
    if let Some(user) = user {
        config.user(user);
    }
    connect_config(&config).await
}

/// The test server's host and port.
pub fn server_address() -> (String, u16) {
    address_of(&config(DATABASE, None))
}

/// The first TCP host (else 127.0.0.1) and port (else 5432) of `config`.
pub fn address_of(config: &Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// The password of the test connections, if the connection string has one.
pub fn server_password() -> Option<String> {
    config(DATABASE, None).get_password().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// The server user of the test connections.
pub fn server_user() -> String {
    config(DATABASE, None).get_user().unwrap_or("postgres").to_owned()
}

/// Where a call runs (the Citus suites' `call!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// The call's own transaction.
    Client,
    /// Inside a caller's transaction, which commits after the call.
    Transaction,
}

/// Runs `$call` (an expression on `$c`, a `&mut` connection, without
/// `.await`) on `$client` directly or inside a transaction that is committed
/// when the call succeeds and rolled back when it fails ([`On`]).
#[macro_export]
macro_rules! call {
    ($client:expr, $on:expr, |$c:ident| $call:expr) => {{
        match $on {
            $crate::On::Client => {
                let $c = &mut $client;
                $call.await
            }
            $crate::On::Transaction => {
                let mut tx = $client.transaction().await.expect("begin");
                let result = {
                    let $c = &mut tx;
                    $call.await
                };
                if result.is_ok() {
                    tx.commit().await.expect("commit the caller's transaction");
                } else {
                    tx.rollback().await.expect("roll back the caller's transaction");
                }
                result
            }
        }
    }};
}
