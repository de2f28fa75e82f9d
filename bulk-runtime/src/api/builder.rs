//! The configurable bulk call: [`BulkCreateNew::bulk`] returns a [`Bulk`]
//! builder; choose what the call returns, then run it on an iterator or a
//! stream of rows (the `run` methods are the driver's, in `call`).

use std::fmt;
use std::marker::PhantomData;

use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

use super::ledger::Ledger;
use super::report::Report;
use crate::BulkCreateNew;
use crate::connection::Connection;
use crate::error::{Error, type_name};
use crate::model::{Column, Model};

/// The error a stream of rows may yield.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the call's statements do.
#[derive(Debug)]
pub enum Kind {
    /// Insert new keys, count them (the plain call).
    CreateNew,
    /// Insert new keys, return their positions, ids and keys.
    Keys,
    /// Insert new keys, return their positions.
    Positions,
    /// Insert new keys, then update stored ones.
    Upsert(UpdateSet),
}

/// Which offered row of a repeated key is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keep {
    /// The first offered row of a key wins (the plain call's rule).
    First,
    /// The last offered row of a key wins.
    Last,
}

/// The update part of an upsert, checked against the model.
#[derive(Debug, Clone)]
pub struct UpdateSet {
    /// The columns set from the offered row.
    pub columns: Vec<&'static Column>,
    /// Only rows whose value of one of `columns` differs are updated.
    pub only_if_changed: bool,
    /// Which offered row of a repeated key is written.
    pub keep: Keep,
}

/// One row inserted by a [`returning_keys`](Bulk::returning_keys) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow<K> {
    /// The row's position in the batch (0-based): the row that was kept for
    /// its key (the first offered).
    pub index: usize,
    /// The generated id: the value of the model's id column (`#[bulk(id =
    /// ...)]`, `id` by default) when the table has it with an integer type;
    /// `None` otherwise (`id = false`, or a table made without it).
    pub id: Option<i64>,
    /// The row's unique key, in the order of `#[bulk(unique(...))]`.
    pub key: K,
}

/// A Rust value the unique key of an inserted row is read into: a tuple with
/// one element per key column, in the order of `#[bulk(unique(...))]`, each
/// an owned type that reads the column's type (`i64`, `String`, `Vec<u8>`,
/// `uuid::Uuid`, ..., `Option<T>` for a nullable key column). A one-column
/// key is a one-tuple: `(i64,)`. Tuples of up to 8 elements.
///
/// The tuple is checked against the model before anything is sent, so a
/// mismatch is an [`Error::Usage`], never a half-done call.
pub trait FromKey: Sized + Send {
    /// Checks the tuple against the key columns: `(column, type, nullable)`.
    #[doc(hidden)]
    fn __check(columns: &[(&str, Type, bool)]) -> Result<(), String>;
    /// Reads the key from `row`, whose key columns start at `at`.
    #[doc(hidden)]
    fn __read(row: &Row, at: usize) -> Result<Self, tokio_postgres::Error>;
}

fn check_element<V: for<'a> FromSql<'a>>(column: &(&str, Type, bool)) -> Result<(), String> {
    let (name, ty, nullable) = column;
    if !V::accepts(ty) {
        return Err(format!("key column `{name}` is {ty}, which `{}` cannot be read from", type_name::<V>()));
    }
    if *nullable && V::from_sql_null(ty).is_err() {
        return Err(format!("key column `{name}` may be NULL: read it as `Option<{}>`", type_name::<V>()));
    }
    Ok(())
}

macro_rules! from_key_tuple {
    ($n:literal: $($t:ident $i:tt),+) => {
        impl<$($t: for<'a> FromSql<'a> + Send),+> FromKey for ($($t,)+) {
            fn __check(columns: &[(&str, Type, bool)]) -> Result<(), String> {
                if columns.len() != $n {
                    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
                    return Err(format!(
                        "the unique key ({}) has {} columns but the key type `{}` has {}",
                        names.join(", "), columns.len(), type_name::<Self>(), $n
                    ));
                }
                $(check_element::<$t>(&columns[$i])?;)+
                Ok(())
            }
            fn __read(row: &Row, at: usize) -> Result<Self, tokio_postgres::Error> {
                Ok(($(row.try_get::<_, $t>(at + $i)?,)+))
            }
        }
    };
}

