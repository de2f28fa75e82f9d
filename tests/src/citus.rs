//! Helpers of the Citus test suite (`tests/tests/citus.rs`, run with
//! `cargo test -p bulk-tests --features citus --test citus`): a schema of its
//! own per test on a real Citus cluster, named by `BULK_CITUS_URL`.
//!
//! The suite never skips: without the variable, or when the cluster does not
//! answer or is not a Citus coordinator with workers, every test fails and
//! says how to build, start and name the cluster.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::{Client, Config, NoTls};

/// The environment variable naming the coordinator: a libpq-style
/// connection string, as `cluster.sh start` prints it.
pub const CITUS_URL_VAR: &str = "BULK_CITUS_URL";

const HOW_TO_START: &str = concat!(
    "the Citus tests need a Citus cluster (a coordinator with workers) and BULK_CITUS_URL naming its ",
    "coordinator. On this machine, from the repository's root:\n",
    "    sudo ../shared/citus/install.sh                         # builds and installs Citus 13.2 (once; a few minutes)\n",
    "    ../shared/citus/cluster.sh start /tmp/bulk-citus 9700   # coordinator on 9700, workers on 9701 and 9702\n",
    "    export BULK_CITUS_URL=\"host=127.0.0.1 port=9700 user=postgres dbname=postgres\"\n",
    "    cargo test -p bulk-tests --features citus --test citus\n",
    "    ../shared/citus/cluster.sh stop /tmp/bulk-citus\n",
    "(`cluster.sh start` prints the connection string on its last line.)"
);

/// How a test's table is placed on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// `create_distributed_table(table, column)`: hash-distributed by a
    /// column of its unique key.
    Distributed(&'static str),
    /// `create_reference_table(table)`: one copy on every node.
    Reference,
    /// As [`Placement::Distributed`], and the table gets its staging table
    /// (`Model::citus_staging_sql`; the test runs it, knowing the model).
    Staged(&'static str),
}

impl Placement {
    /// The statement that places `table` (a name as `regclass` input reads
    /// it: quoted where it needs quotes) on the cluster.
    ///
    /// A `DO` block that tries again (up to 50 times, 0.1 s apart) on
    /// SQLSTATE XX000: placing a table makes Citus check that every
    /// reference table of the cluster has its copies on every node, and a
    /// reference table another test drops at that moment fails it with
    /// "reference table ... does not have a shard" (seen in CI).
    pub fn sql(self, table: &str) -> String {
        let table = quote_literal(table);
        let place = match self {
            Placement::Distributed(column) | Placement::Staged(column) => {
                // The column goes as its name, not as a quoted identifier.
                format!("create_distributed_table({table}, {})", quote_literal(column))
            }
            Placement::Reference => format!("create_reference_table({table})"),
        };
        format!(
            "DO $place$ BEGIN FOR attempt IN 1..50 LOOP BEGIN PERFORM {place}; RETURN; \
             EXCEPTION WHEN internal_error THEN IF attempt = 50 THEN RAISE; END IF; PERFORM pg_sleep(0.1); \
             END; END LOOP; END $place$"
        )
    }

    /// Places `table` ([`Placement::sql`]) with `client` and, for
    /// [`Placement::Staged`], gives it the staging table of the model `M`
    /// (`Model::citus_staging_sql`).
    ///
    /// # Panics
    /// The cluster refuses either (the test fails, naming the table).
    pub async fn place<M: bulk_runtime::BulkCreateNew>(self, client: &Client, table: &str) {
        client.batch_execute(&self.sql(table)).await.unwrap_or_else(|e| panic!("place {table}: {e:?}"));
        if let Placement::Staged(_) = self {
            client
                .batch_execute(&M::model().citus_staging_sql())
                .await
                .unwrap_or_else(|e| panic!("{table}'s staging table: {e:?}"));
        }
    }

    /// A short name, for schema names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Placement::Distributed(_) => "dist",
            Placement::Reference => "ref",
            Placement::Staged(_) => "stag",
        }
    }
}

/// `s` as an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The coordinator's connection settings, from `BULK_CITUS_URL`.
///
/// # Panics
/// The variable is unset or not a connection string (the test fails with
/// how to start a cluster).
pub fn coordinator_config() -> Config {
    let url = std::env::var(CITUS_URL_VAR).unwrap_or_else(|_| panic!("{CITUS_URL_VAR} is not set.\n\n{HOW_TO_START}"));
    let mut config: Config = url.parse().unwrap_or_else(|e| panic!("{CITUS_URL_VAR}={url:?}: {e}\n\n{HOW_TO_START}"));
    if config.get_dbname().is_none() {
        config.dbname("postgres");
    }
    if config.get_user().is_none() {
        config.user("postgres");
    }
    config.connect_timeout(std::time::Duration::from_secs(10));
    config
}

async fn connect_config(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!("cannot connect to the Citus coordinator named by {CITUS_URL_VAR}: {e:?}\n\n{HOW_TO_START}")
    });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The coordinator's host and port, from `BULK_CITUS_URL`.
pub fn coordinator_address() -> (String, u16) {
    crate::address_of(&coordinator_config())
}

/// Checks once per test process that the coordinator runs Citus with at
/// least one active worker.
async fn ensure_citus() {
    static CHECKED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CHECKED
        .get_or_init(|| async {
            let admin = connect_config(&coordinator_config()).await;
            let version: Option<String> = admin
                .query_opt("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'citus'", &[])
                .await
                .expect("query pg_extension")
                .map(|r| r.get(0));
            let Some(version) = version else {
                panic!(
                    "the server named by {CITUS_URL_VAR} has no citus extension in this database: \
                     it is not a Citus coordinator\n\n{HOW_TO_START}"
                )
            };
            let workers: i64 = admin
                .query_one("SELECT count(*) FROM citus_get_active_worker_nodes()", &[])
                .await
                .expect("list the Citus workers")
                .get(0);
            assert!(
                workers >= 1,
                "the Citus coordinator named by {CITUS_URL_VAR} has no active worker\n\n{HOW_TO_START}"
            );
            println!("Citus {version}, {workers} workers");
        })
        .await;
}

