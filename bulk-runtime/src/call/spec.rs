//! What one call does and where its results go: the [`Call`] the driver
//! and both paths share, and the reading of what the statements return.

use std::pin::pin;

use futures_util::TryStreamExt;
use tokio_postgres::{Row, RowStream};

use crate::api::Ledger;
use crate::api::{Kind, Progress, Report, Run};
use crate::error::{Error, Step};
use crate::model::Model;
use crate::sql::variants;
use crate::wire::Fingerprint;
use crate::wire::limits::Watch;

/// One call: what it does, and where its results go.
pub(crate) struct Call<'c> {
    /// The statements' kind.
    pub kind: &'c Kind,
    /// The ledger and the batch id, for an exactly-once call.
    pub ledger: Option<(&'c Ledger, &'c str)>,
    /// The batch's fingerprint, once known (a call with a batch id).
    pub fingerprint: Option<Fingerprint>,
    /// Progress reports.
    pub progress: Option<&'c mut (dyn FnMut(Progress) + Send)>,
    /// The returned rows.
    pub receiver: &'c mut dyn Run,
    /// The rows that may hold a value its column's type modifier refuses,
    /// once known (see [`Watch`]).
    pub watch: Option<Watch>,
}

/// The receiver of the plain call, which returns no rows.
pub(crate) struct Nothing;

impl Run for Nothing {
    fn kind(&mut self, _: &'static Model) -> Result<Kind, Error> {
        Ok(Kind::CreateNew)
    }
}

impl Call<'_> {
    /// Reports progress, if asked.
    pub(crate) fn tell(&mut self, sent: u64, report: Option<&Report>) {
        if let Some(f) = self.progress.as_mut() {
            let (inserted, updated) = report.map_or((0, 0), |r| (r.inserted, r.updated));
            f(Progress { sent, inserted, updated, finished: report.is_some() });
        }
    }

    /// Whether the short path needs a transaction of its own (or a
    /// savepoint, `nested`): more than one statement, a ledger row to
    /// write with the rows, or a callback that must see the rows before
    /// the commit. A single statement is a transaction already.
    pub(crate) fn needs_transaction(&self, nested: bool) -> bool {
        nested || self.ledger.is_some() || matches!(self.kind, Kind::Upsert(_)) || self.receiver.hands_rows_out()
    }
}

/// The counts of an upsert: `distinct` keys offered, of which `inserted`
/// were new and `updated` were stored and rewritten.
pub(crate) fn upsert_report(offered: u64, inserted: u64, distinct: u64, updated: u64) -> Report {
    Report {
        offered,
        inserted,
        updated,
        unchanged: distinct.saturating_sub(inserted + updated),
        skipped: offered.saturating_sub(distinct),
        ..Report::default()
    }
}

/// Hands each returned row (position, id when present, key) to `receiver`;
/// returns the number of rows.
pub(crate) async fn deliver(
    model: &'static Model,
    rows: RowStream,
    offered: u64,
    receiver: &mut dyn Run,
) -> Result<u64, Error> {
    let mut rows = pin!(rows);
    let mut n = 0;
    while let Some(row) = rows.try_next().await.map_err(|source| Error::insert(model, source))? {
        let (index, id, at) = position_and_id(model, &row)?;
        debug_assert!((index as u64) < offered, "position {index} of {offered}");
        receiver
            .receive(index, id, &row, at)
            .map_err(|source| Error::database_at(model, Step::Insert, Some(index), None, source))?;
        n += 1;
    }
    Ok(n)
}

/// A returned row's position in the batch, its id when the statement
/// returns one, and where its key starts.
fn position_and_id(model: &'static Model, row: &Row) -> Result<(usize, Option<i64>, usize), Error> {
    let fail = |source| Error::insert(model, source);
    let index = row.try_get::<_, i64>(0).map_err(fail)?;
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    match row.columns().get(1) {
        Some(c) if c.name() == variants::ID => Ok((index, row.try_get::<_, Option<i64>>(1).map_err(fail)?, 2)),
        _ => Ok((index, None, 1)),
    }
}

/// The two counts of a statement that returns one row of two `bigint`s.
pub(crate) async fn counts(model: &'static Model, rows: RowStream) -> Result<(u64, u64), Error> {
    let mut rows = pin!(rows);
    let mut out = (0, 0);
    while let Some(row) = rows.try_next().await.map_err(|source| Error::insert(model, source))? {
        let n = |i: usize| row.try_get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
        out = (n(0).map_err(|s| Error::insert(model, s))?, n(1).map_err(|s| Error::insert(model, s))?);
    }
    Ok(out)
}

/// The count of a statement that returns one row of one `bigint` (an
/// insert counted in SQL, Citus's dialect).
pub(crate) async fn counted(model: &'static Model, rows: RowStream) -> Result<u64, Error> {
    let mut rows = pin!(rows);
    let mut out = 0;
    while let Some(row) = rows.try_next().await.map_err(|source| Error::insert(model, source))? {
        out = u64::try_from(row.try_get::<_, i64>(0).map_err(|s| Error::insert(model, s))?).unwrap_or(0);
    }
    Ok(out)
}

/// Marks the positions of the rows the upsert's first statement inserted.
pub(crate) struct Mask(pub Vec<bool>);

impl Run for Mask {
    fn kind(&mut self, _: &'static Model) -> Result<Kind, Error> {
        Ok(Kind::Positions)
    }
    fn receive(&mut self, index: usize, _: Option<i64>, _: &Row, _: usize) -> Result<(), tokio_postgres::Error> {
        if let Some(done) = self.0.get_mut(index) {
            *done = true;
        }
        Ok(())
    }
}