from_key_tuple!(1: A 0);
from_key_tuple!(2: A 0, B 1);
from_key_tuple!(3: A 0, B 1, C 2);
from_key_tuple!(4: A 0, B 1, C 2, D 3);
from_key_tuple!(5: A 0, B 1, C 2, D 3, E 4);
from_key_tuple!(6: A 0, B 1, C 2, D 3, E 4, F 5);
from_key_tuple!(7: A 0, B 1, C 2, D 3, E 4, F 5, G 6);
from_key_tuple!(8: A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// What an [`upsert`](Bulk::upsert) does with a key that is already stored.
///
/// ```
/// use bulk_runtime::{Keep, Upsert};
///
/// let upsert = Upsert::columns(["original_author"]).only_if_changed().keep(Keep::First);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert {
    columns: Option<Vec<String>>,
    /// The model whose [`UpdateColumn`] handles named the columns.
    model: Option<&'static str>,
    only_if_changed: bool,
    keep: Keep,
}

/// A typed handle of one of a model's columns outside its unique key, from
/// the derived [`BulkCreateNew::columns`]: `Retweet::columns().original_author`.
/// A misspelt field, or a field of the key, is a compile error ("no field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateColumn {
    model: &'static str,
    field: &'static str,
}

impl UpdateColumn {
    /// The handle of `field` of the model named `model` (the derive's).
    pub(crate) const fn new(model: &'static str, field: &'static str) -> UpdateColumn {
        UpdateColumn { model, field }
    }

    /// The Rust field's name.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl Upsert {
    /// Update these columns of a stored row from the offered one, named by
    /// their typed handles ([`BulkCreateNew::columns`]), checked when the
    /// program compiles.
    ///
    /// ```
    /// # use bulk_runtime::{BulkCreateNew, Upsert};
    /// # #[derive(BulkCreateNew)]
    /// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
    /// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
    /// let upsert = Upsert::set([Retweet::columns().original_author]);
    /// ```
    pub fn set<I>(columns: I) -> Upsert
    where
        I: IntoIterator<Item = UpdateColumn>,
    {
        let mut model = None;
        let mut names = Vec::new();
        for c in columns {
            // Handles of two models cannot fit one call: keep the first
            // model's name, and the other's field as written, which the
            // check then reports.
            if *model.get_or_insert(c.model) == c.model {
                names.push(c.field.to_owned());
            } else {
                names.push(format!("{}::{}", c.model, c.field));
            }
        }
        Upsert { columns: Some(names), model, only_if_changed: false, keep: Keep::Last }
    }

