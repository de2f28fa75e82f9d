//! Insert a batch of rows into PostgreSQL, skipping every row whose unique key
//! is already stored or repeats in the batch, at the speed of binary `COPY`.
//!
//! ```
//! use bulk_runtime::BulkCreateNew;
//! use bulk_runtime::tokio_postgres::{self, NoTls};
//!
//! #[derive(BulkCreateNew)]
//! #[bulk(table = "retweeter", unique(tweet, retweeter))]
//! pub struct Retweet {
//!     pub tweet: i64,
//!     #[bulk(index)]
//!     pub retweeter: i64,
//!     #[bulk(index)]
//!     pub original_author: i64,
//! }
//! # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     # let db = ExampleDb::create("doc_crate").await?;
//!     let database_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres".to_owned());
//!     # let database_url = crate::database_url(); // the test server
//!     let (mut client, connection) = tokio_postgres::connect(&database_url, NoTls).await?;
//!     tokio::spawn(connection);
//!     # db.enter(&client).await?;
//!
//!     // Once, or in a migration file: the table, its unique key and indexes.
//!     client.batch_execute(&Retweet::model().migration_sql()).await?;
//!
//!     let batch = vec![
//!         Retweet { tweet: 1, retweeter: 10, original_author: 100 },
//!         Retweet { tweet: 1, retweeter: 11, original_author: 100 },
//!     ];
//!     let outcome = Retweet::bulk_create_new(&mut client, &batch).await?;
//!     println!("{outcome}"); // "2 of 2 records added"; run again: "0 of 2 records added"
//!     # assert_eq!(outcome.to_string(), "2 of 2 records added");
//!     # let again = Retweet::bulk_create_new(&mut client, &batch).await?;
//!     # assert_eq!(again.to_string(), "0 of 2 records added");
//!     # drop(client);
//!     # db.drop().await?;
//!     Ok(())
//! }
//! ```
//!
//! # How a call works
//! Inside one transaction (its own on a [`Client`](tokio_postgres::Client); a
//! savepoint inside a caller's [`Transaction`](tokio_postgres::Transaction)),
//! after the live table has been checked against the model once per
//! connection:
//!
//! * a batch of 5,000 rows or more (or a shorter one whose array columns
//!   hold 20,000 elements or more) streams with `COPY ... FROM STDIN (FORMAT
//!   binary)` into a session-local scratch table (created once per backend
//!   session), one row at a time from the iterator, so client memory stays
//!   flat; then one `INSERT ... SELECT` drops keys already stored
//!   (anti-join), keeps the first offered row of each other key and inserts
//!   in key order, which keeps concurrent writers deadlock-free without any
//!   table lock;
//! * a shorter batch goes in one round trip: a prepared `INSERT ... SELECT
//!   FROM unnest(...)` with the columns bound as binary arrays (an array
//!   column as its elements, rebuilt into each row's array) and the same
//!   anti-join, rows in key order (sorted on the client for integer, date,
//!   timestamp, boolean, uuid and bytea keys; by `ORDER BY key, position` on
//!   the server otherwise), with the same guarantees;
//! * if another writer stores one of the batch's keys meanwhile, the insert
//!   fails with a unique violation without writing anything, and the call
//!   runs it again on the same rows with `ON CONFLICT (key) DO NOTHING`
//!   (which it uses from the start for batches under 128 rows, and for a
//!   while after such conflicts): the key is skipped and the counts stay
//!   exact;
//! * the [`Report`] counts rows offered, inserted and skipped.
//!
//! Concurrent writers need no retry under `READ COMMITTED`; for serialization
//! failures, deadlocks with the caller's own statements and lost connections,
//! [`retry`] reruns a batch.
//!
//! The supported field types are listed in [`types`]; the attributes in
//! [`BulkCreateNew`](derive@BulkCreateNew).
//!
//! # Beyond the plain call
//! [`BulkCreateNew::bulk`] configures a call with the same protocol and the
//! same guarantees (no table lock, key-ordered writes, exact counts, flat
//! memory on the COPY path, nothing written on error), on both paths:
//!
//! * [`returning_keys`](Bulk::returning_keys): which rows were new (their
//!   batch position, generated id and key), or
//!   [`returning_skipped`](Bulk::returning_skipped): the positions of the
//!   rows that were not;
//! * [`upsert`](Bulk::upsert): update chosen columns of stored keys
//!   ([`Upsert`]), optionally only when a value changed, with inserted,
//!   updated and unchanged counted apart, and repeated keys in a batch kept
//!   first or last ([`Keep`]);
//! * [`run_stream`](Bulk::run_stream): rows from an async `Stream`, with
//!   [`on_progress`](Bulk::on_progress) reports;
//! * [`batch_id`](Bulk::batch_id): exactly-once accounting across retries,
//!   in a [`Ledger`] table written in the call's transaction.
//!
//! ```
//! # use bulk_runtime::{BulkCreateNew, Keep, Ledger, Upsert};
//! # #[derive(BulkCreateNew)]
//! # #[bulk(table = "retweeter", unique(tweet, retweeter))]
//! # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
//! # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let db = ExampleDb::create("doc_beyond").await?;
//! # let client = &mut db.connect().await?;
//! # client.batch_execute(&Retweet::model().migration_sql()).await?;
//! # client.batch_execute(&Ledger::of::<Retweet>().migration_sql()).await?;
//! # Retweet::bulk_create_new(client, [Retweet { tweet: 1, retweeter: 10, original_author: 100 }]).await?;
//! # let batch = vec![
//! #     Retweet { tweet: 1, retweeter: 10, original_author: 101 },
//! #     Retweet { tweet: 1, retweeter: 11, original_author: 100 },
//! # ];
//! let report = Retweet::bulk(client)
//!     .upsert(Upsert::set([Retweet::columns().original_author]).only_if_changed().keep(Keep::Last))
//!     .batch_id("poll 42")
//!     .run(&batch)
//!     .await?;
//! println!("{} new, {} updated, {} unchanged", report.inserted, report.updated, report.unchanged);
//! # assert_eq!((report.inserted, report.updated, report.unchanged), (1, 1, 0));
//! # db.drop().await?;
//! # Ok(()) }
//! ```
//!
//! # Pools
//! With the cargo feature `deadpool`, a deadpool-postgres pooled object is a
//! [`Connection`] as it is (`T::bulk_create_new(&mut conn, rows)`,
//! `T::bulk(&mut conn)`), and so is its transaction; with `bb8`, a bb8
//! `PooledConnection` of bb8-postgres's `PostgresConnectionManager<Tls>`
//! (its transactions are tokio-postgres [`Transaction`](tokio_postgres::Transaction)s).
//! See [`Connection`]'s implementations for examples.
//!
//! # Partitioned and distributed tables
//! A target partitioned natively by part of its unique key (PostgreSQL
//! requires a unique key of a partitioned table to contain the partition
//! key) works with every call; this is tested on PostgreSQL 15 with a hash
//! partitioned table, on both paths. So does a Citus hash-distributed table
//! whose distribution column is part of the unique key, and a Citus
//! reference table: the schema check finds out from Citus's metadata, and
//! the statements then take Citus's dialect (`ON CONFLICT` over one row per
//! key, counts from `RETURNING`; the plain call's short batches as one
//! multi-row `VALUES` statement, counted from its tag, which Citus sums
//! from the shards'); tested on Citus 13.2 (see the README's
//! section "Partitioned and sharded tables").
//!
//! # Inside the crate
//! Every call, plain or configured, runs one driver (`call`): it reads the
//! first rows, picks the path (`call::arrays` for a short batch, `call::copy`
//! for a long one), runs the attempts (`call::form`: the plain insert, then
//! `ON CONFLICT` after a conflict, only `ON CONFLICT` on Citus; a forgotten
//! prepared statement prepared again), and wraps them in the call's transaction or savepoint with the
//! ledger's claim and record. What a caller configures and gets back lives
//! in `api` (the builder, [`Report`], [`Ledger`]), which imports nothing from
//! the driver; values are encoded in `wire`; every statement's text is
//! assembled in `sql` from one module of fragments, in the dialect the
//! schema check found (PostgreSQL's or Citus's), and a model's statements
//! are built once per process. The README's "The workspace" maps every
//! module.

