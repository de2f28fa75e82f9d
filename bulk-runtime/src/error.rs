//! The error type of the bulk call.

use std::fmt;

use tokio_postgres::error::{DbError, SqlState};

use crate::model::{Model, quote_ident};
use crate::types::ValueError;

/// Which step of the protocol failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Opening the transaction (or the savepoint inside the caller's).
    Begin,
    /// Verifying the live table against the model.
    SchemaCheck,
    /// Creating the session-local scratch table.
    Scratch,
    /// Streaming the rows with binary `COPY`.
    Copy,
    /// The call's statements: the anti-join `INSERT ... SELECT` (plain, or
    /// with `ON CONFLICT DO NOTHING`), or a variant's (returning, upsert).
    Insert,
    /// Committing (or releasing the savepoint).
    Commit,
    /// Claiming or recording a batch id in the ledger table
    /// ([`Bulk::batch_id`](crate::Bulk::batch_id)).
    Ledger,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Begin => "begin",
            Step::SchemaCheck => "schema check",
            Step::Scratch => "scratch table",
            Step::Copy => "copy",
            Step::Insert => "insert",
            Step::Commit => "commit",
            Step::Ledger => "ledger",
        })
    }
}

/// One way in which the live table differs from the model.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaProblem {
    /// The table does not exist (or is not visible through `search_path`).
    TableMissing,
    /// A model column is absent from the table.
    ColumnMissing {
        /// The column name.
        column: String,
        /// The type the model expects.
        expected: String,
    },
    /// A column's type cannot hold the model's values.
    ColumnType {
        /// The column name.
        column: String,
        /// The types the model accepts.
        expected: String,
        /// The live column's type.
        found: String,
    },
    /// The model field is an `Option` but the column is `NOT NULL` (or of a
    /// domain declared `NOT NULL`, itself or a domain it is over).
    ColumnNotNull {
        /// The column name.
        column: String,
    },
    /// A `NOT NULL` column without a default that the model does not write.
    /// (A column of a domain declared `NOT NULL`, itself or a domain it is
    /// over, counts as `NOT NULL`; the domain's default as a default.)
    RequiredColumnNotInModel {
        /// The column name.
        column: String,
    },
    /// The role may not create temporary tables in the database: the call
    /// needs one, its scratch table, for batches of 5,000 rows or more (the
    /// check refuses the first call of any size, so that a missing grant
    /// shows at once, not with the first large batch).
    TemporaryTablesNotAllowed {
        /// The role the call runs as (`current_user`).
        role: String,
        /// The database.
        database: String,
    },
    /// The table is distributed by Citus on a column that is not part of
    /// the model's unique key: Citus cannot check such a key across shards
    /// (and refuses a unique constraint without the distribution column).
    DistributionColumnNotInKey {
        /// The distribution column.
        column: String,
        /// The model's unique key.
        key: Vec<String>,
    },
    /// The table is a kind of Citus table the calls do not support:
    /// `single_shard` (schema-based sharding or a null shard key),
    /// `citus_local` (added to Citus's metadata), or `unsupported` (append
    /// or range distribution). Hash-distributed and reference tables work.
    CitusTableUnsupported {
        /// The kind, as the schema check names it.
        kind: String,
    },
    /// A key column's type rounds the values it stores (`timestamptz(0)`,
    /// `numeric` with a negative scale, or a domain over such a type): two
    /// offered keys could become one stored key, which no call could count
    /// or match exactly.
    KeyRounded {
        /// The column name.
        column: String,
        /// Its type, with the modifier (for a domain: `name (a domain over
        /// type)`).
        found: String,
    },
    /// The table changed the key of a row as it stored it (a `BEFORE
    /// INSERT` trigger such as `NEW.email := lower(NEW.email)`): a call that
    /// returns the new rows or upserts cannot tell which offered row a stored
    /// row came from, and refuses (nothing written). The plain call's counts
    /// stay exact on such a table.
    KeyChangedOnInsert {
        /// The table's enabled `BEFORE INSERT` row triggers.
        triggers: Vec<String>,
    },
    /// The table has `INSERT` or `UPDATE` rules (`CREATE RULE ... ON
    /// INSERT DO ALSO ...`): PostgreSQL refuses `ON CONFLICT` on such a
    /// table, and a rule's action would run the call's `INSERT ... SELECT`
    /// again after it, when every key it inserted is stored (an audit rule
    /// would get none of the rows). Use a trigger instead.
    InsertRules {
        /// The table's `INSERT` and `UPDATE` rules.
        rules: Vec<String>,
    },
    /// The session's scratch table no longer fits the table (its key
    /// compares otherwise, or an enum column's type name finds another
    /// type: a `search_path` switch), and the current role may not drop it
    /// to make it again: another role made it, and the session's role may
    /// not take that role (`SET SESSION AUTHORIZATION` since). Nothing was
    /// written.
    ScratchTableOfAnotherRole {
        /// The role that owns the scratch table.
        owner: String,
        /// The current role.
        role: String,
    },
    /// Beside a unique index the key can use, the table has a `DEFERRABLE`
    /// unique constraint on exactly the key's columns: PostgreSQL's `ON
    /// CONFLICT (key)`, which short batches, returning calls, upserts and
    /// the fallback after a concurrent key use, refuses any statement on a
    /// table with one (SQLSTATE 55000). Make it `NOT DEFERRABLE`, or drop it
    /// (the other index already refuses a repeated key).
    DeferrableKeyConstraint {
        /// The deferrable constraint's index (named as the constraint).
        index: String,
        /// The key columns the model declares.
        key: Vec<String>,
    },
    /// No usable unique constraint or index on exactly the unique key.
    UniqueKeyMissing {
        /// The key columns the model declares.
        key: Vec<String>,
        /// Unique indexes found that are close but unusable, and why.
        rejected: Vec<String>,
    },
}