    /// Update these columns of a stored row from the offered one. Name them
    /// by Rust field or by column name; key columns cannot be updated.
    pub fn columns<I>(columns: I) -> Upsert
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Upsert {
            columns: Some(columns.into_iter().map(Into::into).collect()),
            model: None,
            only_if_changed: false,
            keep: Keep::Last,
        }
    }

    /// Update every column that is not part of the unique key.
    pub fn all_columns() -> Upsert {
        Upsert { columns: None, model: None, only_if_changed: false, keep: Keep::Last }
    }

    /// Update a stored row only when one of the chosen columns would change
    /// (`IS DISTINCT FROM`: NULL equals NULL); the others are counted as
    /// [`unchanged`](Report::unchanged) and are not rewritten (no dead tuple,
    /// no trigger).
    #[must_use]
    pub fn only_if_changed(mut self) -> Upsert {
        self.only_if_changed = true;
        self
    }

    /// Which row of a key repeated in the batch is written: [`Keep::Last`]
    /// (the default: rows apply in batch order) or [`Keep::First`].
    #[must_use]
    pub fn keep(mut self, keep: Keep) -> Upsert {
        self.keep = keep;
        self
    }

    /// The update, checked against the model.
    pub(crate) fn resolve(&self, model: &'static Model) -> Result<UpdateSet, Error> {
        let usage = |message: String| Error::Usage { model: model.struct_name(), message };
        if let Some(other) = self.model.filter(|m| *m != model.struct_name()) {
            return Err(usage(format!(
                "upsert: the columns are handles of `{other}`, not of `{}`: use `{}::columns()`",
                model.struct_name(),
                model.struct_name()
            )));
        }
        let is_key = |c: &Column| model.unique_key().any(|k| std::ptr::eq(k, c));
        let mut columns: Vec<&'static Column> = Vec::new();
        match &self.columns {
            None => columns.extend(model.columns().iter().filter(|c| !is_key(c))),
            Some(names) => {
                for name in names {
                    let Some(column) = model.columns().iter().find(|c| c.field() == name || c.name() == name) else {
                        let known: Vec<&str> = model.columns().iter().map(Column::field).collect();
                        return Err(usage(format!(
                            "upsert: `{name}` is not a stored field or column of `{}` (its fields: {})",
                            model.struct_name(),
                            known.join(", ")
                        )));
                    };
                    if is_key(column) {
                        return Err(usage(format!(
                            "upsert: `{name}` is part of the unique key and cannot be updated; \
                             name columns outside the key"
                        )));
                    }
                    if !columns.iter().any(|c| std::ptr::eq(*c, column)) {
                        columns.push(column);
                    }
                }
            }
        }
        if columns.is_empty() {
            return Err(usage(
                "upsert: no column to update (every column of the model is part of its unique key); \
                 use the plain call to skip stored keys"
                    .to_owned(),
            ));
        }
        Ok(UpdateSet { columns, only_if_changed: self.only_if_changed, keep: self.keep })
    }
}

/// Progress of a call, passed to [`on_progress`](Bulk::on_progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows sent to the server so far.
    pub sent: u64,
    /// Rows inserted: 0 until the insert has run, which is after the last
    /// row was sent.
    pub inserted: u64,
    /// Rows updated by an upsert: 0 until it has run.
    pub updated: u64,
    /// This is the last report: the call has committed (or, inside a
    /// caller's transaction, finished).
    pub finished: bool,
}

