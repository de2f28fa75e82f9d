//! Exactly-once accounting: the ledger of batch ids.
//!
//! A call given a batch id ([`Bulk::batch_id`](crate::Bulk::batch_id)) first
//! *claims* the id in the ledger table, in the transaction (or savepoint) that
//! then inserts the batch and records its counts on the claimed row. So the
//! counts are committed exactly when the rows are:
//!
//! - a retry after an ambiguous `COMMIT` (the server committed, the client
//!   lost the answer) finds the id claimed and returns the recorded counts,
//!   flagged [`replayed`](crate::Report::replayed), without inserting;
//! - two calls with the same new id at the same time cannot both insert: the
//!   second one's claim waits on the first one's uncommitted ledger row (the
//!   primary key), then sees it (a replay) or, if the first rolled back,
//!   claims it itself;
//! - a failed call leaves no ledger row behind: its retry runs normally.
//!
//! The claim is the call's first write, and it takes one row lock, so it adds
//! no deadlock: the batch's keys are still locked in key order after it.

use std::fmt::Write as _;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::BulkCreateNew;
use crate::api::Report;
use crate::error::{Error, Step};
use crate::model::{Model, quote_ident};
use crate::wire::Fingerprint;

/// Where the batch ids of [`Bulk::batch_id`](crate::Bulk::batch_id) are
/// recorded: a table with one row per (target table, batch id).
///
/// By default the table is `bulk_batches` in the model's schema (the
/// connection's `search_path` when the model has none); create it once with
/// [`migration_sql`](Self::migration_sql):
///
/// ```
/// # use bulk_runtime::{BulkCreateNew, Ledger};
/// # #[derive(BulkCreateNew)]
/// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
/// # pub struct Retweet { pub tweet: i64, pub retweeter: i64 }
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = ExampleDb::create("doc_ledger").await?;
/// # let client = db.connect().await?;
/// client.batch_execute(&Retweet::model().migration_sql()).await?;
/// client.batch_execute(&Ledger::of::<Retweet>().migration_sql()).await?;
/// # let found: i64 = client.query_one("SELECT count(*) FROM bulk_batches", &[]).await?.get(0);
/// # assert_eq!(found, 0);
/// # db.drop().await?;
/// # Ok(()) }
/// ```
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "bulk_batches" (
///     "target" text NOT NULL,          -- the schema-qualified target table
///     "batch_id" text NOT NULL,
///     "offered" bigint NOT NULL DEFAULT 0,
///     "inserted" bigint NOT NULL DEFAULT 0,
///     "updated" bigint NOT NULL DEFAULT 0,
///     "unchanged" bigint NOT NULL DEFAULT 0,
///     "skipped" bigint NOT NULL DEFAULT 0,
///     "recorded_at" timestamptz NOT NULL DEFAULT now(),
///     "fingerprint" text,              -- the batch the id names: rows, model, hash
///     PRIMARY KEY ("target", "batch_id")
/// );
/// -- for a ledger made by an earlier version:
/// ALTER TABLE "bulk_batches" ADD COLUMN IF NOT EXISTS "fingerprint" text
/// ```
///
/// A batch id names one batch: a later call with the same id replays the
/// recorded counts only when its batch is the same (the same model, rows
/// and order: see the `fingerprint`); another batch under a used id is
/// [`Error::BatchIdReused`](crate::Error::BatchIdReused), and nothing of it
/// is written. Ids are non-empty, without NUL bytes, at most 512 bytes.
///
/// Rows are never deleted by the library: delete those older than any retry
/// can be (`DELETE FROM bulk_batches WHERE recorded_at < now() - interval '7 days'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    schema: Option<String>,
    table: String,
}

impl Default for Ledger {
    /// `bulk_batches`, found through the connection's `search_path`.
    fn default() -> Ledger {
        Ledger::new(Ledger::DEFAULT_TABLE)
    }
}

impl Ledger {
    /// The default table name, `bulk_batches`.
    pub const DEFAULT_TABLE: &'static str = "bulk_batches";