impl fmt::Display for SchemaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaProblem::TableMissing => f.write_str("the table does not exist (run the model's migration first)"),
            SchemaProblem::ColumnMissing { column, expected } => {
                write!(f, "column \"{column}\" is missing (expected {expected})")
            }
            SchemaProblem::ColumnType { column, expected, found } => {
                write!(f, "column \"{column}\" has type {found}, expected {expected}")
            }
            SchemaProblem::ColumnNotNull { column } => {
                write!(f, "column \"{column}\" is NOT NULL but the model field is an Option")
            }
            SchemaProblem::RequiredColumnNotInModel { column } => {
                write!(f, "column \"{column}\" is NOT NULL without a default and the model does not write it")
            }
            SchemaProblem::TemporaryTablesNotAllowed { role, database } => write!(
                f,
                "role {r} may not create temporary tables in database {d}, which the call needs for its \
                 scratch table (GRANT TEMPORARY ON DATABASE {d} TO {r})",
                r = quote_ident(role),
                d = quote_ident(database),
            ),
            SchemaProblem::KeyChangedOnInsert { triggers } => {
                f.write_str("the table changed a row as it stored it")?;
                if triggers.is_empty() {
                    f.write_str(" (a column type that drops trailing spaces, such as varchar(n), or a rule)")?;
                } else {
                    let names: Vec<String> = triggers.iter().map(|t| quote_ident(t)).collect();
                    write!(f, " (BEFORE INSERT trigger {})", names.join(", "))?;
                }
                f.write_str(
                    ", so returning the new rows or upserting cannot tell which offered row a stored row came from; \
                     nothing was written (the plain call's counts stay exact on this table)",
                )
            }
            SchemaProblem::DistributionColumnNotInKey { column, key } => write!(
                f,
                "the table is distributed by Citus on \"{column}\", which is not part of the unique key ({}); \
                 distribute it by a key column",
                key.join(", ")
            ),
            SchemaProblem::CitusTableUnsupported { kind } => write!(
                f,
                "the table is a Citus {kind} table; calls support local, hash-distributed and reference tables"
            ),
            SchemaProblem::KeyRounded { column, found } => write!(
                f,
                "key column \"{column}\" is {found}, which rounds the values it stores, so two offered keys could \
                 become one; declare it (or its domain) without the precision or scale (or round the values in the \
                 model)"
            ),
            SchemaProblem::InsertRules { rules } => {
                let names: Vec<String> = rules.iter().map(|r| quote_ident(r)).collect();
                write!(
                    f,
                    "the table has INSERT or UPDATE rules ({}): PostgreSQL refuses ON CONFLICT on it, and a rule \
                     would run the call's INSERT ... SELECT again after it; use a trigger instead",
                    names.join(", ")
                )
            }
            SchemaProblem::ScratchTableOfAnotherRole { owner, role } => write!(
                f,
                "the session's scratch table for this model no longer fits the table, and role {} may not replace \
                 it: role {} made it (RESET ROLE, or use another connection)",
                quote_ident(role),
                quote_ident(owner)
            ),
            SchemaProblem::DeferrableKeyConstraint { index, key } => write!(
                f,
                "unique constraint {} on ({}) is DEFERRABLE: ON CONFLICT refuses a table with a deferrable \
                 constraint on its key (make it NOT DEFERRABLE, or drop it: the key's other unique index already \
                 refuses repeats)",
                quote_ident(index),
                key.join(", ")
            ),
            SchemaProblem::UniqueKeyMissing { key, rejected } => {
                write!(f, "no unique constraint or unique index on exactly ({})", key.join(", "))?;
                if !rejected.is_empty() {
                    write!(f, "; found {}", rejected.join("; "))?;
                }
                f.write_str(" (ON CONFLICT needs one)")
            }
        }
    }
}