/// A configured bulk call on model `T`, made by [`BulkCreateNew::bulk`].
///
/// Choose at most one of [`returning_keys`](Self::returning_keys),
/// [`returning_keys_with`](Self::returning_keys_with),
/// [`returning_skipped`](Self::returning_skipped) and
/// [`upsert`](Self::upsert); add [`batch_id`](Self::batch_id) and
/// [`on_progress`](Self::on_progress) to any; then
/// [`run`](Self::run) on an iterator, or [`run_stream`](Self::run_stream) /
/// [`try_run_stream`](Self::try_run_stream) on a stream. Every variant keeps
/// the plain call's guarantees: no table lock, key-ordered writes (no deadlock
/// between overlapping batches), exact counts, flat client memory on the
/// COPY path (except what the caller asks to have returned), nothing
/// written when an error is returned.
///
/// ```
/// # use bulk_runtime::{BulkCreateNew, Upsert};
/// # #[derive(BulkCreateNew)]
/// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
/// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = ExampleDb::create("doc_builder").await?;
/// # let client = &mut db.connect().await?;
/// # client.batch_execute(&Retweet::model().migration_sql()).await?;
/// # let rt = |tweet, retweeter, original_author| Retweet { tweet, retweeter, original_author };
/// # Retweet::bulk_create_new(client, [rt(1, 10, 100), rt(1, 11, 100)]).await?;
/// # let batch = vec![rt(1, 10, 100), rt(1, 11, 101), rt(1, 12, 100), rt(1, 13, 100), rt(1, 13, 100)];
/// // The keys and ids of the rows that were new.
/// let report = Retweet::bulk(client).returning_keys().run(&batch).await?;
/// for new in &report.returned {
///     println!("batch row {} is new: {:?}, id {:?}", new.index, new.key, new.id);
/// }
/// # assert_eq!(report.returned.iter().map(|new| new.index).collect::<Vec<_>>(), [2, 3]);
///
/// # let batch = vec![rt(1, 10, 100), rt(1, 11, 102), rt(1, 20, 100), rt(1, 21, 100), rt(1, 22, 100)];
/// // Insert new keys, update the author of stored ones when it differs.
/// let report = Retweet::bulk(client)
///     .upsert(Upsert::set([Retweet::columns().original_author]).only_if_changed())
///     .run(&batch)
///     .await?;
/// println!("{report}"); // "3 of 5 records added, 1 updated, 1 unchanged"
/// # assert_eq!(report.to_string(), "3 of 5 records added, 1 updated, 1 unchanged");
/// # db.drop().await?;
/// # Ok(()) }
/// ```
#[must_use = "a bulk call does nothing until it is run"]
pub struct Bulk<'a, T, C: ?Sized, M = CreateNew> {
    pub(crate) conn: &'a mut C,
    pub(crate) mode: M,
    pub(crate) batch_id: Option<String>,
    pub(crate) ledger: Option<Ledger>,
    pub(crate) progress: Option<Box<dyn FnMut(Progress) + Send + 'a>>,
    pub(crate) model: PhantomData<fn() -> T>,
}