/// The `application_name` of a test's sessions (so that a failed test's
/// leftover sessions can be ended before its schema is dropped).
fn application_name(schema: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    schema.hash(&mut hasher);
    format!("bulk_citus {:016x}", hasher.finish())
}

/// A schema of its own on the Citus cluster for one test (Citus propagates
/// it to the workers), and connections to the coordinator whose
/// `search_path` is it. Dropped, with its distributed and reference tables
/// and their shards, by [`CitusDb::drop`] or, when the test fails, by
/// [`Drop`].
pub struct CitusDb {
    /// The schema's name.
    pub schema: String,
}

impl CitusDb {
    /// A fresh schema named after the test.
    pub async fn new(test: &str) -> CitusDb {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        ensure_citus().await;
        let schema = format!("c_{test}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let admin = connect_config(&coordinator_config()).await;
        let q = bulk_runtime::quote_ident(&schema);
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE; CREATE SCHEMA {q}"))
            .await
            .unwrap_or_else(|e| panic!("create schema {schema} on the Citus cluster: {e:?}"));
        CitusDb { schema }
    }

    /// The settings of [`connect`](Self::connect).
    pub fn config(&self) -> Config {
        let mut config = coordinator_config();
        config.application_name(application_name(&self.schema));
        let quoted = bulk_runtime::quote_ident(&self.schema).replace('\\', "\\\\").replace(' ', "\\ ");
        config.options(format!("-c search_path={quoted}"));
        config
    }

    /// A new connection to the coordinator, `search_path` the test's schema.
    pub async fn connect(&self) -> Client {
        connect_config(&self.config()).await
    }

    /// A new connection as [`connect`](Self::connect) makes, through
    /// `recorder` (a [`SqlRecorder`](crate::recorder::SqlRecorder) started
    /// in front of the coordinator, see [`coordinator_address`], or of a
    /// worker, see [`workers`]).
    pub async fn connect_through(&self, recorder: &crate::recorder::SqlRecorder) -> Client {
        let mut config = self.config_at("127.0.0.1", recorder.port());
        config.options(self.config().get_options().unwrap_or_default());
        connect_config(&config).await
    }

    /// A connection to a worker node (`host`, `port` as `pg_dist_node` names
    /// them), as the coordinator's user, to the same database.
    pub async fn connect_worker(&self, host: &str, port: u16) -> Client {
        connect_config(&self.config_at(host, port)).await
    }

    /// A connection to a worker node as [`connect`](Self::connect) makes one
    /// to the coordinator (`search_path` the test's schema): for calls made
    /// on a worker (Citus runs distributed statements from any node).
    pub async fn connect_node(&self, host: &str, port: u16) -> Client {
        let mut config = self.config_at(host, port);
        config.options(self.config().get_options().unwrap_or_default());
        connect_config(&config).await
    }

    /// The coordinator's user, password and database at `host`, `port`,
    /// with the test's `application_name` (a new `Config`: `host` and
    /// `port` add to a config's lists).
    fn config_at(&self, host: &str, port: u16) -> Config {
        let coordinator = coordinator_config();
        let mut config = Config::new();
        config.host(host).port(port).application_name(application_name(&self.schema));
        config.user(coordinator.get_user().unwrap_or("postgres"));
        config.dbname(coordinator.get_dbname().unwrap_or("postgres"));
        if let Some(password) = coordinator.get_password() {
            config.password(password);
        }
        config.connect_timeout(std::time::Duration::from_secs(10));
        config
    }

    /// The coordinator, its user and database, and the test's schema: for a
    /// [`Pgbouncer`](crate::pgbouncer::Pgbouncer) in front of the cluster.
    pub fn upstream(&self) -> crate::pgbouncer::Upstream {
        let config = coordinator_config();
        let (host, port) = coordinator_address();
        crate::pgbouncer::Upstream {
            host,
            port,
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: config.get_dbname().unwrap_or("postgres").to_owned(),
            schema: self.schema.clone(),
        }
    }

    /// Drops the schema and everything in it.
    ///
    /// # Panics
    /// The cluster refuses (the test fails).
    pub async fn drop(mut self) {
        let schema = std::mem::take(&mut self.schema);
        let admin = connect_config(&coordinator_config()).await;
        let q = bulk_runtime::quote_ident(&schema);
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE")).await.expect("drop schema");
    }
}

/// As `TestDb`'s: a failed test still drops its schema, on a thread of its
/// own, after ending the test's sessions.
impl Drop for CitusDb {
    fn drop(&mut self) {
        if self.schema.is_empty() {
            return;
        }
        let schema = std::mem::take(&mut self.schema);
        let sessions = application_name(&schema);
        crate::drop_schema_from_a_thread(coordinator_config(), schema, sessions, "Citus test");
    }
}

/// The worker nodes of the cluster: `(host, port)` of each active worker.
pub async fn workers(client: &Client) -> Vec<(String, u16)> {
    client
        .query("SELECT node_name::text, node_port::int4 FROM citus_get_active_worker_nodes() ORDER BY 2", &[])
        .await
        .expect("list the Citus workers")
        .iter()
        .map(|r| (r.get(0), r.get::<_, i32>(1) as u16))
        .collect()
}
