//! Shared helpers of the integration tests: every test gets its own schema
//! in the `bulk_tests` database of the real PostgreSQL server, so tests run
//! in parallel without seeing each other.
//!
//! The server is found through `BULK_TEST_DATABASE_URL` (a libpq-style
//! connection string without `dbname`), by default
//! `host=127.0.0.1 port=5432 user=postgres`.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::{Client, Config, NoTls};

/// The database the tests create their schemas in.
pub const DATABASE: &str = "bulk_tests";

/// A batch of at least this many rows takes the runtime's streaming path
/// (binary COPY into the scratch table); shorter batches take its
/// one-statement array path. Tests of behaviour both paths share run once
/// with a short batch and once padded to this size.
pub const COPY_BATCH: usize = bulk_runtime::__private::SMALL_BATCH + 100;

const HOW_TO_START: &str = "the integration tests need PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), \
or BULK_TEST_DATABASE_URL pointing at one; start the local server with \
`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`";

/// The server's connection string, without a database name.
pub fn server_url() -> String {
    std::env::var("BULK_TEST_DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".to_owned())
}

fn config(dbname: &str, search_path: Option<&str>) -> Config {
    let mut config: Config = server_url().parse().unwrap_or_else(|e| panic!("BULK_TEST_DATABASE_URL: {e}"));
    config.dbname(dbname);
    if let Some(schema) = search_path {
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

/// A schema of its own for one test, and connections whose `search_path` is it.
pub struct TestDb {
    /// The schema's name.
    pub schema: String,
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
        TestDb { schema }
    }

    /// A new connection with `search_path` set to the test's schema.
    pub async fn connect(&self) -> Client {
        connect_config(&config(DATABASE, Some(&self.schema))).await
    }

    /// A new connection with the default `search_path`.
    pub async fn connect_plain(&self) -> Client {
        connect_config(&config(DATABASE, None)).await
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        let admin = connect_config(&config(DATABASE, None)).await;
        let q = bulk_runtime::quote_ident(&self.schema);
        admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE")).await.expect("drop schema");
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