impl<T, C: ?Sized, M: fmt::Debug> fmt::Debug for Bulk<'_, T, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulk")
            .field("model", &type_name::<T>())
            .field("mode", &self.mode)
            .field("batch_id", &self.batch_id)
            .field("ledger", &self.ledger)
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a, T: BulkCreateNew, C: Connection + ?Sized> Bulk<'a, T, C> {
    pub(crate) fn new(conn: &'a mut C) -> Self {
        Bulk { conn, mode: CreateNew(()), batch_id: None, ledger: None, progress: None, model: PhantomData }
    }

    fn mode<N>(self, mode: N) -> Bulk<'a, T, C, N> {
        let Bulk { conn, mode: _, batch_id, ledger, progress, model } = self;
        Bulk { conn, mode, batch_id, ledger, progress, model }
    }

    /// Also return the inserted rows: each one's position in the batch, its
    /// generated id, and its unique key read as `K` (a tuple, see
    /// [`FromKey`]), in batch order, in [`Report::returned`].
    ///
    /// The list is held in memory (about the size of `K` and 16 bytes per
    /// inserted row); for huge batches use
    /// [`returning_keys_with`](Self::returning_keys_with).
    ///
    /// ```
    /// # use bulk_runtime::BulkCreateNew;
    /// # #[derive(BulkCreateNew)]
    /// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
    /// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
    /// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db = ExampleDb::create("doc_returning_keys").await?;
    /// # let client = &mut db.connect().await?;
    /// # client.batch_execute(&Retweet::model().migration_sql()).await?;
    /// # let rt = |tweet, retweeter, original_author| Retweet { tweet, retweeter, original_author };
    /// # Retweet::bulk_create_new(client, [rt(1, 10, 100)]).await?;
    /// # let batch = vec![rt(1, 10, 100), rt(1, 11, 100), rt(1, 12, 100)];
    /// let report = Retweet::bulk(client).returning_keys().run(&batch).await?;
    /// let new_retweeters: Vec<i64> = report.returned.iter().map(|row| row.key.1).collect();
    /// # assert_eq!(new_retweeters, [11, 12]);
    /// # db.drop().await?;
    /// # Ok(()) }
    /// ```
    pub fn returning_keys(self) -> Bulk<'a, T, C, ReturningKeys<T::Key>> {
        self.mode(ReturningKeys { rows: Vec::new() })
    }

    /// Like [`returning_keys`](Self::returning_keys), with the key read as
    /// another tuple `K` (see [`FromKey`]), e.g. a `numeric` key column as
    /// `String`; checked against the key before anything is sent.
    pub fn returning_keys_as<K: FromKey>(self) -> Bulk<'a, T, C, ReturningKeys<K>> {
        self.mode(ReturningKeys { rows: Vec::new() })
    }

    /// Like [`returning_keys`](Self::returning_keys), but hands each new row
    /// to `f` as it arrives instead of collecting them, so client memory
    /// stays flat for any batch.
    ///
    /// `f` runs before the call's transaction commits: if the call then
    /// returns an error, nothing was written, whatever `f` saw.
    pub fn returning_keys_with<F>(self, f: F) -> Bulk<'a, T, C, ReturningKeysWith<T::Key, F>>
    where
        F: FnMut(NewRow<T::Key>) + Send,
    {
        self.mode(ReturningKeysWith { f, key: PhantomData })
    }

    /// Also return the positions in the batch (0-based, ascending) of the
    /// rows that were *not* inserted, in [`Report::returned`]: their key was
    /// already stored, or repeated earlier in the batch.
    ///
    /// The call keeps one bit per offered row while it runs, and the list.
    pub fn returning_skipped(self) -> Bulk<'a, T, C, ReturningSkipped> {
        self.mode(ReturningSkipped { inserted: Vec::new() })
    }

    /// Insert the rows whose key is new, and update the chosen columns of the
    /// rows whose key is stored ([`Upsert`]); the report splits
    /// [`inserted`](Report::inserted), [`updated`](Report::updated),
    /// [`unchanged`](Report::unchanged) and [`skipped`](Report::skipped)
    /// (repeats of a key in the batch: the kept row is chosen by
    /// [`Upsert::keep`], so repeated keys never fail with SQLSTATE 21000).
    ///
    /// It runs as two statements in one transaction, both in key order: an
    /// `INSERT ... ON CONFLICT (key) DO NOTHING` of the new keys, then an
    /// `INSERT ... ON CONFLICT (key) DO UPDATE SET ...` of the others, so each
    /// count comes from PostgreSQL's own conflict check (concurrent writers
    /// included) and no system column is needed (partitioned tables work).
    pub fn upsert(self, upsert: Upsert) -> Bulk<'a, T, C, Upserting> {
        self.mode(Upserting { upsert })
    }
}

impl<'a, T: BulkCreateNew, C: Connection + ?Sized, M: Mode> Bulk<'a, T, C, M> {
    /// Make the call exactly-once under `batch_id`: the id and the call's
    /// counts are recorded in the [`Ledger`] in the same transaction as the
    /// rows. A later call with the same id (a retry after an ambiguous
    /// `COMMIT`, or a duplicate delivery) writes nothing and returns the
    /// recorded counts, flagged [`replayed`](Report::replayed); two
    /// concurrent calls with the same id insert once.
    ///
    /// The ledger table must exist ([`Ledger::migration_sql`]; without it the
    /// call fails with [`Error::LedgerMissing`], and without its primary
    /// key with [`Error::LedgerKeyMissing`]); by default it is
    /// `bulk_batches` in the model's schema (see [`ledger`](Self::ledger)).
    /// An empty batch is not recorded.
    ///
    /// ```
    /// # use bulk_runtime::BulkCreateNew;
    /// # #[derive(BulkCreateNew)]
    /// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
    /// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
    /// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db = ExampleDb::create("doc_batch_id").await?;
    /// # let client = &mut db.connect().await?;
    /// # client.batch_execute(&Retweet::model().migration_sql()).await?;
    /// # let rt = |tweet, retweeter, original_author| Retweet { tweet, retweeter, original_author };
    /// # client.batch_execute(&bulk_runtime::Ledger::of::<Retweet>().migration_sql()).await?;
    /// # let batch = vec![rt(1, 10, 100), rt(1, 11, 100)];
    /// // The id names the input, e.g. the API page or file offset it came from.
    /// let report = Retweet::bulk(client).batch_id("poll 2024-06-01T12:00 tweet 42").run(&batch).await?;
    /// # assert!(!report.replayed);
    /// # let report = Retweet::bulk(&mut *client).batch_id("poll 2024-06-01T12:00 tweet 42").run(&batch).await?;
    /// if report.replayed {
    ///     println!("already stored by an earlier attempt: {report}");
    /// }
    /// # assert!(report.replayed);
    /// # assert_eq!(report.to_string(), "2 of 2 records added (recorded earlier)");
    /// # db.drop().await?;
    /// # Ok(()) }
    /// ```
    pub fn batch_id(mut self, batch_id: impl Into<String>) -> Self {
        self.batch_id = Some(batch_id.into());
        self
    }