// The derive's code names `::bulk_runtime`; unit tests derive models too.
#[cfg(test)]
extern crate self as bulk_runtime;

mod api;
mod call;
mod connection;
mod contention;
mod error;
mod model;
mod repeats;
pub mod retry;
mod schema;
mod scope;
mod sql;
mod statements;
pub mod types;
mod wire;

use std::borrow::Borrow;
use std::future::Future;

pub use api::{
    BoxError, Bulk, CreateNew, FromKey, Keep, Ledger, Mode, NewRow, Progress, Report, ReturningKeys, ReturningKeysWith,
    ReturningSkipped, UpdateColumn, Upsert, Upserting,
};
pub use connection::Connection;
pub use error::{Error, SchemaProblem, Step};
pub use model::{CitusTable, Column, Model, quote_ident};
pub use types::{BulkColumn, BulkValue, NonNullColumn, NonOptionColumn, PgType, ValueError};

/// Typed JSON for a `jsonb` column: `Json(value)` stores any
/// `T: serde::Serialize + Debug`, and reads back as `Json<T>` for
/// `T: serde::Deserialize` (tokio-postgres's wrapper, re-exported).
#[cfg(feature = "json")]
pub use tokio_postgres::types::Json;

/// The tokio-postgres this crate is built on, re-exported: connect with
/// `bulk_runtime::tokio_postgres` and the [`Client`](tokio_postgres::Client)
/// or [`Transaction`](tokio_postgres::Transaction) you pass to a bulk call is
/// always of the version the call takes, without a direct dependency.
///
/// A direct `tokio-postgres = "0.7"` dependency works too (cargo unifies it
/// with this one); add it only for tokio-postgres features this crate does
/// not enable.
pub use tokio_postgres;