/// What went wrong in a bulk call. Nothing of the batch is written when a
/// call returns an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value was refused on the client, before anything was sent.
    #[error("row {row}, field `{field}`: {source}")]
    InvalidValue {
        /// Index of the row in the batch (0-based).
        row: usize,
        /// The Rust field name.
        field: &'static str,
        /// Why the value was refused.
        source: ValueError,
    },
    /// The live table does not match the model; nothing was written.
    #[error("table {table} does not match model `{model}`: {}", join(problems))]
    SchemaMismatch {
        /// The qualified table name.
        table: String,
        /// The model struct.
        model: &'static str,
        /// Every difference found.
        problems: Vec<SchemaProblem>,
    },
    /// PostgreSQL (or the connection) reported an error.
    #[error("bulk insert into {table} failed at {step}{}: {}", at(*row, field.as_deref()), describe(source))]
    Database {
        /// The qualified table name.
        table: String,
        /// The protocol step that failed.
        step: Step,
        /// Index of the offending row in the batch, when known.
        row: Option<usize>,
        /// The offending field (or column), when known.
        field: Option<String>,
        /// The error from tokio-postgres.
        source: tokio_postgres::Error,
        /// The failure left the connection unusable although the server did
        /// not end the session: a `COPY` refused at its start (tokio-postgres
        /// then closes the connection). See [`Error::connection_usable`].
        connection_broken: bool,
    },
    /// The call's options do not fit the model (an upsert naming an unknown
    /// or key column, a key type that does not match the unique key); found
    /// before anything was sent.
    #[error("{model}: {message}")]
    Usage {
        /// The model struct.
        model: &'static str,
        /// What does not fit, and how to fix it.
        message: String,
    },
    /// The batch id was recorded for another batch (other rows, or another
    /// model's): a batch id names one batch. Nothing was written.
    #[error(
        "batch id {batch_id:?} is recorded in {ledger} for another batch ({recorded}); this one is {offered}: \
         give each batch its own id"
    )]
    BatchIdReused {
        /// The batch id.
        batch_id: String,
        /// The ledger table.
        ledger: String,
        /// What the id was recorded for: rows, model and hash.
        recorded: String,
        /// What this call offered, in the same form.
        offered: String,
    },
    /// The call has a [`batch_id`](crate::Bulk::batch_id) but its ledger
    /// table (or the table's schema) does not exist, or lacks a column that
    /// this version records (a ledger made by an earlier version); nothing
    /// was written. Create or upgrade it with
    /// [`Ledger::migration_sql`](crate::Ledger::migration_sql) (idempotent).
    #[error(
        "{model}: the ledger table {ledger} of `.batch_id(..)` is missing or out of date: create (or upgrade) it \
         once, with \
         `client.batch_execute(&Ledger::of::<{model}>().migration_sql())` or in a migration (for a \
         ledger passed to `.ledger(..)`: that ledger's `migration_sql()`); {}",
        describe(source)
    )]
    LedgerMissing {
        /// The model struct.
        model: &'static str,
        /// The ledger table's qualified name.
        ledger: String,
        /// The error from tokio-postgres (SQLSTATE `42P01`, `3F000` or `42703`).
        source: tokio_postgres::Error,
    },
    /// The stream of rows yielded an error
    /// ([`Bulk::try_run_stream`](crate::Bulk::try_run_stream)); nothing was written.
    #[error("the row stream failed at row {row}: {source}")]
    Stream {
        /// Index of the row the stream failed to yield (the rows before it were read).
        row: usize,
        /// The stream's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The name of `T` as a user writes it: [`std::any::type_name`] without the
/// module paths (`Option<String>`, not
/// `core::option::Option<alloc::string::String>`), for messages.
pub(crate) fn type_name<T: ?Sized>() -> String {
    readable_type_name(std::any::type_name::<T>())
}

fn readable_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    // Where the path segment being written started in `out`.
    let mut segment = 0;
    let mut rest = full;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("::") && segment < out.len() {
            // `alloc::string::` so far: keep only what follows.
            out.truncate(segment);
            rest = &rest[2..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
        if !(c.is_alphanumeric() || c == '_') {
            segment = out.len();
        }
    }
    out
}

fn join(problems: &[SchemaProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// The row (0-based) and field that a COPY error's `context` names.
///
/// The context is one line per level, innermost first: a function the
/// COPY ran (a domain's `CHECK`, say) adds its own lines (`SQL statement
/// "..."`, whose text may hold anything, then `PL/pgSQL function ... line
/// 4 at ...`) before the COPY's, which is the last line that begins with
/// `COPY `: `COPY <table>, line N`, then `, column <name>` when a column's
/// value was refused (with `: <value>` in text COPY, which the calls do not
/// use). `<table>` is the scratch or staging table's name, of `[a-z0-9_]`
/// only (`__bulk_...`, `__bulk_stage_...`).
fn copy_position(model: &Model, context: &str) -> (Option<usize>, Option<String>) {
    let Some(line) = context.lines().rev().find_map(|l| l.strip_prefix("COPY ")) else { return (None, None) };
    let Some((_, rest)) = line.split_once(", line ") else { return (None, None) };
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let row = rest[..digits].parse::<usize>().ok().map(|line| line.saturating_sub(1));
    // `column <name>`, or in text COPY `column <name>: <value>`: the
    // longest column name that the rest is, or begins with before `: ` (a
    // name may hold a colon itself).
    let field = rest[digits..].strip_prefix(", column ").and_then(|rest| {
        model
            .columns()
            .iter()
            .filter(|c| rest == c.name() || rest.strip_prefix(c.name()).is_some_and(|after| after.starts_with(": ")))
            .max_by_key(|c| c.name().len())
            .map(|c| c.field().to_owned())
    });
    (row, field)
}

fn at(row: Option<usize>, field: Option<&str>) -> String {
    match (row, field) {
        (Some(r), Some(f)) => format!(" (row {r}, field `{f}`)"),
        (Some(r), None) => format!(" (row {r})"),
        (None, Some(f)) => format!(" (field `{f}`)"),
        (None, None) => String::new(),
    }
}

/// tokio-postgres's `Display` says only "db error"; spell out the server's message.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => describe_db(db),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                src = cause.source();
            }
            s
        }
    }
}