    /// Record batch ids in this ledger table instead of the model's default
    /// ([`Ledger::of`]). Only used with [`batch_id`](Self::batch_id).
    pub fn ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Call `f` as the call progresses: each time a chunk of rows has been
    /// sent to the server (about every 128 KiB, and whenever a stream has no
    /// row ready), then once at the end with the counts and `finished`.
    pub fn on_progress(mut self, f: impl FnMut(Progress) + Send + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }
}

pub(crate) mod private {
    use tokio_postgres::Row;

    use super::Kind;
    use crate::error::Error;
    use crate::model::Model;

    /// The crate-side half of [`Mode`](super::Mode).
    pub trait Run: Send {
        /// The statement kind, checked against the model.
        fn kind(&mut self, model: &'static Model) -> Result<Kind, Error>;
        /// Whether this is the plain call (no returning, no upsert).
        fn is_plain(&self) -> bool {
            false
        }
        /// Whether the returned rows go to the caller's callback as they
        /// arrive, which must run before the commit: the short path's one
        /// statement then runs in a transaction of its own (it would
        /// otherwise commit by itself before the first row is read).
        fn hands_rows_out(&self) -> bool {
            false
        }
        /// One inserted row: its position, id, and the row with its key from `at`.
        /// An error (reading the key) fails the call.
        fn receive(
            &mut self,
            index: usize,
            id: Option<i64>,
            row: &Row,
            at: usize,
        ) -> Result<(), tokio_postgres::Error> {
            let _ = (index, id, row, at);
            Ok(())
        }
    }
}

/// What a [`Bulk`] call returns and how: one of [`CreateNew`],
/// [`ReturningKeys`], [`ReturningKeysWith`], [`ReturningSkipped`],
/// [`Upserting`]. Sealed.
pub trait Mode: private::Run {
    /// The result of the call.
    type Output;
    #[doc(hidden)]
    fn __finish(self, report: Report) -> Self::Output;
}

/// The plain call's mode: insert new keys, skip stored ones. Returns a [`Report`].
#[derive(Debug)]
pub struct CreateNew(());

impl private::Run for CreateNew {
    fn kind(&mut self, _: &'static Model) -> Result<Kind, Error> {
        Ok(Kind::CreateNew)
    }
    fn is_plain(&self) -> bool {
        true
    }
}

impl Mode for CreateNew {
    type Output = Report;
    fn __finish(self, report: Report) -> Report {
        report
    }
}

fn check_key<K: FromKey>(model: &'static Model) -> Result<(), Error> {
    let columns: Vec<(&str, Type, bool)> =
        model.unique_key().map(|c| (c.name(), c.pg_type().wire_type(), c.nullable())).collect();
    K::__check(&columns).map_err(|message| Error::Usage {
        model: model.struct_name(),
        message: format!("returning_keys_as::<{}>: {message}", type_name::<K>()),
    })
}

fn read_key<K: FromKey>(
    index: usize,
    id: Option<i64>,
    row: &Row,
    at: usize,
) -> Result<NewRow<K>, tokio_postgres::Error> {
    Ok(NewRow { index, id, key: K::__read(row, at)? })
}

/// The mode of [`Bulk::returning_keys`]: returns a `Report<Vec<NewRow<K>>>`.
#[derive(Debug)]
pub struct ReturningKeys<K> {
    rows: Vec<NewRow<K>>,
}

impl<K: FromKey> private::Run for ReturningKeys<K> {
    fn kind(&mut self, model: &'static Model) -> Result<Kind, Error> {
        check_key::<K>(model)?;
        Ok(Kind::Keys)
    }
    fn receive(&mut self, index: usize, id: Option<i64>, row: &Row, at: usize) -> Result<(), tokio_postgres::Error> {
        self.rows.push(read_key(index, id, row, at)?);
        Ok(())
    }
}

impl<K: FromKey> Mode for ReturningKeys<K> {
    type Output = Report<Vec<NewRow<K>>>;
    fn __finish(self, report: Report) -> Self::Output {
        report.with(self.rows)
    }
}

/// The mode of [`Bulk::returning_keys_with`]: returns a [`Report`].
pub struct ReturningKeysWith<K, F> {
    f: F,
    key: PhantomData<fn() -> K>,
}

impl<K, F> fmt::Debug for ReturningKeysWith<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReturningKeysWith").field("key", &type_name::<K>()).finish_non_exhaustive()
    }
}