/// Derives [`BulkCreateNew`](trait@BulkCreateNew) for a struct with named fields.
///
/// # Attributes
///
/// On the struct, in `#[bulk(...)]`:
///
/// | attribute | meaning | default |
/// | --- | --- | --- |
/// | `unique(field, ...)` | the fields forming the unique key (required) | |
/// | `table = "name"` | the table name | the struct name in snake_case |
/// | `schema = "name"` | the schema | none: the connection's `search_path` |
/// | `id = "name"` | name of the surrogate `bigint` identity primary key the DDL adds | `id = "id"` |
/// | `id = false` | no surrogate key in the DDL | |
/// | `nulls_not_distinct` | NULLs in the key compare equal (needed for `Option` key fields; PostgreSQL 15+) | NULLs distinct |
/// | `distribute_by(field)` | on Citus, the migration hash-distributes the table by this field's column (a stored field of the unique key; with the surrogate id the primary key becomes `(id, column)`) | a plain table |
/// | `reference_table` | on Citus, the migration makes the table a reference table (not with `distribute_by`) | a plain table |
///
/// `distribute_by` and `reference_table` shape only the DDL of
/// [`Model::migration_sql`] ([`Model::citus_table`] tells which was chosen):
/// after the table and its indexes it adds a `DO` block that calls Citus's
/// `create_distributed_table` or `create_reference_table` when the `citus`
/// extension is installed and the table is not distributed yet. The same
/// script runs unchanged on plain PostgreSQL, and again on Citus.
///
/// On a field, in `#[bulk(...)]`:
///
/// | attribute | meaning | default |
/// | --- | --- | --- |
/// | `rename = "name"` | the column name | the field name |
/// | `index` | add a plain index on the column in the DDL | no index |
/// | `sql_type = "type"` | the column type written in the DDL (e.g. `"varchar(40)"`) | from the Rust type |
/// | `skip` | the field is not stored | stored |
///
/// Names are used as written (quoted in SQL), must be non-empty and at most
/// 63 bytes. Every mistake is a compile error on its span.
pub use bulk_derive::BulkCreateNew;

