//! Finding the database, connecting, and the `migrate` command.
//!
//! The order: `--database-url` / `DATABASE_URL`; else a local server that
//! accepts a connection on the default socket or port (database `retweeter`,
//! created if missing); else an embedded PostgreSQL run from the local
//! binaries (see [`crate::embedded`]). A server chosen explicitly (the URL,
//! or any of `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`) that
//! cannot be reached is an error, never a reason to fall back to the next
//! one. Every command that uses a database names it on stderr first.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bulk_runtime::{BulkCreateNew, quote_ident};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, info, warn};

use crate::cli::{DbArgs, MigrateArgs};
use crate::embedded::Embedded;
use crate::model::Retweet;
use crate::ui;

/// The database the app uses on a local or embedded server.
pub const DATABASE: &str = "retweeter";

/// The hint for a database without the app's table.
pub const NO_TABLE: &str = "the database has no retweet table yet: run `retweeter-app migrate` first";

/// The environment variables that choose a local server explicitly.
const PG_ENV: [&str; 5] = ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"];

/// What the database is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A persistent store that may be created (`migrate`): a missing
    /// database or embedded cluster is created.
    Persistent,
    /// A persistent store that must already hold the table (`poll`,
    /// `watch`, `report`): nothing is created, a missing database or
    /// embedded cluster says to run `migrate`.
    Existing,
    /// A demo that starts empty and leaves nothing behind: a throwaway
    /// embedded cluster, or on a server a schema of its own in the app's
    /// database, or a database of its own when the app's does not exist
    /// (never the app's own database, which other commands may be creating
    /// and filling meanwhile), dropped by [`Database::close`].
    Throwaway,
}

/// Where the data lives, and how to (re)connect to it.
#[derive(Debug)]
pub struct Database {
    config: Config,
    description: String,
    schema: Option<String>,
    embedded: Option<Arc<Embedded>>,
    purpose: Purpose,
    /// Create the database when it is missing (local and embedded servers).
    create_db: bool,
    /// Whether this process created the database (dropped again after a demo).
    created_db: AtomicBool,
    /// Whether the schema is the demo's own (dropped after the demo).
    own_schema: bool,
    /// Whether the database is the demo's own, named for it (created at its
    /// first connection, dropped after the demo).
    own_db: bool,
}

impl Database {
    /// Finds the database as described in the module docs, and says which
    /// one it is on stderr (`database: ...`, without any password).
    ///
    /// # Errors
    /// An invalid URL or `PGPORT`, an explicitly chosen server that does not
    /// accept the connection, no database at all (with the install hint), or
    /// (for [`Purpose::Existing`]) an embedded cluster that was never created.
    pub async fn open(args: &DbArgs, purpose: Purpose) -> anyhow::Result<Database> {
        let schema = args.schema.clone().filter(|s| !s.is_empty());
        // (An empty `DATABASE_URL=` counts as unset, as an empty `--schema` does.)
        let mut db = if let Some(url) = args.database_url.as_ref().filter(|u| !u.is_empty()) {
            let config: Config = url.parse().map_err(|e| anyhow!("invalid database URL: {e}"))?;
            let description = format!("PostgreSQL at {}", describe(&config));
            Database::new(config, description, schema, None, purpose, false)
        } else if let Some(local) = local_server(args, purpose).await? {
            let mut config = local.config;
            // The demo never creates (nor so drops) the app's own database:
            // `migrate` and `poll` may create and fill it meanwhile. Without
            // it, the demo works in a database of its own.
            let own_db = purpose == Purpose::Throwaway && local.missing;
            if own_db {
                config.dbname(demo_name());
            }
            let description = format!("PostgreSQL at {}", describe(&config));
            let mut db =
                Database::new(config, description, schema, None, purpose, purpose == Purpose::Persistent || own_db);
            db.created_db.store(local.created, Ordering::SeqCst);
            db.own_db = own_db;
            db
        } else {
            let embedded = match purpose {
                Purpose::Persistent | Purpose::Existing => {
                    Embedded::persistent(args.pg_bin.as_deref(), args.data_dir.as_deref())?
                }
                Purpose::Throwaway => Embedded::throwaway(args.pg_bin.as_deref())?,
            };
            let description = if embedded.is_throwaway() {
                format!("throwaway embedded PostgreSQL at {}", embedded.data_dir().display())
            } else {
                format!("embedded PostgreSQL at {}", embedded.data_dir().display())
            };
            let mut config = embedded.config();
            config.dbname(DATABASE);
            let create = purpose != Purpose::Existing;
            Database::new(config, description, schema, Some(Arc::new(embedded)), purpose, create)
        };
        // On a server the demo does not own, it works in a schema of its own.
        if purpose == Purpose::Throwaway && !db.is_throwaway() && !db.own_db && db.schema.is_none() {
            db.schema = Some(demo_name());
            db.own_schema = true;
        }
        ui::err_line(format!("database: {}", db.describe()));
        if let Some(embedded) = &db.embedded {
            if purpose == Purpose::Existing && !embedded.exists() {
                return Err(anyhow!("there is no PostgreSQL cluster in {} yet", embedded.data_dir().display())
                    .context(NO_TABLE));
            }
            start(embedded).await?;
        }
        Ok(db)
    }