impl<K: FromKey, F: FnMut(NewRow<K>) + Send> private::Run for ReturningKeysWith<K, F> {
    fn kind(&mut self, model: &'static Model) -> Result<Kind, Error> {
        check_key::<K>(model)?;
        Ok(Kind::Keys)
    }
    fn hands_rows_out(&self) -> bool {
        true
    }
    fn receive(&mut self, index: usize, id: Option<i64>, row: &Row, at: usize) -> Result<(), tokio_postgres::Error> {
        (self.f)(read_key(index, id, row, at)?);
        Ok(())
    }
}

impl<K: FromKey, F: FnMut(NewRow<K>) + Send> Mode for ReturningKeysWith<K, F> {
    type Output = Report;
    fn __finish(self, report: Report) -> Report {
        report
    }
}

/// The mode of [`Bulk::returning_skipped`]: returns a `Report<Vec<usize>>`.
#[derive(Debug)]
pub struct ReturningSkipped {
    /// One bit per offered row: inserted.
    inserted: Vec<u64>,
}

impl private::Run for ReturningSkipped {
    fn kind(&mut self, _: &'static Model) -> Result<Kind, Error> {
        Ok(Kind::Positions)
    }
    fn receive(&mut self, index: usize, _: Option<i64>, _: &Row, _: usize) -> Result<(), tokio_postgres::Error> {
        let word = index / 64;
        if self.inserted.len() <= word {
            self.inserted.resize(word + 1, 0);
        }
        self.inserted[word] |= 1 << (index % 64);
        Ok(())
    }
}

impl Mode for ReturningSkipped {
    type Output = Report<Vec<usize>>;
    fn __finish(self, report: Report) -> Self::Output {
        if report.replayed {
            return report.with(Vec::new());
        }
        let inserted = |i: usize| self.inserted.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0);
        let skipped = (0..report.offered as usize).filter(|&i| !inserted(i)).collect();
        report.with(skipped)
    }
}

/// The mode of [`Bulk::upsert`]: returns a [`Report`].
#[derive(Debug)]
pub struct Upserting {
    upsert: Upsert,
}

impl private::Run for Upserting {
    fn kind(&mut self, model: &'static Model) -> Result<Kind, Error> {
        Ok(Kind::Upsert(self.upsert.resolve(model)?))
    }
}

impl Mode for Upserting {
    type Output = Report;
    fn __finish(self, report: Report) -> Report {
        report
    }
}