/// Derives the column traits ([`BulkColumn`] and tokio-postgres's `ToSql` and
/// `FromSql`) for a type of your own, so a model can have a field of it.
///
/// - **An enum of unit variants** is a PostgreSQL enum: each variant is sent
///   as its label (the binary form of an enum value is its label's text), the
///   column has the enum's type, and it can be part of the unique key. The
///   type is not created for you: run [`PgEnum::create_type_sql`] once (or
///   write it into a migration) before the table's DDL. The client never
///   sorts enum keys itself: PostgreSQL orders an enum by declaration order,
///   not by label.
/// - **A newtype struct** (`struct UserId(i64);`) is stored as the one field
///   it wraps: the same column type, the same checks, the same key rules
///   (`Option<UserId>` for a nullable column). The wrapped type must be a
///   supported column type (and `FromSql` for reading it back, which every
///   owned supported type is).
///
/// # Attributes
///
/// | where | attribute | meaning | default |
/// | --- | --- | --- | --- |
/// | on the enum | `type = "name"` | the PostgreSQL enum type (lowercase, optionally `schema.name`) | the enum's name in snake_case |
/// | on a variant | `rename = "label"` | the variant's label | the variant's name in snake_case |
///
/// A newtype takes no attributes. Generic types are not supported.
///
/// ```
/// use bulk_runtime::{BulkCreateNew, BulkType, PgEnum};
/// # use bulk_runtime::tokio_postgres::{self, NoTls};
///
/// #[derive(BulkType, Debug, Clone, Copy, PartialEq)]
/// #[bulk(type = "mood")]
/// enum Mood {
///     Happy,
///     #[bulk(rename = "so-so")]
///     SoSo,
/// }
///
/// #[derive(BulkType, Debug, Clone, Copy, PartialEq)]
/// struct UserId(i64);
///
/// #[derive(BulkCreateNew)]
/// #[bulk(table = "feeling", unique(person, mood))]
/// struct Feeling {
///     person: UserId,
///     mood: Mood,
///     note: Option<UserId>,
/// }
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = ExampleDb::create("doc_bulk_type").await?;
/// # let (mut client, connection) = tokio_postgres::connect(&database_url(), NoTls).await?;
/// # tokio::spawn(connection);
/// # db.enter(&client).await?;
/// assert_eq!(Mood::create_type_sql(), "CREATE TYPE mood AS ENUM ('happy', 'so-so')");
/// client.batch_execute(&Mood::create_type_sql()).await?;
/// client.batch_execute(&Feeling::model().migration_sql()).await?;
/// let rows = [
///     Feeling { person: UserId(1), mood: Mood::Happy, note: None },
///     Feeling { person: UserId(1), mood: Mood::SoSo, note: Some(UserId(7)) },
/// ];
/// let outcome = Feeling::bulk_create_new(&mut client, &rows).await?;
/// assert_eq!(outcome.inserted, 2);
/// let row = client.query_one("SELECT person, mood FROM feeling WHERE mood = 'so-so'", &[]).await?;
/// assert_eq!((row.get::<_, UserId>(0), row.get::<_, Mood>(1)), (UserId(1), Mood::SoSo));
/// # drop(client);
/// # db.drop().await?;
/// # Ok(())
/// # }
/// ```
pub use bulk_derive::BulkType;

/// A Rust enum stored as a PostgreSQL enum; implemented by
/// [`#[derive(BulkType)]`](macro@BulkType) on an enum.
pub trait PgEnum {
    /// The PostgreSQL type name, as `#[bulk(type = "...")]` gives it.
    const TYPE_NAME: &'static str;
    /// The labels, in declaration order (PostgreSQL sorts by this order).
    const LABELS: &'static [&'static str];

    /// `CREATE TYPE name AS ENUM ('label', ...)`, for a migration.
    fn create_type_sql() -> String {
        let labels: Vec<String> = Self::LABELS.iter().map(|l| format!("'{}'", l.replace('\'', "''"))).collect();
        format!("CREATE TYPE {} AS ENUM ({})", Self::TYPE_NAME, labels.join(", "))
    }
}

