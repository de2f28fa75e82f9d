//! Finding the database, connecting, and the `migrate` command.
//!
//! The order: `--database-url` / `DATABASE_URL`; else a local server that
//! accepts a connection on the default socket or port (database `retweeter`,
//! created if missing); else an embedded PostgreSQL run from the local
//! binaries (see [`crate::embedded`]).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bulk_runtime::{BulkCreateNew, quote_ident};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, info};

use crate::cli::{DbArgs, MigrateArgs};
use crate::embedded::Embedded;
use crate::model::Retweet;
use crate::ui;

/// The database the app uses on a local or embedded server.
pub const DATABASE: &str = "retweeter";

/// What the database is for: a persistent store, or a demo that starts empty
/// and leaves nothing behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Persistent,
    Throwaway,
}

/// Where the data lives, and how to (re)connect to it.
#[derive(Debug)]
pub struct Database {
    config: Config,
    description: String,
    schema: Option<String>,
    embedded: Option<Arc<Embedded>>,
    /// Create the database when it is missing (local and embedded servers).
    create_db: bool,
}

impl Database {
    /// Finds the database as described in the module docs.
    ///
    /// # Errors
    /// An invalid URL, or no database at all (with the install hint).
    pub async fn open(args: &DbArgs, purpose: Purpose) -> anyhow::Result<Database> {
        let schema = args.schema.clone().filter(|s| !s.is_empty());
        if let Some(url) = &args.database_url {
            let config: Config = url.parse().map_err(|e| anyhow!("invalid database URL: {e}"))?;
            let description = format!("PostgreSQL at {}", describe(&config));
            return Ok(Database { config, description, schema, embedded: None, create_db: false });
        }
        if !args.embedded {
            if let Some(config) = probe_local().await {
                let description = format!("the local PostgreSQL server ({})", describe(&config));
                return Ok(Database { config, description, schema, embedded: None, create_db: true });
            }
            info!("no local PostgreSQL server accepted a connection; using the embedded one");
        }
        let embedded = match purpose {
            Purpose::Persistent => Embedded::persistent(args.pg_bin.as_deref(), args.data_dir.as_deref())?,
            Purpose::Throwaway => Embedded::throwaway(args.pg_bin.as_deref())?,
        };
        let embedded = Arc::new(embedded);
        start(&embedded).await?;
        let mut config = embedded.config();
        config.dbname(DATABASE);
        let description = if embedded.is_throwaway() {
            format!("a throwaway embedded PostgreSQL in {}", embedded.data_dir().display())
        } else {
            format!("the embedded PostgreSQL in {}", embedded.data_dir().display())
        };
        Ok(Database { config, description, schema, embedded: Some(embedded), create_db: true })
    }

    /// Says where the data lives.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The schema chosen with `--schema`, if any.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Uses `schema` (instead of `--schema`) from now on.
    pub fn set_schema(&mut self, schema: Option<String>) {
        self.schema = schema;
    }

    /// Whether this is a throwaway embedded server.
    pub fn is_throwaway(&self) -> bool {
        self.embedded.as_ref().is_some_and(|e| e.is_throwaway())
    }

    /// A new connection, with `search_path` set to the schema when one was
    /// chosen. Restarts the embedded server if it stopped.
    ///
    /// # Errors
    /// The server cannot be reached or refuses the connection.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_in(self.schema.as_deref()).await
    }

    /// A new connection with the server's default `search_path`.
    ///
    /// # Errors
    /// The server cannot be reached or refuses the connection.
    pub async fn connect_plain(&self) -> anyhow::Result<Client> {
        self.connect_in(None).await
    }

    async fn connect_in(&self, schema: Option<&str>) -> anyhow::Result<Client> {
        if let Some(embedded) = &self.embedded {
            start(embedded).await?;
        }
        let mut config = self.config.clone();
        if let Some(schema) = schema {
            // The options string is split on spaces; backslash escapes them.
            let quoted = quote_ident(schema).replace('\\', "\\\\").replace(' ', "\\ ");
            let options = match config.get_options() {
                Some(existing) if !existing.is_empty() => format!("{existing} -c search_path={quoted}"),
                _ => format!("-c search_path={quoted}"),
            };
            config.options(options);
        }
        let client = if self.create_db {
            connect_creating_db(&config).await
        } else {
            connect(&config).await.map_err(anyhow::Error::new)
        };
        client.with_context(|| format!("could not connect to {}", self.description))
    }

    /// Stops an embedded server this process started and deletes a throwaway one.
    pub async fn close(self) {
        if let Some(embedded) = self.embedded {
            let _ = tokio::task::spawn_blocking(move || embedded.stop()).await;
        }
    }
}

async fn start(embedded: &Arc<Embedded>) -> anyhow::Result<()> {
    let embedded = Arc::clone(embedded);
    tokio::task::spawn_blocking(move || embedded.start()).await.context("the embedded server thread failed")?
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!("database connection closed: {e}");
        }
    });
    Ok(client)
}