fn describe_db(db: &DbError) -> String {
    let mut s = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    if let Some(d) = db.detail() {
        s.push_str("; ");
        s.push_str(d);
    }
    if let Some(h) = db.hint() {
        s.push_str("; hint: ");
        s.push_str(h);
    }
    s
}

impl Error {
    /// A database error at `step` of the call on `model`'s table.
    pub(crate) fn database(model: &Model, step: Step, source: tokio_postgres::Error) -> Error {
        Error::Database {
            table: model.qualified_name(),
            step,
            row: None,
            field: None,
            source,
            connection_broken: false,
        }
    }

    /// A database error that names the row and field, when known.
    pub(crate) fn database_at(
        model: &Model,
        step: Step,
        row: Option<usize>,
        field: Option<String>,
        source: tokio_postgres::Error,
    ) -> Error {
        Error::Database { table: model.qualified_name(), step, row, field, source, connection_broken: false }
    }

    /// The constructor of database errors at `step` of a call on `model`,
    /// for `map_err`.
    pub(crate) fn at_step(model: &Model, step: Step) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        move |source| Error::database(model, step, source)
    }

    /// The server rejected COPY data: its context reads
    /// `COPY __bulk_..., line N, column c: ...`; line N is row N-1.
    pub(crate) fn copy(model: &Model, source: tokio_postgres::Error) -> Error {
        let (row, field) = source
            .as_db_error()
            .and_then(|db| db.where_())
            .map_or((None, None), |context| copy_position(model, context));
        Self::database_at(model, Step::Copy, row, field, source)
    }

    /// The insert failed (NOT NULL, CHECK, out of range for the column's type...):
    /// the server names the column, not the row.
    pub(crate) fn insert(model: &Model, source: tokio_postgres::Error) -> Error {
        let field = source.as_db_error().and_then(|db| db.column()).map(|col| {
            model.columns().iter().find(|c| c.name() == col).map_or_else(|| col.to_owned(), |c| c.field().to_owned())
        });
        Self::database_at(model, Step::Insert, None, field, source)
    }

    /// Marks the connection as unusable (see [`connection_usable`](Self::connection_usable)).
    pub(crate) fn broken(mut self) -> Error {
        if let Error::Database { connection_broken, .. } = &mut self {
            *connection_broken = true;
        }
        self
    }

    /// The SQLSTATE the server reported, if the error came from the server.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            Error::Database { source, .. } | Error::LedgerMissing { source, .. } => source.code(),
            _ => None,
        }
    }

    /// The server's error details, if the error came from the server.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Database { source, .. } | Error::LedgerMissing { source, .. } => source.as_db_error(),
            _ => None,
        }
    }

    /// Index (0-based) of the offending row in the batch, when the client or
    /// the server could tell.
    pub fn row(&self) -> Option<usize> {
        match self {
            Error::InvalidValue { row, .. } => Some(*row),
            Error::Database { row, .. } => *row,
            Error::Stream { row, .. } => Some(*row),
            Error::SchemaMismatch { .. }
            | Error::Usage { .. }
            | Error::BatchIdReused { .. }
            | Error::LedgerMissing { .. } => None,
        }
    }

    /// The offending field (or column), when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::InvalidValue { field, .. } => Some(field),
            Error::Database { field, .. } => field.as_deref(),
            Error::SchemaMismatch { .. }
            | Error::Usage { .. }
            | Error::Stream { .. }
            | Error::BatchIdReused { .. }
            | Error::LedgerMissing { .. } => None,
        }
    }

    /// The step of the protocol that failed, for database errors.
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::Database { step, .. } => Some(*step),
            Error::LedgerMissing { .. } => Some(Step::Ledger),
            _ => None,
        }
    }

    /// Whether running the same batch again (on a fresh transaction, and a new
    /// connection if this one is closed) may succeed.
    ///
    /// True for serialization failures, deadlocks, lock timeouts, server
    /// shutdowns and lost connections, for a prepared statement name that
    /// a pooler's backend already holds (the retry prepares under a new name),
    /// and on Citus for a shard split or moved during the call and for a
    /// distributed table changed during a call that inserted from its
    /// staging table (the retry checks the table again).
    /// Retrying is always *safe*: the call skips keys already stored, so a
    /// retry never duplicates rows. [`retry`](crate::retry) reruns a batch on
    /// these errors.
    pub fn is_retryable(&self) -> bool {
        let Error::Database { source, .. } = self else { return false };
        retryable(source)
    }

    /// Whether the statement failed on a key another writer stored
    /// meanwhile: `unique_violation` (23505), or the same error of a Citus
    /// insert that ran through the coordinator and copied its rows into the
    /// shards, which Citus re-raises without its SQLSTATE (`XX000`, from
    /// `ReportCopyError`). The statement wrote nothing.
    pub(crate) fn is_unique_violation(&self) -> bool {
        self.sqlstate() == Some(&SqlState::UNIQUE_VIOLATION)
            || self.db_error().is_some_and(|db| {
                db.code() == &SqlState::INTERNAL_ERROR
                    && db.routine() == Some("ReportCopyError")
                    && db.message().starts_with("duplicate key value violates unique constraint")
            })
    }

    /// The server no longer knows a prepared statement of the call, or has
    /// another one under its name (a pooler's backend kept one of another
    /// process, whose statement names tokio-postgres counts the same way).
    pub(crate) fn is_stale_statement(&self) -> bool {
        matches!(self.sqlstate(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME | &SqlState::DUPLICATE_PSTATEMENT))
    }

    /// Whether the connection can be used for the next batch. False after a
    /// lost connection (including a `FATAL` error, with which the server ends
    /// the session, e.g. when the backend is terminated), or a failure inside
    /// `COPY` setup (tokio-postgres may leave that connection unusable).
    pub fn connection_usable(&self) -> bool {
        match self {
            Error::Database { source, connection_broken, .. } => {
                let fatal = source.as_db_error().is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"));
                !source.is_closed() && !fatal && !connection_broken
            }
            _ => true,
        }
    }
}