    /// A ledger table of this name, found through the connection's `search_path`.
    pub fn new(table: impl Into<String>) -> Ledger {
        Ledger { schema: None, table: table.into() }
    }

    /// The same table name in `schema`.
    #[must_use]
    pub fn in_schema(mut self, schema: impl Into<String>) -> Ledger {
        self.schema = Some(schema.into());
        self
    }

    /// The ledger a call on model `T` uses unless told otherwise:
    /// `bulk_batches` in the model's schema.
    pub fn of<T: BulkCreateNew>() -> Ledger {
        Ledger::for_model(T::model())
    }

    pub(crate) fn for_model(model: &Model) -> Ledger {
        Ledger { schema: model.schema().map(str::to_owned), table: Ledger::DEFAULT_TABLE.to_owned() }
    }

    /// The table's name, schema-qualified when a schema is set, quoted.
    pub fn qualified_name(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.table)),
            None => quote_ident(&self.table),
        }
    }

    /// The statements of [`migration_sql`](Self::migration_sql).
    pub fn migration_statements(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(schema) = &self.schema {
            out.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)));
        }
        let mut table = format!(
            "CREATE TABLE IF NOT EXISTS {} ({} text NOT NULL, {} text NOT NULL",
            self.qualified_name(),
            quote_ident("target"),
            quote_ident("batch_id")
        );
        for count in COUNTS {
            let _ = write!(table, ", {} bigint NOT NULL DEFAULT 0", quote_ident(count));
        }
        let _ = write!(
            table,
            ", {} timestamptz NOT NULL DEFAULT now(), {} text, PRIMARY KEY ({}, {}))",
            quote_ident("recorded_at"),
            quote_ident(FINGERPRINT),
            quote_ident("target"),
            quote_ident("batch_id")
        );
        out.push(table);
        // A ledger made by an earlier version of this crate gains the column.
        out.push(format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text",
            self.qualified_name(),
            quote_ident(FINGERPRINT)
        ));
        out
    }

    /// The ledger's DDL as one idempotent script (`CREATE SCHEMA IF NOT
    /// EXISTS` when a schema is set, `CREATE TABLE IF NOT EXISTS`).
    pub fn migration_sql(&self) -> String {
        let mut sql = String::new();
        for s in self.migration_statements() {
            let _ = writeln!(sql, "{s};");
        }
        sql
    }

    /// Claims `($1 resolved, $2)` for the batch of fingerprint `$3`; returns
    /// the resolved target when claimed.
    fn claim_sql(&self) -> String {
        format!(
            "INSERT INTO {} ({}, {}, {}) VALUES ({RESOLVED_TARGET}, $2, $3) ON CONFLICT ({}, {}) DO NOTHING RETURNING {}",
            self.qualified_name(),
            quote_ident("target"),
            quote_ident("batch_id"),
            quote_ident(FINGERPRINT),
            quote_ident("target"),
            quote_ident("batch_id"),
            quote_ident("target"),
        )
    }

    /// The recorded counts and fingerprint of `($1 resolved, $2)`.
    fn replay_sql(&self) -> String {
        let mut counts: Vec<String> = COUNTS.iter().map(|c| quote_ident(c)).collect();
        counts.push(quote_ident(FINGERPRINT));
        format!(
            "SELECT {} FROM {} WHERE {} = {RESOLVED_TARGET} AND {} = $2",
            counts.join(", "),
            self.qualified_name(),
            quote_ident("target"),
            quote_ident("batch_id"),
        )
    }

    /// Records the counts (`$3`...) on the claimed row `($1, $2)`.
    fn record_sql(&self) -> String {
        let sets: Vec<String> =
            COUNTS.iter().enumerate().map(|(i, c)| format!("{} = ${}", quote_ident(c), i + 3)).collect();
        format!(
            "UPDATE {} SET {}, {} = now() WHERE {} = $1 AND {} = $2",
            self.qualified_name(),
            sets.join(", "),
            quote_ident("recorded_at"),
            quote_ident("target"),
            quote_ident("batch_id"),
        )
    }
}

