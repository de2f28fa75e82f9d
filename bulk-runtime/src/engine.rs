//! Running a call of the [`Bulk`](crate::Bulk) builder: the plain protocol's
//! two paths (one statement on arrays for a short batch, binary COPY into the
//! scratch table for a long one), for every statement kind, with rows from a
//! stream, progress reports and the ledger of batch ids.
//!
//! The plain call without options does not come here: it runs
//! [`protocol::bulk_create_new`](crate::protocol::bulk_create_new) as is.

use std::borrow::Borrow;
use std::pin::{Pin, pin};

use bytes::BytesMut;
use futures_util::{FutureExt, Stream, StreamExt, TryStreamExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, RowStream, Statement};

use crate::BulkCreateNew;
use crate::bulk::Progress;
use crate::bulk::private::Run;
use crate::connection::Connection;
use crate::error::{Error, Step};
use crate::ledger::{self, Claim, Fingerprint, Ledger};
use crate::model::Model;
use crate::protocol::{
    CopyWriter, Encoded, Form, SMALL_BATCH, db_error, encode_arrays, encode_arrays_key_ordered, encode_row,
    explain_failure, insert_error, insert_from_scratch, run_small, sort_memory_kb, use_scratch,
};
use crate::report::Report;
use crate::schema::{self, KeyShape};
use crate::scope::Scope;
use crate::sql::variants::{self, Keep, Returned, Source, UpdateSet};
use crate::statements::{self, Lookup};

/// The error a stream of rows may yield.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the call's statement does.
#[derive(Debug)]
pub enum Kind {
    /// Insert new keys, count them (the plain statement).
    CreateNew,
    /// Insert new keys, return their positions, ids and keys.
    Keys,
    /// Insert new keys, return their positions.
    Positions,
    /// Insert new keys, then update stored ones.
    Upsert(UpdateSet),
}

/// One call: what it does, and where its results go.
pub struct Call<'c> {
    /// The statement kind.
    pub kind: &'c Kind,
    /// The ledger and the batch id, for an exactly-once call.
    pub ledger: Option<(&'c Ledger, &'c str)>,
    /// The batch's fingerprint, once known (a call with a batch id).
    pub fingerprint: Option<Fingerprint>,
    /// Progress reports.
    pub progress: Option<&'c mut (dyn FnMut(Progress) + Send)>,
    /// The returned rows.
    pub receiver: &'c mut dyn Run,
}

impl Call<'_> {
    fn tell(&mut self, progress: Progress) {
        if let Some(f) = self.progress.as_mut() {
            f(progress);
        }
    }
}