/// Whether an error of tokio-postgres is worth a retry of the batch; see
/// [`Error::is_retryable`].
pub(crate) fn retryable(source: &tokio_postgres::Error) -> bool {
    if source.is_closed() {
        return true;
    }
    if citus_copy_lost_a_worker(source)
        || citus_shard_moved(source)
        || source.as_db_error().is_some_and(citus_stage_not_colocated)
    {
        return true;
    }
    if source.code() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
        && source.as_db_error().is_some_and(|db| db.message().contains(crate::sql::STAGE_CHANGED))
    {
        // The guard after an insert from a Citus staging table: the table
        // changed during the call; the retry checks it again.
        return true;
    }
    match source.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("40")
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::DUPLICATE_PSTATEMENT
        }
        // No SQLSTATE and not closed: an I/O error on the socket.
        None => {
            source.as_db_error().is_none()
                && std::error::Error::source(source).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

/// Whether `source` is Citus's report of a COPY into a distributed table
/// (the staging table of [`Model::citus_staging_sql`]) that lost its worker
/// connection or met a retryable failure there: Citus re-raises the
/// worker's message without its SQLSTATE (`XX000`, from `ReportCopyError`),
/// or says `failed to complete COPY` (58030) when the connection broke.
fn citus_copy_lost_a_worker(source: &tokio_postgres::Error) -> bool {
    let Some(db) = source.as_db_error() else { return false };
    let message = db.message();
    match db.code().code() {
        "XX000" if db.routine() == Some("ReportCopyError") => {
            message.starts_with("terminating connection")
                || message.starts_with("server closed the connection")
                || message.starts_with("deadlock detected")
                || message.starts_with("could not serialize access")
                || message.starts_with("canceling statement due to lock timeout")
        }
        "58030" => message.starts_with("failed to complete COPY on"),
        _ => false,
    }
}

/// Whether `source` is Citus's report of a shard that a split or a move
/// (`citus_split_shard_by_split_points`, `citus_move_shard_placement`)
/// replaced while the statement was planned or ran: `XX000`, `could not
/// find valid entry for shard N`. The statement failed as a whole, and the
/// retry plans it against the shards as they are now.
fn citus_shard_moved(source: &tokio_postgres::Error) -> bool {
    source.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::INTERNAL_ERROR && db.message().starts_with("could not find valid entry for shard")
    })
}