/// A model struct that can be bulk-inserted. Implement it with
/// `#[derive(BulkCreateNew)]`.
pub trait BulkCreateNew: Sized + Sync {
    /// The row's values in column order, for binary COPY.
    #[doc(hidden)]
    type CopyValues<'r>: AsRef<[&'r dyn BulkValue]>
    where
        Self: 'r;

    /// The model's unique key as a tuple of owned values, in the order of
    /// `#[bulk(unique(...))]`: what [`returning_keys`](Bulk::returning_keys)
    /// returns for each new row. For `unique(tweet, retweeter)` on `i64`
    /// fields, `(i64, i64)`; a borrowed text field reads as `String`, a
    /// nullable one as `Option<_>`.
    type Key: FromKey;

    /// Typed handles of the model's columns outside the unique key, one
    /// field per stored field, for [`Upsert::set`]: a misspelt field or a key
    /// field is a compile error. Made by [`columns`](Self::columns).
    type Columns;

    /// The handles of the model's updatable columns.
    ///
    /// ```
    /// # use bulk_runtime::{BulkCreateNew, Upsert};
    /// # #[derive(BulkCreateNew)]
    /// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
    /// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
    /// let upsert = Upsert::set([Retweet::columns().original_author]).only_if_changed();
    /// ```
    fn columns() -> Self::Columns;

    /// The table, columns and unique key of the model.
    fn model() -> &'static Model;

    /// The row's values in column order, for binary COPY.
    #[doc(hidden)]
    fn copy_values(&self) -> Self::CopyValues<'_>;

    /// Inserts every row of `rows` whose unique key is not stored yet and
    /// skips the others (already stored, or repeated earlier in the batch:
    /// the first offered row of a key wins).
    ///
    /// `conn` is a [`Client`](tokio_postgres::Client) (the call commits its own
    /// transaction) or a [`Transaction`](tokio_postgres::Transaction) (the
    /// call runs in a savepoint; the caller commits or rolls back), or a
    /// pooled connection or its transaction (see [`Connection`]). `rows` is
    /// any iterator of rows or references to rows; it is consumed lazily.
    ///
    /// The call's future is `Send` when the rows and their iterator are, so
    /// it runs in `tokio::spawn`, also on rows mapped from borrowed records
    /// by a closure (`api.iter().map(|r| Retweet { ... })`). `It` and `R`,
    /// the iterator and row types of `I`, are inferred; they are parameters
    /// of their own because a future that names them as `I::IntoIter` and
    /// `I::Item` is not `Send` for such a closure ("implementation of
    /// `FnOnce` is not general enough": the compiler would have to prove the
    /// closure's `Iterator` impl for every lifetime).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for a value refused on the client,
    /// [`Error::SchemaMismatch`] when the live table does not fit the model,
    /// [`Error::Database`] for anything PostgreSQL reports. Nothing of the
    /// batch is written when an error is returned.
    fn bulk_create_new<C, I, It, R>(conn: &mut C, rows: I) -> impl Future<Output = Result<Report, Error>>
    where
        C: Connection + ?Sized,
        I: IntoIterator<IntoIter = It, Item = R>,
        It: Iterator<Item = R>,
        R: Borrow<Self>,
    {
        call::create_new::<Self, C, I, It, R>(conn, rows)
    }

    /// A configurable bulk call on `conn` (a [`Client`](tokio_postgres::Client)
    /// or a [`Transaction`](tokio_postgres::Transaction), as for
    /// [`bulk_create_new`](Self::bulk_create_new)): return the new rows' keys
    /// or the skipped rows' positions, upsert, read a stream, report
    /// progress, record a batch id. See [`Bulk`].
    ///
    /// `T::bulk(conn).run(rows)` without options is exactly
    /// [`bulk_create_new`](Self::bulk_create_new).
    ///
    /// ```
    /// # use bulk_runtime::BulkCreateNew;
    /// # #[derive(BulkCreateNew)]
    /// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
    /// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
    /// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db = ExampleDb::create("doc_bulk").await?;
    /// # let client = &mut db.connect().await?;
    /// # client.batch_execute(&Retweet::model().migration_sql()).await?;
    /// # let rt = |tweet, retweeter| Retweet { tweet, retweeter, original_author: 100 };
    /// # Retweet::bulk_create_new(client, [rt(1, 10)]).await?;
    /// # let batch = vec![rt(1, 10), rt(1, 11), rt(1, 11)];
    /// let report = Retweet::bulk(client).returning_skipped().run(&batch).await?;
    /// for i in &report.returned {
    ///     println!("row {i} of the batch was already stored or repeated");
    /// }
    /// # assert_eq!(report.returned, [0, 2]);
    /// # db.drop().await?;
    /// # Ok(()) }
    /// ```
    fn bulk<C>(conn: &mut C) -> Bulk<'_, Self, C>
    where
        C: Connection + ?Sized,
    {
        Bulk::new(conn)
    }
}