    fn new(
        config: Config,
        description: String,
        schema: Option<String>,
        embedded: Option<Arc<Embedded>>,
        purpose: Purpose,
        create_db: bool,
    ) -> Database {
        Database {
            config,
            description,
            schema,
            embedded,
            purpose,
            create_db,
            created_db: AtomicBool::new(false),
            own_schema: false,
            own_db: false,
        }
    }

    /// Says where the data lives: the server without password, or the
    /// embedded cluster's directory, and the schema when one is chosen.
    pub fn describe(&self) -> String {
        match &self.schema {
            None if self.own_db => format!("{} (dropped at the end)", self.description),
            Some(schema) if self.own_schema => format!("{}, schema {schema} (dropped at the end)", self.description),
            Some(schema) => format!("{}, schema {schema}", self.description),
            None => self.description.clone(),
        }
    }

    /// The schema chosen with `--schema` (or the demo's own), if any.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Whether [`Database::close`] leaves the schema the data is in: a
    /// schema named with `--schema` (not the demo's own) in a database this
    /// process did not create, on a server (not a throwaway embedded one).
    /// Known once a connection was made.
    pub fn keeps_schema(&self) -> bool {
        self.schema.is_some() && !self.own_schema && !self.is_throwaway() && !self.created_db.load(Ordering::SeqCst)
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
            connect_creating_db(&config).await.map(|(client, created)| {
                if created {
                    self.created_db.store(true, Ordering::SeqCst);
                }
                client
            })
        } else {
            match connect(&config).await {
                Err(e) if self.purpose == Purpose::Existing && e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                    Err(anyhow::Error::new(e).context(NO_TABLE))
                }
                result => result.map_err(anyhow::Error::new),
            }
        };
        client.with_context(|| format!("could not connect to {}", self.description))
    }

    /// Opens the database for `purpose` (see [`open`](Self::open)), runs
    /// `work` on it and closes it (see [`close`](Self::close)). Ctrl-C or
    /// SIGTERM stops the opening or the work (a batch in flight is rolled
    /// back) with exit code 130, and the database is still closed: an
    /// embedded server this process started is stopped, and what a demo
    /// made is removed.
    ///
    /// # Errors
    /// As [`open`](Self::open), and `work`'s.
    pub async fn run(
        args: &DbArgs,
        purpose: Purpose,
        work: impl AsyncFnOnce(&Database) -> anyhow::Result<ExitCode>,
    ) -> anyhow::Result<ExitCode> {
        let interrupted = ui::interrupted();
        tokio::pin!(interrupted);
        // (Dropping an unfinished `open` stops an embedded server being set
        // up and deletes a throwaway one's directory.)
        let db = tokio::select! {
            db = Database::open(args, purpose) => db?,
            () = &mut interrupted => return Ok(ui::stopped()),
        };
        let result = tokio::select! {
            result = work(&db) => result,
            () = &mut interrupted => Ok(ui::stopped()),
        };
        db.close().await;
        result
    }

    /// Ends the session: after a demo, drops what it created on a server (its
    /// schema, or the database when it created it); stops an embedded server
    /// this process started and deletes a throwaway one.
    pub async fn close(self) {
        if self.purpose == Purpose::Throwaway && self.embedded.is_none() {
            self.drop_demo_data().await;
        }
        if let Some(embedded) = self.embedded {
            let _ = tokio::task::spawn_blocking(move || embedded.stop()).await;
        }
    }

    /// Whether a session of the server is still creating the demo's own
    /// database (this process's `CREATE DATABASE`, its answer not awaited).
    async fn being_created(&self, admin: &Client) -> bool {
        let name = self.config.get_dbname().unwrap_or(DATABASE);
        let create = format!("CREATE DATABASE {}", quote_ident(name));
        admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = $1 AND state = 'active') \
                 OR EXISTS (SELECT 1 FROM pg_database WHERE datname = $2)",
                &[&create, &name],
            )
            .await
            .is_ok_and(|row| row.get(0))
    }

    async fn drop_demo_data(&self) {
        let mut admin_config = self.config.clone();
        // (A database of the demo's own is dropped even when this process
        // never saw its `CREATE DATABASE` answer: a demo interrupted then.
        // Its name is this run's alone.)
        let created = self.created_db.load(Ordering::SeqCst) || self.own_db;
        let (what, sql) = if created {
            let name = self.config.get_dbname().unwrap_or(DATABASE).to_owned();
            admin_config.dbname("postgres");
            (format!("database {name}"), format!("DROP DATABASE IF EXISTS {}", quote_ident(&name)))
        } else if let (true, Some(schema)) = (self.own_schema, &self.schema) {
            (format!("schema {schema}"), format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)))
        } else {
            return;
        };
        let admin = match connect(&admin_config).await {
            Ok(client) => client,
            Err(e) => {
                warn!("could not drop the demo's {what}: {}", ui::one_line(&anyhow::Error::new(e)));
                return;
            }
        };
        // The demo's own connections close as their clients are dropped; give them a moment.
        for attempt in 1.. {
            match admin.batch_execute(&sql).await {
                Ok(()) if self.own_db && attempt < 50 && self.being_created(&admin).await => {
                    // A demo interrupted while its `CREATE DATABASE` ran:
                    // the server finishes it after this `DROP ... IF EXISTS`.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(()) => {
                    info!("dropped the demo's {what}");
                    return;
                }
                Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < 50 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    warn!("could not drop the demo's {what}: {}", ui::one_line(&anyhow::Error::new(e)));
                    return;
                }
            }
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
/// Returns the client and whether this call created the database.
async fn connect_creating_db(config: &Config) -> anyhow::Result<(Client, bool)> {
    match connect(config).await {
        Ok(client) => Ok((client, false)),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            let name = config.get_dbname().unwrap_or(DATABASE).to_owned();
            info!("creating database {name}");
            let mut admin_config = config.clone();
            admin_config.dbname("postgres");
            let admin = connect(&admin_config).await.context("could not connect to the `postgres` database")?;
            let created = match admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name))).await {
                Ok(()) => true,
                // Another process created it at the same moment: 42P04, or
                // 23505 when both inserted into pg_database at once.
                Err(e) if matches!(e.code(), Some(&SqlState::DUPLICATE_DATABASE | &SqlState::UNIQUE_VIOLATION)) => {
                    false
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("could not create database {name}"))),
            };
            Ok((connect(config).await?, created))
        }
        Err(e) => Err(e.into()),
    }
}