/// Whether `source` is Citus's refusal of an insert from a staging table
/// ([`Model::citus_staging_sql`](crate::Model::citus_staging_sql)) that is
/// no longer co-located with its target (`0A000`, detail `... and
/// __bulk_stage_... are not colocated`): the target left the co-location
/// group (`update_distributed_table_colocation`) after the call's check.
/// Refused before it ran, nothing written; the retry, checked again, keeps
/// to the session's scratch table.
pub(crate) fn citus_stage_not_colocated(db: &DbError) -> bool {
    db.code() == &SqlState::FEATURE_NOT_SUPPORTED
        && db.detail().is_some_and(|d| d.contains(crate::model::STAGING_PREFIX) && d.ends_with("are not colocated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_read_as_written() {
        assert_eq!(type_name::<String>(), "String");
        assert_eq!(type_name::<(i64, Option<String>)>(), "(i64, Option<String>)");
        assert_eq!(type_name::<Vec<std::borrow::Cow<'static, [u8]>>>(), "Vec<Cow<'_, [u8]>>");
        assert_eq!(type_name::<&str>(), "&str");
        assert_eq!(type_name::<dyn std::fmt::Debug>(), "dyn Debug");
        assert_eq!(readable_type_name("<T as a::Trait>::Assoc"), "<T as Trait>::Assoc");
    }

    #[test]
    fn copy_position_reads_the_copy_line_of_a_context_of_several_lines() {
        use crate::sql::fixtures::MODEL;
        let one = |c: &str| copy_position(&MODEL, c);
        assert_eq!(one("COPY __bulk_0a, line 5108, column re\"tweeter"), (Some(5107), Some("retweeter".into())));
        assert_eq!(one("COPY __bulk_0a, line 3"), (Some(2), None));
        // A text COPY's value after the name.
        assert_eq!(one("COPY __bulk_0a, line 3, column author: \"x, line 9\""), (Some(2), Some("author".into())));
        // Lines of the functions the COPY ran come first; their text may
        // hold anything.
        let nested = "SQL statement \"SELECT 1 WHERE k = 'a, line 2, column author'\"\n\
                      PL/pgSQL function f(text) line 5 at SQL statement\n\
                      COPY __bulk_0a, line 17, column tweet";
        assert_eq!(one(nested), (Some(16), Some("tweet".into())));
        assert_eq!(one("PL/pgSQL function f(text) line 5 at RAISE"), (None, None));
    }
}