/// Connects; when the database does not exist yet, creates it first.
async fn connect_creating_db(config: &Config) -> anyhow::Result<Client> {
    match connect(config).await {
        Ok(client) => Ok(client),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            let name = config.get_dbname().unwrap_or(DATABASE).to_owned();
            info!("creating database {name}");
            let mut admin_config = config.clone();
            admin_config.dbname("postgres");
            let admin = connect(&admin_config).await.context("could not connect to the `postgres` database")?;
            if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))).await
                && e.code() != Some(&SqlState::DUPLICATE_DATABASE)
            {
                return Err(anyhow::Error::new(e).context(format!("could not create database {name}")));
            }
            Ok(connect(config).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Tries the usual places of a local server (honouring PGHOST, PGPORT,
/// PGUSER and PGDATABASE) and returns the first that accepts a connection.
async fn probe_local() -> Option<Config> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let port: u16 = env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432);
    let hosts: Vec<String> = match env("PGHOST") {
        Some(h) => h.split(',').map(str::to_owned).collect(),
        None => {
            let mut hosts: Vec<String> = Vec::new();
            let mut seen = Vec::new();
            for dir in ["/var/run/postgresql", "/run/postgresql", "/tmp"] {
                let socket = std::path::Path::new(dir).join(format!(".s.PGSQL.{port}"));
                if let Ok(real) = std::fs::canonicalize(&socket)
                    && !seen.contains(&real)
                {
                    seen.push(real);
                    hosts.push(dir.to_owned());
                }
            }
            hosts.push("127.0.0.1".to_owned());
            hosts
        }
    };
    let mut users: Vec<String> = Vec::new();
    match env("PGUSER") {
        Some(u) => users.push(u),
        None => {
            if let Some(u) = env("USER").or_else(|| env("LOGNAME")) {
                users.push(u);
            }
            if !users.iter().any(|u| u == "postgres") {
                users.push("postgres".to_owned());
            }
        }
    }
    let dbname = env("PGDATABASE").unwrap_or_else(|| DATABASE.to_owned());
    for host in &hosts {
        for user in &users {
            let mut config = Config::new();
            if host.starts_with('/') {
                config.host_path(host);
            } else {
                config.host(host);
            }
            config.port(port).user(user).dbname(&dbname).connect_timeout(Duration::from_secs(2));
            match connect_creating_db(&config).await {
                Ok(_) => {
                    info!("using the local PostgreSQL server: {}", describe(&config));
                    return Some(config);
                }
                Err(e) => debug!("local server {}: {}", describe(&config), ui::one_line(&e)),
            }
        }
    }
    None
}

/// The connection target without secrets: `host=... port=... user=... dbname=...`.
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut parts = Vec::new();
    if !hosts.is_empty() {
        parts.push(format!("host={}", hosts.join(",")));
    }
    if !config.get_ports().is_empty() {
        parts.push(format!("port={}", config.get_ports().iter().map(u16::to_string).collect::<Vec<_>>().join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    parts.join(" ")
}

/// Creates the schema (when one is chosen), the table, its unique key and
/// indexes, then checks the live table against the model. Returns whether
/// the table was created.
///
/// # Errors
/// Database errors, or a live table that does not match the model.
pub async fn migrate(client: &mut Client, schema: Option<&str>) -> anyhow::Result<bool> {
    migrate_inner(client, schema).await.context("the migration failed")
}

async fn migrate_inner(client: &mut Client, schema: Option<&str>) -> anyhow::Result<bool> {
    let tx = client.transaction().await?;
    // Two migrations at once would race on the catalog: take turns.
    tx.execute("SELECT pg_advisory_xact_lock(7265747265746)", &[]).await?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))).await?;
    }
    let table = Retweet::model().table();
    let existed: bool =
        tx.query_one("SELECT to_regclass($1::text) IS NOT NULL", &[&quote_ident(table)]).await?.try_get(0)?;
    for statement in Retweet::model().migration_statements() {
        tx.batch_execute(&statement).await.with_context(|| format!("migration statement failed: {statement}"))?;
    }
    tx.commit().await?;
    let problems = bulk_runtime::verify_schema::<Retweet>(client).await?;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!("table {table} exists but does not match the model: {}", list.join("; "));
    }
    Ok(!existed)
}

/// `migrate`.
pub async fn migrate_command(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let db = Database::open(&args.db, Purpose::Persistent).await?;
    let result = async {
        let mut client = db.connect().await?;
        let created = migrate(&mut client, db.schema()).await?;
        let table = Retweet::model().table();
        let place = db.schema().map(|s| format!(" in schema {s}")).unwrap_or_default();
        if created {
            ui::out(format!("created table {table}{place} with its unique key (tweet, retweeter) and indexes"));
        } else {
            ui::out(format!("table {table}{place} is up to date"));
        }
        info!("database: {}", db.describe());
        Ok(ExitCode::SUCCESS)
    }
    .await;
    db.close().await;
    result
}

/// Adds the hint to run `migrate` to an error about a missing table.
pub fn hint_migrate(err: bulk_runtime::Error) -> anyhow::Error {
    let missing = matches!(&err, bulk_runtime::Error::SchemaMismatch { problems, .. }
        if problems.iter().any(|p| matches!(p, bulk_runtime::SchemaProblem::TableMissing)));
    let err = anyhow::Error::new(err);
    if missing { err.context("the database has no retweet table yet: run `retweeter-app migrate` first") } else { err }
}