/// A local server that accepted the connection.
struct Local {
    config: Config,
    /// Whether the probe created the database.
    created: bool,
    /// Whether the server said the database does not exist (a probe that
    /// was not to create it).
    missing: bool,
}

/// A name of the demo's own (schema or database), unique to this run.
fn demo_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("retweeter_demo_{}_{nanos:x}", std::process::id())
}

/// The local server, unless `--embedded`: `None` when no server accepts a
/// connection and none was chosen explicitly.
///
/// # Errors
/// A server chosen with `PGHOST`, `PGPORT`, ... that does not accept the
/// connection; an invalid `PGPORT`.
async fn local_server(args: &DbArgs, purpose: Purpose) -> anyhow::Result<Option<Local>> {
    if args.embedded {
        return Ok(None);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // The settings as the message shows them (never the password itself).
    let explicit: Vec<String> = PG_ENV
        .iter()
        .filter_map(|k| env(k).map(|v| if *k == "PGPASSWORD" { (*k).to_owned() } else { format!("{k}={v}") }))
        .collect();
    let port: u16 = match env("PGPORT") {
        Some(p) => p.parse().map_err(|_| anyhow!("PGPORT={p} is not a port number"))?,
        None => 5432,
    };
    match probe_local(port, purpose == Purpose::Persistent).await {
        Ok(local) => Ok(Some(local)),
        Err(last) if !explicit.is_empty() => Err(last.context(format!(
            "could not connect to the PostgreSQL server chosen by {}; fix or unset {}, or pass --embedded",
            explicit.join(" "),
            if explicit.len() == 1 { "it" } else { "them" }
        ))),
        Err(last) => {
            info!("no local PostgreSQL server accepted a connection ({}); using the embedded one", ui::one_line(&last));
            Ok(None)
        }
    }
}

/// Tries the usual places of a local server (honouring PGHOST, PGUSER,
/// PGDATABASE and PGPASSWORD) on `port` and returns the first that accepts a
/// connection, or the last attempt's error. With `create`, a missing
/// database is created; without, a server that says the database does not
/// exist counts as accepting.
async fn probe_local(port: u16, create: bool) -> anyhow::Result<Local> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
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
    let mut last = anyhow!("no host to try");
    for host in &hosts {
        for user in &users {
            let mut config = Config::new();
            if host.starts_with('/') {
                config.host_path(host);
            } else {
                config.host(host);
            }
            config.port(port).user(user).dbname(&dbname).connect_timeout(Duration::from_secs(2));
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            }
            let attempt = if create {
                connect_creating_db(&config).await.map(|(_, created)| (created, false))
            } else {
                match connect(&config).await {
                    Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => Ok((false, true)),
                    Err(e) => Err(e.into()),
                    Ok(_) => Ok((false, false)),
                }
            };
            match attempt {
                Ok((created, missing)) => {
                    info!("using the local PostgreSQL server: {}", describe(&config));
                    return Ok(Local { config, created, missing });
                }
                Err(e) => {
                    debug!("local server {}: {}", describe(&config), ui::one_line(&e));
                    last = e.context(format!("could not connect to {}", describe(&config)));
                }
            }
        }
    }
    Err(last)
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
        if let Err(e) = tx.batch_execute(&statement).await {
            if existed {
                // A table of that name that is not the app's: say how it
                // differs rather than show the statement that failed on it.
                tx.rollback().await?;
                let problems = bulk_runtime::verify_schema::<Retweet>(client).await?;
                if !problems.is_empty() {
                    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    bail!("table {table} exists but does not match the model: {}", list.join("; "));
                }
            }
            return Err(anyhow::Error::new(e).context(format!("migration statement failed: {statement}")));
        }
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
    Database::run(&args.db, Purpose::Persistent, async |db| {
        let mut client = db.connect().await?;
        let created = migrate(&mut client, db.schema()).await?;
        let table = Retweet::model().table();
        let place = db.schema().map(|s| format!(" in schema {s}")).unwrap_or_default();
        if created {
            ui::out(format!("created table {table}{place} with its unique key (tweet, retweeter) and indexes"));
        } else {
            ui::out(format!("table {table}{place} is up to date"));
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}

/// Adds the hint to run `migrate` to an error about a missing table.
pub fn hint_migrate(err: bulk_runtime::Error) -> anyhow::Error {
    let missing = matches!(&err, bulk_runtime::Error::SchemaMismatch { problems, .. }
        if problems.iter().any(|p| matches!(p, bulk_runtime::SchemaProblem::TableMissing)));
    let err = anyhow::Error::new(err);
    if missing { err.context("the database has no retweet table yet: run `retweeter-app migrate` first") } else { err }
}