/// Checks that the live table matches the model `T` and returns every
/// difference found (an empty list when it matches).
///
/// The bulk call runs this check itself the first time a backend session
/// sees the model; call it directly to check a deployment up front.
///
/// # Errors
/// A database error from the catalog queries.
pub async fn verify_schema<T: BulkCreateNew>(
    client: &tokio_postgres::Client,
) -> Result<Vec<SchemaProblem>, tokio_postgres::Error> {
    schema::problems(client, T::model()).await
}

/// Hooks for this workspace's tests and benchmarks; not part of the API.
#[doc(hidden)]
pub mod __test_hooks {
    use crate::model::Model;

    pub use crate::call::{
        CITUS_VALUES_ROWS, FIRST_CALL_VALUES_UP_TO, PLAIN_FROM, SMALL_BATCH, SMALL_BATCH_ARRAY_ELEMENTS,
    };

    /// PostgreSQL's hash of a `bigint`, `integer` and `smallint` value
    /// (`hashint8`, `hashint4`, `hashint2`), as the library computes it to
    /// group a batch by Citus shard.
    pub fn citus_hashes(value: i64) -> (i32, Option<i32>, Option<i32>) {
        use crate::call::shards::{hash_int8, hash_uint32};
        let int4 = i32::try_from(value).ok().map(|v| hash_uint32(v as u32) as i32);
        let int2 = i16::try_from(value).ok().map(|v| hash_uint32(i32::from(v) as u32) as i32);
        (hash_int8(value) as i32, int4, int2)
    }

    /// Batches of at least this many rows go to Citus as one `VALUES`
    /// statement per run of shard ids.
    pub const CITUS_GROUPED_FROM: usize = crate::call::shards::GROUPED_FROM;

    /// The backend process id the library reads from `client` to tell
    /// connections apart (see `statements::Identity`).
    pub fn connection_process_id(client: &tokio_postgres::Client) -> i32 {
        crate::statements::Identity::of(client).process_id()
    }

    /// The protocol's SQL for a model, for the benchmark's and the tests'
    /// `EXPLAIN` runs.
    #[derive(Debug, Clone, Copy)]
    pub struct ProtocolSql {
        /// `CREATE TEMP TABLE IF NOT EXISTS` of the scratch table.
        pub create_scratch: &'static str,
        /// `COPY` into it.
        pub copy: &'static str,
        /// The insert's plain form, for a batch that may repeat keys.
        pub insert_plain: &'static str,
        /// The insert's plain form, for a batch without repeated keys.
        pub insert_plain_distinct_keys: &'static str,
        /// The insert's `ON CONFLICT` form.
        pub insert_on_conflict: &'static str,
    }

    /// The protocol's SQL for `model`.
    pub fn protocol_sql(model: &'static Model) -> ProtocolSql {
        let plan = crate::sql::plan(model);
        ProtocolSql {
            create_scratch: &plan.create_scratch,
            copy: &plan.copy,
            insert_plain: &plan.insert_plain,
            insert_plain_distinct_keys: &plan.insert_plain_distinct_keys,
            insert_on_conflict: &plan.insert,
        }
    }
}