/// Runs the call on `rows`.
pub(crate) async fn run<T, C, S, R>(conn: &mut C, rows: S, call: &mut Call<'_>) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    S: Stream<Item = Result<R, BoxError>>,
    R: Borrow<T>,
{
    let model: &'static Model = T::model();
    let mut rows = pin!(rows);
    let mut head: Vec<R> = Vec::with_capacity(rows.size_hint().0.min(SMALL_BATCH));
    while head.len() < SMALL_BATCH {
        match rows.next().await {
            Some(Ok(row)) => head.push(row),
            Some(Err(source)) => return Err(Error::Stream { row: head.len(), source }),
            None => break,
        }
    }
    let report = if head.is_empty() {
        Report::default()
    } else if head.len() < SMALL_BATCH && !model.copy_only() {
        let offered = head.len() as u64;
        if call.ledger.is_some() {
            call.fingerprint = Some(fingerprint::<T, R>(model, &head)?);
        }
        // The plain statement of a client-ordered model takes the rows in key
        // order and no ordinals (see `Plan::client_ordered`).
        let arrays = if matches!(call.kind, Kind::CreateNew) && crate::sql::plan(model).client_ordered {
            encode_arrays_key_ordered::<T, _>(model, &head)?
        } else {
            encode_arrays::<T>(model, head.iter().map(|r| r.borrow()))?
        };
        drop(head);
        small(conn, model, offered, &arrays, call).await?
    } else {
        match copy::<T, C, S, R>(conn, model, head, rows, call).await {
            Ok(report) => report,
            Err(e) => return Err(explain_failure(conn, model, e).await),
        }
    };
    call.tell(Progress { sent: report.offered, inserted: report.inserted, updated: report.updated, finished: true });
    Ok(report)
}

/// The fingerprint of a short batch: its rows' binary COPY encoding, as the
/// COPY path computes it while streaming (see [`Fingerprint`]).
fn fingerprint<T: BulkCreateNew, R: Borrow<T>>(model: &'static Model, rows: &[R]) -> Result<Fingerprint, Error> {
    let types = &crate::sql::plan(model).copy_types;
    let mut fingerprint = Fingerprint::new();
    let mut buf = BytesMut::new();
    for (i, row) in rows.iter().enumerate() {
        buf.clear();
        encode_row::<T>(model, types, i, row.borrow(), &mut buf)?;
        fingerprint.add_row(&buf);
    }
    Ok(fingerprint)
}

/// The short-batch path: the statements on array parameters. As in the plain
/// call, a statement the server forgot is prepared again, then run unprepared.
async fn small<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    offered: u64,
    arrays: &[Encoded],
    call: &mut Call<'_>,
) -> Result<Report, Error> {
    let types = match call.kind {
        Kind::CreateNew => crate::sql::plan(model).small_types.clone(),
        _ => variants::array_types(model, false),
    };
    let params: Vec<(&(dyn ToSql + Sync), Type)> =
        arrays.iter().zip(types).map(|(a, t)| (a as &(dyn ToSql + Sync), t)).collect();
    // The plain statement's first attempt may skip ON CONFLICT (see `contention`).
    let mut form =
        if matches!(call.kind, Kind::CreateNew) { Form::first(model, offered as usize) } else { Form::OnConflict };
    loop {
        let mut result = small_attempt(conn, model, offered, &params, call, true, form).await;
        for prepared in [true, false] {
            if !result.as_ref().is_err_and(Error::is_stale_statement) {
                break;
            }
            result = small_attempt(conn, model, offered, &params, call, prepared, form).await;
        }
        if let Some(again) = form.after(model, &result) {
            form = again;
            continue;
        }
        return match result {
            Ok(report) => Ok(report),
            Err(e) => Err(explain_failure(conn, model, e).await),
        };
    }
}

/// One attempt: a single statement runs as its own transaction; with a batch
/// id, an upsert (two statements), or inside a caller's transaction, the
/// attempt opens a transaction (or savepoint) of its own.
async fn small_attempt<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    offered: u64,
    params: &[(&(dyn ToSql + Sync), Type)],
    call: &mut Call<'_>,
    prepared: bool,
    form: Form,
) -> Result<Report, Error> {
    let transaction = conn.nested() || call.ledger.is_some() || matches!(call.kind, Kind::Upsert(_));
    if !transaction {
        return small_statements(conn.client(), model, offered, params, call, prepared, form).await;
    }
    let scope = Scope::begin(conn.client(), conn.nested()).await.map_err(db_error(model, Step::Begin))?;
    let claimed = match claim(&scope, model, call.ledger, call.fingerprint.as_ref()).await? {
        Ok(claimed) => claimed,
        Err(replay) => {
            scope.commit().await.map_err(db_error(model, Step::Commit))?;
            return Ok(replay);
        }
    };
    let report = small_statements(scope.client(), model, offered, params, call, prepared, form).await?;
    finish(scope, model, call.ledger, claimed, &report).await?;
    Ok(report)
}

/// Claims the call's batch id, if it has one: `Ok(Ok(target))` when claimed
/// (or no batch id), `Ok(Err(report))` for a replay (after committing the
/// empty transaction).
async fn claim(
    tx: &Scope<'_>,
    model: &'static Model,
    ledger: Option<(&Ledger, &str)>,
    fingerprint: Option<&Fingerprint>,
) -> Result<Result<Option<String>, Report>, Error> {
    let Some((ledger, batch_id)) = ledger else { return Ok(Ok(None)) };
    let fingerprint = fingerprint.expect("a call with a batch id fingerprints its batch before claiming it");
    match ledger::claim(tx.client(), model, ledger, batch_id, fingerprint).await? {
        Claim::Claimed(target) => Ok(Ok(Some(target))),
        Claim::Replay(report) => Ok(Err(report)),
    }
}

/// Records the counts under the claimed batch id and commits.
async fn finish(
    tx: Scope<'_>,
    model: &'static Model,
    ledger: Option<(&Ledger, &str)>,
    claimed: Option<String>,
    report: &Report,
) -> Result<(), Error> {
    if let (Some(target), Some((ledger, batch_id))) = (claimed, ledger) {
        ledger::record(tx.client(), model, ledger, &target, batch_id, report).await?;
    }
    tx.commit().await.map_err(db_error(model, Step::Commit))
}

