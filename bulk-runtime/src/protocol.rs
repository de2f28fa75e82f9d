//! The protocol of one bulk call: scratch table, binary COPY, anti-join insert.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;

use bytes::BytesMut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Transaction};

use crate::error::{Error, Step};
use crate::model::Model;
use crate::schema;
use crate::{BulkCreateNew, BulkValue};

/// What a bulk call did.
///
/// Displays as `2 of 4 records added`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Rows offered (the length of the batch).
    pub offered: u64,
    /// Rows inserted.
    pub inserted: u64,
    /// Rows skipped: their key was already stored, or repeated earlier in the batch.
    pub skipped: u64,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} records added", self.inserted, self.offered)
    }
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, rhs: Outcome) {
        self.offered += rhs.offered;
        self.inserted += rhs.inserted;
        self.skipped += rhs.skipped;
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio_postgres::Client {}
    impl Sealed for tokio_postgres::Transaction<'_> {}
}

/// Where a bulk call runs: a [`Client`] (the call opens and commits its own
/// transaction) or a caller's [`Transaction`] (the call works inside a
/// savepoint, so a failed call leaves the caller's transaction usable, and the
/// caller's rollback undoes a successful one).
pub trait Connection: sealed::Sealed + Send + Sync {
    /// Opens the call's transaction, or a savepoint in the caller's.
    #[doc(hidden)]
    fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_>, tokio_postgres::Error>> + Send;
    /// Whether the call runs inside a caller's transaction.
    #[doc(hidden)]
    fn nested(&self) -> bool;
}

impl Connection for Client {
    fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_>, tokio_postgres::Error>> + Send {
        self.transaction()
    }
    fn nested(&self) -> bool {
        false
    }
}

impl Connection for Transaction<'_> {
    fn begin(&mut self) -> impl Future<Output = Result<Transaction<'_>, tokio_postgres::Error>> + Send {
        self.savepoint("bulk_create_new")
    }
    fn nested(&self) -> bool {
        true
    }
}

/// Inserts every row whose unique key is not stored yet; see
/// [`BulkCreateNew::bulk_create_new`].
pub async fn bulk_create_new<T, C, I>(conn: &mut C, rows: I) -> Result<Outcome, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    I: IntoIterator,
    I::Item: Borrow<T>,
{
    let model: &'static Model = T::model();
    let plan = model.plan();
    let db = |step: Step| {
        move |source: tokio_postgres::Error| Error::Database {
            table: model.qualified_name(),
            step,
            row: None,
            field: None,
            source,
        }
    };
    let nested = conn.nested();
    let tx = conn.begin().await.map_err(db(Step::Begin))?;

    // 1. The scratch table, created (after the schema check) the first time
    //    this backend session sees the model. A pooler that switches backends,
    //    or DISCARD ALL, simply makes it absent again.
    let scratch_exists = tx
        .query_typed("SELECT to_regclass($1) IS NOT NULL", &[(&format!("pg_temp.{}", plan.scratch), Type::TEXT)])
        .await
        .map_err(db(Step::Scratch))?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    if !scratch_exists {
        schema::verify(&tx, model).await?;
        tx.batch_execute(&plan.create_scratch).await.map_err(db(Step::Scratch))?;
    }

    // 2. Binary COPY, streaming row by row.
    let sink = tx.copy_in(&plan.copy).await.map_err(db(Step::Copy))?;
    let mut writer = Box::pin(BinaryCopyInWriter::new(sink, &plan.copy_types));
    let mut offered: u64 = 0;
    for (index, row) in rows.into_iter().enumerate() {
        let row: &T = row.borrow();
        let values = row.copy_values();
        let values = values.as_ref();
        for (field, value) in values.iter().enumerate() {
            value.check().map_err(|source| Error::InvalidValue {
                row: index,
                field: model.columns()[field].field(),
                source,
            })?;
        }
        let ord = index as i64;
        if let Err(source) = writer.as_mut().write_raw(RowValues { ord: Some(&ord), values: values.iter() }).await {
            return Err(encode_error(model, plan.copy_types.as_slice(), index, values, source));
        }
        offered += 1;
    }
    let copied = writer.as_mut().finish().await.map_err(|source| copy_error(model, source))?;
    drop(writer);
    debug_assert_eq!(copied, offered);

    // 3. The anti-join insert (and, inside a caller's transaction, emptying the
    //    scratch table, which ON COMMIT DELETE ROWS would only do at its commit).
    let sql = if nested { format!("{}; {}", plan.insert, plan.clear) } else { plan.insert.clone() };
    let messages = tx.simple_query(&sql).await.map_err(|source| insert_error(model, source))?;
    let inserted = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(0);

    tx.commit().await.map_err(db(Step::Commit))?;
    Ok(Outcome { offered, inserted, skipped: offered - inserted })
}

/// The values of one COPY row: the ordinal, then the model's columns.
struct RowValues<'r, I> {
    ord: Option<&'r i64>,
    values: I,
}

impl<'r, I> Iterator for RowValues<'r, I>
where
    I: ExactSizeIterator<Item = &'r &'r dyn BulkValue>,
{
    type Item = &'r (dyn ToSql + Sync);

    fn next(&mut self) -> Option<Self::Item> {
        match self.ord.take() {
            Some(ord) => Some(ord),
            None => self.values.next().map(|v| v.as_to_sql()),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.values.len() + usize::from(self.ord.is_some());
        (n, Some(n))
    }
}

impl<'r, I> ExactSizeIterator for RowValues<'r, I> where I: ExactSizeIterator<Item = &'r &'r dyn BulkValue> {}

/// A row failed to encode (or the connection failed while sending it): find
/// which field by encoding each value alone.
fn encode_error(
    model: &Model,
    types: &[Type],
    row: usize,
    values: &[&dyn BulkValue],
    source: tokio_postgres::Error,
) -> Error {
    let mut scratch = BytesMut::new();
    let field = values.iter().zip(&types[1..]).zip(model.columns()).find_map(|((value, ty), column)| {
        scratch.clear();
        value.as_to_sql().to_sql_checked(ty, &mut scratch).err().map(|_| column.field().to_owned())
    });
    Error::Database { table: model.qualified_name(), step: Step::Copy, row: Some(row), field, source }
}

/// The server rejected COPY data: its context reads
/// `COPY __bulk_..., line N, column c: ...`; line N is row N-1.
fn copy_error(model: &Model, source: tokio_postgres::Error) -> Error {
    let (row, field) = source
        .as_db_error()
        .and_then(|db| db.where_())
        .map(|w| {
            let row = w
                .split(", line ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok())
                .map(|line| line.saturating_sub(1));
            let field = w
                .split(", column ")
                .nth(1)
                .and_then(|rest| rest.split(':').next())
                .and_then(|col| model.columns().iter().find(|c| c.name() == col).map(|c| c.field().to_owned()));
            (row, field)
        })
        .unwrap_or((None, None));
    Error::Database { table: model.qualified_name(), step: Step::Copy, row, field, source }
}

/// The insert failed (NOT NULL, CHECK, out of range for the column's type...):
/// the server names the column, not the row.
fn insert_error(model: &Model, source: tokio_postgres::Error) -> Error {
    let field = source.as_db_error().and_then(|db| db.column()).map(|col| {
        model.columns().iter().find(|c| c.name() == col).map_or_else(|| col.to_owned(), |c| c.field().to_owned())
    });
    Error::Database { table: model.qualified_name(), step: Step::Insert, row: None, field, source }
}
