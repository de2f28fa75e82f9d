//! The ledger of batch ids, as the API offers it: where the ids of
//! [`Bulk::batch_id`](crate::Bulk::batch_id) are recorded, and its DDL. What
//! a call does with it is the driver's (`call::ledger`).

use std::fmt::Write as _;

use crate::BulkCreateNew;
use crate::error::Error;
use crate::model::{Model, quote_ident, script};

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
/// and order, and for an upsert the same columns set and row kept: see the
/// `fingerprint`); another batch under a used id is
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
        script(self.migration_statements())
    }
}

/// The count columns, in [`Report`] order.
pub(crate) const COUNTS: [&str; 5] = ["offered", "inserted", "updated", "unchanged", "skipped"];

/// The column that records what batch an id was claimed for ([`Fingerprint`]).
pub(crate) const FINGERPRINT: &str = "fingerprint";

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
}