/// The statements of the short-batch path (the plain statement in `form`).
async fn small_statements(
    client: &Client,
    model: &'static Model,
    offered: u64,
    params: &[(&(dyn ToSql + Sync), Type)],
    call: &mut Call<'_>,
    prepared: bool,
    form: Form,
) -> Result<Report, Error> {
    let mut checked = None;
    match call.kind {
        Kind::CreateNew => {
            let inserted = run_small(client, model, params, prepared, form).await?;
            Ok(Report { offered, inserted, skipped: offered - inserted, ..Report::default() })
        }
        Kind::Keys | Kind::Positions => {
            let keys = matches!(call.kind, Kind::Keys);
            let label = if keys { "keys" } else { "positions" };
            let types = variants::array_types(model, false);
            let stmt =
                prepare(client, model, label.to_owned(), prepared, &mut checked, keys, &types, |with_id, shape| {
                    let returned = if keys { Returned::Keys { with_id } } else { Returned::Positions };
                    variants::returning(model, Source::Arrays(shape), Keep::First, returned)
                })
                .await?;
            let rows = query(client, model, &stmt, params).await?;
            let inserted = deliver(model, rows, offered, call.receiver).await?;
            Ok(Report { offered, inserted, skipped: offered - inserted, ..Report::default() })
        }
        Kind::Upsert(set) => {
            // 1. The new keys, and which kept rows they came from.
            let types = variants::array_types(model, false);
            let label = format!("upsert insert {:?}", set.keep);
            let stmt = prepare(client, model, label, prepared, &mut checked, false, &types, |_, shape| {
                variants::returning(model, Source::Arrays(shape), set.keep, Returned::Positions)
            })
            .await?;
            let rows = query(client, model, &stmt, params).await?;
            let mut done = Mask(vec![false; offered as usize]);
            let inserted = deliver(model, rows, offered, &mut done).await?;

            // 2. The stored keys, without the rows whose key step 1 inserted.
            let types = variants::array_types(model, true);
            let mut label = format!("upsert update {:?} {}", set.keep, set.only_if_changed);
            for c in &set.columns {
                label.push('\0');
                label.push_str(c.name());
            }
            let stmt = prepare(client, model, label, prepared, &mut checked, false, &types, |_, shape| {
                variants::upsert_update(model, Source::Arrays(shape), set)
            })
            .await?;
            let mut params = params.to_vec();
            params.push((&done.0, Type::BOOL_ARRAY));
            let rows = query(client, model, &stmt, &params).await?;
            let (remaining, updated) = counts(model, rows).await?;
            Ok(upsert_report(offered, inserted, inserted + remaining, updated))
        }
    }
}

/// The counts of an upsert: `distinct` keys offered, of which `inserted`
/// were new and `updated` were stored and rewritten.
fn upsert_report(offered: u64, inserted: u64, distinct: u64, updated: u64) -> Report {
    Report {
        offered,
        inserted,
        updated,
        unchanged: distinct.saturating_sub(inserted + updated),
        skipped: offered.saturating_sub(distinct),
        ..Report::default()
    }
}

/// Marks the positions of the rows the upsert's first statement inserted.
struct Mask(Vec<bool>);

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

/// A statement of the short-batch path: prepared (and kept per client), or
/// its text when the client does not prepare.
enum Prepared {
    Statement(Statement, String),
    Text(String),
}

/// The statement `label` of `model` on `client`. As for the plain call's
/// statement, a client without it checks the live table against the model
/// first (once per attempt: `checked`), so "has the statement" means "has
/// checked". `build` gets whether the table has a usable id column (checked
/// only when `wants_id`).
#[allow(clippy::too_many_arguments)]
async fn prepare(
    client: &Client,
    model: &'static Model,
    label: String,
    prepared: bool,
    checked: &mut Option<KeyShape>,
    wants_id: bool,
    types: &[Type],
    build: impl FnOnce(bool, &KeyShape) -> String,
) -> Result<Prepared, Error> {
    let found = if prepared { statements::lookup(client, model, &label) } else { Lookup::Unnamed };
    let prepared = match found {
        Lookup::Prepared(statement) => return Ok(Prepared::Statement(statement, label)),
        Lookup::Prepare => true,
        Lookup::Unnamed => false,
    };
    let shape = match checked {
        Some(shape) => shape.clone(),
        None => checked.insert(schema::verify(client, model).await?).clone(),
    };
    let with_id = wants_id && id_usable(client, model).await?;
    let sql = build(with_id, &shape);
    if !prepared {
        return Ok(Prepared::Text(sql));
    }
    let statement = client.prepare_typed(&sql, types).await.map_err(|source| insert_error(model, source))?;
    statements::put(client, model, &label, statement.clone());
    Ok(Prepared::Statement(statement, label))
}