/// What the derive's generated code names, and nothing else; not part of
/// the API.
#[doc(hidden)]
pub mod __private {
    /// The handle of a model's column, for the derived `columns()`.
    pub const fn update_column(model: &'static str, field: &'static str) -> UpdateColumn {
        UpdateColumn::new(model, field)
    }

    pub use crate::PgEnum;
    pub use crate::api::UpdateColumn;
    pub use crate::model::{CitusTable, Column, ColumnSpec, Model, ModelSpec};
    pub use crate::types::{BulkColumn, BulkValue, KeyColumn, NonNullColumn, NonOptionColumn, PgType, ValueError};
    use tokio_postgres::types::Kind;
    pub use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

    /// The boxed error `ToSql` and `FromSql` return.
    pub type SqlError = Box<dyn std::error::Error + Sync + Send>;

    /// `ToSql::to_sql_checked` of a derived type: `value` as `ty`, or the
    /// error of a type it does not accept.
    ///
    /// # Errors
    /// [`WrongType`](tokio_postgres::types::WrongType) for a type `T` does
    /// not accept, or the error of its `to_sql`.
    pub fn checked_to_sql<T: ToSql>(value: &T, ty: &Type, out: &mut BytesMut) -> Result<IsNull, SqlError> {
        if !T::accepts(ty) {
            return Err(Box::new(tokio_postgres::types::WrongType::new::<T>(ty.clone())));
        }
        value.to_sql(ty, out)
    }

    /// A `BytesMut`, as `ToSql::to_sql` takes it.
    pub use bytes::BytesMut;

    /// `__Bound<'a, T>: IsNonOption` exactly when `T: NonOptionColumn`: a
    /// derived newtype's bound on its field type names a lifetime through
    /// it, so that an unmet bound leaves the impl out instead of failing to
    /// compile (a bound without parameters must hold).
    pub struct __Bound<'a, T: ?Sized>(core::marker::PhantomData<&'a T>);
    /// See [`__Bound`].
    pub trait IsNonOption {}
    impl<T: NonOptionColumn + ?Sized> IsNonOption for __Bound<'_, T> {}
    /// See [`__Bound`].
    pub trait IsNonNull {}
    impl<T: NonNullColumn + ?Sized> IsNonNull for __Bound<'_, T> {}

    /// Whether a derived enum's `ToSql`/`FromSql` takes values of `ty`: its
    /// own enum type (by unqualified name) or text.
    pub fn enum_accepts(ty: &Type, type_name: &str) -> bool {
        let unqualified = type_name.rsplit('.').next().unwrap_or(type_name);
        match ty.kind() {
            Kind::Enum(_) => ty.name() == unqualified,
            _ => *ty == Type::TEXT || *ty == Type::VARCHAR,
        }
    }

    /// The error of a derived enum's `FromSql` for a label it does not have.
    pub fn unknown_label(raw: &[u8], rust_name: &str) -> SqlError {
        format!("`{rust_name}` has no variant for the label {:?}", String::from_utf8_lossy(raw)).into()
    }

    /// Asserts at compile time that a unique key field is not nullable.
    #[inline(always)]
    pub const fn assert_non_null<T: NonNullColumn + ?Sized>() {}

    /// A key type, or an `Option` of one: what a key field of a
    /// `nulls_not_distinct` model may be.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be part of the unique key",
        label = "a unique key field must have a key column type or an `Option` of one",
        note = "arrays (`Vec<T>` other than `Vec<u8>`) are not supported in a key"
    )]
    pub trait NullableKey {}
    impl<T: NonNullColumn> NullableKey for T {}
    impl<T: NonNullColumn> NullableKey for Option<T> {}

    /// Asserts at compile time that a key field of a `nulls_not_distinct`
    /// model is a key type or an `Option` of one.
    #[inline(always)]
    pub const fn assert_nullable_key<T: NullableKey + ?Sized>() {}
}