/// The count columns, in [`Report`] order.
const COUNTS: [&str; 5] = ["offered", "inserted", "updated", "unchanged", "skipped"];

/// The column that records what batch an id was claimed for ([`Fingerprint`]).
const FINGERPRINT: &str = "fingerprint";

/// The longest batch id, in bytes (the ledger's primary key must hold it).
pub(crate) const MAX_BATCH_ID: usize = 512;

/// Refuses, before anything is sent, a batch id the ledger cannot hold.
pub(crate) fn check_batch_id(model: &Model, batch_id: &str) -> Result<(), Error> {
    let why = if batch_id.is_empty() {
        "is empty: a batch id names the batch (an API page, a file offset)".to_owned()
    } else if batch_id.contains('\0') {
        "contains a NUL byte, which PostgreSQL text cannot hold".to_owned()
    } else if batch_id.len() > MAX_BATCH_ID {
        format!("is {} bytes long; at most {MAX_BATCH_ID} are allowed (hash a longer name)", batch_id.len())
    } else {
        return Ok(());
    };
    let shown: String = batch_id.chars().take(40).collect();
    Err(Error::Usage { model: model.struct_name(), message: format!("batch id {shown:?} {why}") })
}

/// `$1` (the target as the model writes it) resolved to `schema.table`, so
/// that the same table reached through different `search_path`s has one name.
const RESOLVED_TARGET: &str = "coalesce((SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid = pg_catalog.to_regclass($1)), $1)";

/// The outcome of claiming a batch id.
pub(crate) enum Claim {
    /// The id is ours: the resolved target to record the counts under.
    Claimed(String),
    /// The id was recorded by an earlier call: its counts.
    Replay(Report),
}

fn ledger_error<'a>(model: &'a Model, ledger: &'a Ledger) -> impl Fn(tokio_postgres::Error) -> Error + 'a {
    move |source| {
        // The ledger table or its schema is missing, or the table lacks a
        // column this version records (made by an earlier version): say how
        // to create or upgrade it.
        if matches!(
            source.code(),
            Some(&SqlState::UNDEFINED_TABLE | &SqlState::INVALID_SCHEMA_NAME | &SqlState::UNDEFINED_COLUMN)
        ) {
            return Error::LedgerMissing { model: model.struct_name(), ledger: ledger.qualified_name(), source };
        }
        Error::database(model, Step::Ledger, source)
    }
}

/// Claims `batch_id` for the model's table, inside the call's transaction.
pub(crate) async fn claim(
    client: &Client,
    model: &'static Model,
    ledger: &Ledger,
    batch_id: &str,
    fingerprint: &Fingerprint,
) -> Result<Claim, Error> {
    let target = crate::sql::plan(model).target_regclass.as_str();
    let fingerprint = fingerprint.text(model);
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] =
        [(&target, Type::TEXT), (&batch_id, Type::TEXT), (&fingerprint, Type::TEXT)];
    // The row found taken may be deleted before it is read (a cleanup job):
    // then claim again.
    for _ in 0..3 {
        let claimed = client.query_typed(&ledger.claim_sql(), &params).await.map_err(ledger_error(model, ledger))?;
        if let Some(row) = claimed.first() {
            return Ok(Claim::Claimed(row.get(0)));
        }
        let recorded =
            client.query_typed(&ledger.replay_sql(), &params[..2]).await.map_err(ledger_error(model, ledger))?;
        if let Some(row) = recorded.first() {
            // (A row recorded before fingerprints were kept has none.)
            let recorded: Option<String> = row.get(COUNTS.len());
            if let Some(recorded) = recorded.filter(|r| *r != fingerprint) {
                return Err(Error::BatchIdReused {
                    batch_id: batch_id.to_owned(),
                    ledger: ledger.qualified_name(),
                    recorded,
                    offered: fingerprint,
                });
            }
            let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
            return Ok(Claim::Replay(Report {
                offered: n(0),
                inserted: n(1),
                updated: n(2),
                unchanged: n(3),
                skipped: n(4),
                replayed: true,
                returned: (),
            }));
        }
    }
    Err(Error::Usage {
        model: model.struct_name(),
        message: format!("batch id {batch_id:?} was taken in {} but its row kept vanishing", ledger.qualified_name()),
    })
}