/// Whether the target has the model's id column with an integer type.
async fn id_usable(client: &Client, model: &'static Model) -> Result<bool, Error> {
    let Some(id) = model.id_column() else { return Ok(false) };
    let target = crate::sql::plan(model).target_regclass.as_str();
    let row = client
        .query_typed(variants::ID_COLUMN_USABLE, &[(&target, Type::TEXT), (&id, Type::TEXT)])
        .await
        .map_err(db_error(model, Step::SchemaCheck))?;
    Ok(row.first().is_some_and(|r| r.get(0)))
}

/// Runs a statement of the short-batch path; a prepared statement the server
/// no longer knows is forgotten.
async fn query(
    client: &Client,
    model: &'static Model,
    statement: &Prepared,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<RowStream, Error> {
    let result = match statement {
        Prepared::Statement(statement, _) => client.query_raw(statement, params.iter().map(|(v, _)| *v)).await,
        Prepared::Text(sql) => client.query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone()))).await,
    };
    result.map_err(|source| {
        let error = insert_error(model, source);
        if let (true, Prepared::Statement(_, label)) = (error.is_stale_statement(), statement) {
            statements::evict(client, model, label);
        }
        error
    })
}

/// Hands each returned row (position, id when present, key) to `receiver`;
/// returns the number of rows.
async fn deliver(model: &'static Model, rows: RowStream, offered: u64, receiver: &mut dyn Run) -> Result<u64, Error> {
    let mut rows = pin!(rows);
    let mut n = 0;
    while let Some(row) = rows.try_next().await.map_err(|source| insert_error(model, source))? {
        let index = row.try_get::<_, i64>(0).map_err(|source| insert_error(model, source))?;
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        debug_assert!((index as u64) < offered, "position {index} of {offered}");
        let (id, at) = match row.columns().get(1) {
            Some(c) if c.name() == variants::ID => {
                (row.try_get::<_, Option<i64>>(1).map_err(|source| insert_error(model, source))?, 2)
            }
            _ => (None, 1),
        };
        receiver
            .receive(index, id, &row, at)
            .map_err(|source| Error::database_at(model, Step::Insert, Some(index), None, source))?;
        n += 1;
    }
    Ok(n)
}

/// The two counts of a statement that returns one row of two `bigint`s.
async fn counts(model: &'static Model, rows: RowStream) -> Result<(u64, u64), Error> {
    let mut rows = pin!(rows);
    let mut out = (0, 0);
    while let Some(row) = rows.try_next().await.map_err(|source| insert_error(model, source))? {
        let n = |i: usize| row.try_get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
        out = (n(0).map_err(|s| insert_error(model, s))?, n(1).map_err(|s| insert_error(model, s))?);
    }
    Ok(out)
}

/// The long-batch path: binary COPY into the scratch table, then the kind's
/// statements, in one transaction (or savepoint) with the ledger's claim and
/// record.
async fn copy<T, C, S, R>(
    conn: &mut C,
    model: &'static Model,
    head: Vec<R>,
    mut rows: Pin<&mut S>,
    call: &mut Call<'_>,
) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    S: Stream<Item = Result<R, BoxError>>,
    R: Borrow<T>,
{
    let plan = crate::sql::plan(model);
    let db = |step: Step| db_error(model, step);
    let nested = conn.nested();
    let mut scope = Scope::begin(conn.client(), nested).await.map_err(db(Step::Begin))?;
    let tx = scope.client();

    // 1. The scratch table (created after the schema check the first time the
    //    session sees the model), and whether the id column is usable.
    let id: Option<&str> = if matches!(call.kind, Kind::Keys) { model.id_column() } else { None };
    let before = tx
        .query_typed(
            variants::BEFORE_COPY,
            &[(&plan.scratch_regclass, Type::TEXT), (&plan.target_regclass, Type::TEXT), (&id, Type::TEXT)],
        )
        .await
        .map_err(db(Step::Scratch))?;
    let (scratch_exists, with_id) = before.first().map_or((false, false), |r| (r.get(0), r.get(1)));
    use_scratch(tx, model, scratch_exists).await?;

    // 2. Binary COPY: rows are encoded synchronously and sent in chunks, so no
    //    borrow of a row lives across an await and memory stays flat. When the
    //    stream has no row ready, what is buffered goes out first.
    let mut copy = CopyWriter::start(tx, model, matches!(call.kind, Kind::CreateNew)).await?;
    if call.ledger.is_some() {
        copy.fingerprint = Some(Fingerprint::new());
    }
    let sent_all = |call: &mut Call<'_>, copy: &CopyWriter| {
        call.tell(Progress { sent: copy.offered, inserted: 0, updated: 0, finished: false });
    };
    for row in head {
        let full = copy.push::<T>(model, row.borrow())?;
        drop(row);
        if full {
            copy.flush(model).await?;
            sent_all(call, &copy);
        }
    }
    loop {
        let next = match rows.next().now_or_never() {
            Some(next) => next,
            None => {
                if copy.pending() {
                    copy.flush(model).await?;
                    sent_all(call, &copy);
                }
                rows.next().await
            }
        };
        let row = match next {
            None => break,
            Some(Ok(row)) => row,
            Some(Err(source)) => return Err(Error::Stream { row: copy.offered as usize, source }),
        };
        let full = copy.push::<T>(model, row.borrow())?;
        drop(row);
        if full {
            copy.flush(model).await?;
            sent_all(call, &copy);
        }
    }
    let pending = copy.pending();
    let (offered, bytes_sent, repeats) = (copy.offered, copy.bytes_sent(), copy.repeats_possible());
    call.fingerprint = copy.fingerprint.take();
    let copied = copy.finish(model).await?;
    debug_assert_eq!(copied, offered);
    if pending {
        call.tell(Progress { sent: offered, inserted: 0, updated: 0, finished: false });
    }

    // The batch id, claimed once the whole batch is read (its fingerprint
    // known). A replay writes nothing: the copied rows are rolled back.
    let claimed = match claim(&scope, model, call.ledger, call.fingerprint.as_ref()).await? {
        Ok(claimed) => claimed,
        Err(replay) => {
            scope.rollback().await.map_err(db(Step::Commit))?;
            return Ok(replay);
        }
    };

    // 3. The statements (and, inside a caller's transaction, emptying the
    //    scratch table, which ON COMMIT DELETE ROWS would only do at its commit).
    //    In its own transaction the call sizes the sort's memory as the plain
    //    call does (SET LOCAL: it ends with the transaction).
    let sort_kb = (!nested).then(|| sort_memory_kb(offered, bytes_sent));
    if let (Some(kb), false) = (sort_kb, matches!(call.kind, Kind::CreateNew)) {
        tx.batch_execute(&format!("SET LOCAL work_mem = '{kb}kB'")).await.map_err(db(Step::Insert))?;
    }
    let insert = |source| insert_error(model, source);
    let none = std::iter::empty::<(&(dyn ToSql + Sync), Type)>;
    let report = match call.kind {
        Kind::CreateNew => {
            let inserted =
                insert_from_scratch(&mut scope, model, offered, repeats, sort_kb, call.ledger.is_none()).await?;
            Report { offered, inserted, skipped: offered - inserted, ..Report::default() }
        }
        Kind::Keys | Kind::Positions => {
            let returned =
                if matches!(call.kind, Kind::Keys) { Returned::Keys { with_id } } else { Returned::Positions };
            let sql = variants::returning(model, Source::Scratch, Keep::First, returned);
            let rows = tx.query_typed_raw(&sql, none()).await.map_err(insert)?;
            let inserted = deliver(model, rows, offered, call.receiver).await?;
            if nested {
                tx.batch_execute(&plan.clear).await.map_err(insert)?;
            }
            Report { offered, inserted, skipped: offered - inserted, ..Report::default() }
        }
        Kind::Upsert(set) => {
            let sql = variants::upsert_insert_from_scratch(model, set.keep);
            let (inserted, distinct) = counts(model, tx.query_typed_raw(&sql, none()).await.map_err(insert)?).await?;
            let sql = variants::upsert_update(model, Source::Scratch, set);
            let (_, updated) = counts(model, tx.query_typed_raw(&sql, none()).await.map_err(insert)?).await?;
            if nested {
                tx.batch_execute(&plan.clear).await.map_err(insert)?;
            }
            upsert_report(offered, inserted, distinct, updated)
        }
    };
    finish(scope, model, call.ledger, claimed, &report).await?;
    Ok(report)
}