/// Records the call's counts on the claimed row.
pub(crate) async fn record(
    client: &Client,
    model: &'static Model,
    ledger: &Ledger,
    target: &str,
    batch_id: &str,
    report: &Report,
) -> Result<(), Error> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let counts = [n(report.offered), n(report.inserted), n(report.updated), n(report.unchanged), n(report.skipped)];
    let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> =
        vec![(&target, Type::TEXT), (&batch_id, Type::TEXT)];
    params.extend(counts.iter().map(|c| (c as &(dyn tokio_postgres::types::ToSql + Sync), Type::INT8)));
    client.query_typed(&ledger.record_sql(), &params).await.map_err(ledger_error(model, ledger))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_ddl_quotes_every_name() {
        let ledger = Ledger::new(r#"bat"ches"#).in_schema("my schema");
        let ddl = ledger.migration_statements();
        assert_eq!(ddl[0], r#"CREATE SCHEMA IF NOT EXISTS "my schema""#);
        assert!(ddl[1].starts_with(r#"CREATE TABLE IF NOT EXISTS "my schema"."bat""ches" ("target" text NOT NULL, "batch_id" text NOT NULL, "offered" bigint NOT NULL DEFAULT 0"#), "{}", ddl[1]);
        assert!(
            ddl[1]
                .ends_with(r#""recorded_at" timestamptz NOT NULL DEFAULT now(), "fingerprint" text, PRIMARY KEY ("target", "batch_id"))"#),
            "{}",
            ddl[1]
        );
        assert_eq!(ddl[2], r#"ALTER TABLE "my schema"."bat""ches" ADD COLUMN IF NOT EXISTS "fingerprint" text"#);
        assert_eq!(Ledger::default().migration_statements().len(), 2);
        assert_eq!(Ledger::default().qualified_name(), r#""bulk_batches""#);
    }

    #[test]
    fn claim_replay_and_record_take_values_only_as_parameters() {
        let ledger = Ledger::default();
        let claim = ledger.claim_sql();
        assert!(claim.contains(r#"ON CONFLICT ("target", "batch_id") DO NOTHING RETURNING "target""#), "{claim}");
        assert!(claim.contains("to_regclass($1)") && claim.contains("$2, $3)"), "{claim}");
        let record = ledger.record_sql();
        assert!(record.starts_with(r#"UPDATE "bulk_batches" SET "offered" = $3, "inserted" = $4, "updated" = $5, "unchanged" = $6, "skipped" = $7, "recorded_at" = now()"#), "{record}");
        assert!(ledger.replay_sql().starts_with(
            r#"SELECT "offered", "inserted", "updated", "unchanged", "skipped", "fingerprint" FROM "bulk_batches""#
        ));
    }

    #[test]
    fn fingerprints_tell_batches_apart_and_stay_the_same() {
        let of = |rows: &[&[u8]]| {
            let mut f = Fingerprint::new();
            rows.iter().for_each(|r| f.add_row(r));
            f
        };
        let a = of(&[b"first row", b"second"]);
        assert_eq!(a, of(&[b"first row", b"second"]));
        for other in [of(&[b"second", b"first row"]), of(&[b"first rowsecond"]), of(&[b"first row", b"secone"])] {
            assert_ne!(a, other);
        }
        // Ledgers keep it across processes and versions: it must never change.
        assert_eq!(
            of(&[b"abc", b"0123456789"]).text(&crate::sql::fixtures::MODEL),
            "2 rows of Retweet 7f7e05fcbd59c79d"
        );
    }
}
