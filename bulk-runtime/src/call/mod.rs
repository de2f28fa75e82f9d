//! The driver: the only place a call's decisions are made. Every call, the
//! plain [`bulk_create_new`](crate::BulkCreateNew::bulk_create_new) as well
//! as each [`Bulk`] option, goes the same way:
//!
//! 1. read the first rows ([`SMALL_BATCH`] of them at most) and pick the path:
//!    the short path ([`arrays`]) for fewer rows, the COPY path ([`copy`])
//!    for more (or for a short batch with much array data: see
//!    [`SMALL_BATCH_ARRAY_ELEMENTS`]);
//! 2. run the attempts: the insert's form ([`form`]: plain, then `ON
//!    CONFLICT` after a conflict), and on the short path the retries after
//!    a prepared statement the server forgot;
//! 3. around them, the call's transaction or savepoint ([`Scope`]) and the
//!    ledger's claim and record, when the call has a batch id;
//! 4. map a failure to its explanation (the schema check's, when the table
//!    no longer fits the model).
//!
//! The paths only run statements; [`spec`] holds what the call does and
//! reads what the statements return. Another SQL dialect of the insert (a
//! sharded table's) is a choice made here, in step 1, with its statements
//! beside the others in `sql`.

mod arrays;
mod copy;
mod first;
mod form;
mod ledger;
pub(crate) mod shards;
mod spec;

use std::borrow::Borrow;
use std::pin::{Pin, pin};

use futures_util::{Stream, StreamExt, TryStreamExt, stream};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

pub use arrays::CITUS_VALUES_ROWS;
pub use first::VALUES_UP_TO as FIRST_CALL_VALUES_UP_TO;
use form::Form;
pub use form::PLAIN_FROM;
use spec::{Call, Nothing};

use crate::BulkCreateNew;
use crate::api::Ledger;
use crate::api::ledger::check_batch_id;
use crate::api::{BoxError, Bulk, Kind, Mode, Progress, Report};
use crate::connection::Connection;
use crate::error::{Error, SchemaProblem, Step};
use crate::model::Model;
use crate::schema;
use crate::scope::Scope;
use crate::sql::{self, variants};
use crate::types::PgType;
use crate::wire::Fingerprint;
use crate::wire::limits::Watch;
use ledger::Claim;

/// Batches shorter than this take the short path (arrays bound as
/// parameters, one round trip); longer ones stream through binary COPY.
pub const SMALL_BATCH: usize = 5000;

/// A short batch whose array columns hold this many elements or more (all
/// rows and array columns together) streams through binary COPY as a long
/// one does. The short path rebuilds each row's array on the server from
/// all the elements (see `sql::fragments::arrays`), which costs more per
/// element than COPY: measured with `text` and `bigint` arrays in batches
/// of 10 to 4,000 rows, the two are level at about 20,000 elements, and
/// COPY is up to twice as fast at 50,000 (about 4 times at 1,000,000 `text`
/// elements).
pub const SMALL_BATCH_ARRAY_ELEMENTS: usize = 20_000;

/// The most bytes a short-path batch's encoded values take (its arrays, or
/// a `VALUES` statement's parameters): a larger batch takes the COPY path,
/// which sends its rows one by one. PostgreSQL refuses a protocol message of
/// 1 GB or more, closing the connection.
const SHORT_PATH_BYTES: usize = 256 << 20;

/// The plain call: the driver without options.
pub(crate) async fn create_new<T, C, I, It, R>(conn: &mut C, rows: I) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    I: IntoIterator<IntoIter = It, Item = R>,
    It: Iterator<Item = R>,
    R: Borrow<T>,
{
    let mut call = Call {
        kind: &Kind::CreateNew,
        ledger: None,
        fingerprint: None,
        progress: None,
        receiver: &mut Nothing,
        watch: None,
    };
    run::<T, C, _, R>(conn, stream::iter(rows.into_iter().map(Ok)), &mut call).await
}

impl<'a, T: BulkCreateNew, C: Connection + ?Sized, M: Mode> Bulk<'a, T, C, M> {
    /// Runs the call on `rows`: any iterator of rows or references to rows,
    /// consumed lazily. `It` and `R` (inferred) are its iterator and row
    /// types, named for the reason given at
    /// [`bulk_create_new`](BulkCreateNew::bulk_create_new): the call stays
    /// `Send` on rows mapped from borrowed records by a closure.
    ///
    /// # Errors
    /// As [`BulkCreateNew::bulk_create_new`], plus [`Error::Usage`] when the
    /// options do not fit the model (an unknown or key column in an upsert, a
    /// key type that does not match the key). Nothing is written when an
    /// error is returned.
    pub async fn run<I, It, R>(self, rows: I) -> Result<M::Output, Error>
    where
        I: IntoIterator<IntoIter = It, Item = R>,
        It: Iterator<Item = R>,
        R: Borrow<T>,
    {
        self.execute(stream::iter(rows.into_iter().map(Ok))).await
    }

    /// Runs the call on a stream of rows (or references to rows), awaiting
    /// each row as the COPY goes on: a large file or an API pager goes
    /// through without being held in memory. The call's transaction stays
    /// open while the stream runs.
    ///
    /// ```
    /// # use bulk_runtime::BulkCreateNew;
    /// # #[derive(BulkCreateNew)]
    /// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
    /// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
    /// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let db = ExampleDb::create("doc_run_stream").await?;
    /// # let client = &mut db.connect().await?;
    /// # client.batch_execute(&Retweet::model().migration_sql()).await?;
    /// # let rt = |tweet, retweeter, original_author| Retweet { tweet, retweeter, original_author };
    /// # let pages = futures_util::stream::iter([vec![rt(1, 10, 100), rt(1, 11, 100)], vec![rt(1, 11, 100)]]);
    /// use futures_util::StreamExt;
    ///
    /// // `pages`: the pages of an API pager, as they arrive.
    /// let rows = pages.flat_map(futures_util::stream::iter);
    /// let report = Retweet::bulk(client)
    ///     .on_progress(|p| eprintln!("{} rows sent, {} inserted", p.sent, p.inserted))
    ///     .run_stream(rows)
    ///     .await?;
    /// # assert_eq!(report.to_string(), "2 of 3 records added");
    /// # db.drop().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// `R` (inferred) is the stream's row type, named for the same reason as
    /// in [`run`](Self::run).
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_stream<S, R>(self, rows: S) -> Result<M::Output, Error>
    where
        S: Stream<Item = R>,
        R: Borrow<T>,
    {
        self.execute(rows.map(Ok)).await
    }

    /// Runs the call on a stream of `Result`s (a file reader, a decoder): the
    /// first `Err` ends the call with [`Error::Stream`], and nothing is written.
    ///
    /// # Errors
    /// As [`run`](Self::run), and [`Error::Stream`] with the stream's error.
    pub async fn try_run_stream<S, R, E>(self, rows: S) -> Result<M::Output, Error>
    where
        S: Stream<Item = Result<R, E>>,
        R: Borrow<T>,
        E: Into<BoxError>,
    {
        self.execute(rows.map_err(Into::into)).await
    }

    async fn execute<S, R>(self, rows: S) -> Result<M::Output, Error>
    where
        S: Stream<Item = Result<R, BoxError>>,
        R: Borrow<T>,
    {
        let Bulk { conn, mut mode, batch_id, ledger, mut progress, model: _ } = self;
        let model = T::model();
        let kind = mode.kind(model)?;
        if let Some(batch_id) = &batch_id {
            check_batch_id(model, batch_id)?;
        }
        let ledger = batch_id.as_ref().map(|_| ledger.unwrap_or_else(|| Ledger::for_model(model)));
        let mut call = Call {
            kind: &kind,
            ledger: ledger.as_ref().zip(batch_id.as_deref()),
            fingerprint: None,
            progress: progress.as_deref_mut().map(|f| f as &mut (dyn FnMut(Progress) + Send)),
            receiver: &mut mode,
            watch: None,
        };
        let report = run::<T, C, S, R>(conn, rows, &mut call).await?;
        Ok(mode.__finish(report))
    }
}

/// Runs `call` on `rows`.
async fn run<T, C, S, R>(conn: &mut C, rows: S, call: &mut Call<'_>) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    S: Stream<Item = Result<R, BoxError>>,
    R: Borrow<T>,
{
    let model: &'static Model = T::model();
    let mut rows = pin!(rows);
    let limit = short_limit(conn, model, call.kind);
    let head = first_rows(rows.as_mut(), limit).await?;
    let result = if head.is_empty() {
        Ok(Report::default())
    } else if short_path::<T, R>(model, &head, limit) {
        short::<T, C, R>(conn, model, head, call).await
    } else {
        long::<T, C, S, R>(conn, model, head, rows, call).await
    };
    let report = match result {
        Ok(report) => report,
        Err(e) => return Err(explain_failure(conn, model, e, call.watch.as_ref()).await),
    };
    call.tell(report.offered, Some(&report));
    Ok(report)
}

/// The most rows a batch of a call of `kind` on `conn` has on the short
/// path: [`SMALL_BATCH`], or on Citus, for the plain call of a model that
/// goes as one multi-row `VALUES` statement there
/// ([`arrays::citus_values_rows`]), what one such statement takes (if more):
/// on Citus it is faster than the COPY path's scratch table, whose rows the
/// coordinator pulls through itself.
fn short_limit<C: Connection + ?Sized>(conn: &mut C, model: &'static Model, kind: &Kind) -> usize {
    match citus_values_rows(conn, model, kind) {
        Some(rows) => rows.max(SMALL_BATCH),
        None => SMALL_BATCH,
    }
}

/// The most rows of a call of `kind` that go as one multi-row `VALUES`
/// statement on `conn`: for the plain call of a model of
/// [`arrays::citus_values_rows`], once the connection's schema check found
/// a Citus table.
fn citus_values_rows<C: Connection + ?Sized>(conn: &mut C, model: &'static Model, kind: &Kind) -> Option<usize> {
    let citus = crate::statements::dialect(conn.client(), model).is_citus();
    if citus && matches!(kind, Kind::CreateNew) { arrays::citus_values_rows(model) } else { None }
}

/// Whether a batch whose first rows (up to `limit`, see [`short_limit`])
/// are `head` takes the short path: it has fewer than `limit` rows, and
/// fewer than [`SMALL_BATCH_ARRAY_ELEMENTS`] elements in its array columns.
fn short_path<T: BulkCreateNew, R: Borrow<T>>(model: &Model, head: &[R], limit: usize) -> bool {
    if head.len() >= limit {
        return false;
    }
    if !model.columns().iter().any(|c| matches!(c.pg_type(), PgType::Array(_))) {
        return true;
    }
    let mut elements = 0;
    for row in head {
        let values = row.borrow().copy_values();
        elements += values.as_ref().iter().filter_map(|v| v.__array_len()).sum::<usize>();
        if elements >= SMALL_BATCH_ARRAY_ELEMENTS {
            return false;
        }
    }
    true
}

/// The first rows of the batch: `limit` of them, or all when fewer.
async fn first_rows<S, R>(mut rows: Pin<&mut S>, limit: usize) -> Result<Vec<R>, Error>
where
    S: Stream<Item = Result<R, BoxError>>,
{
    let mut head: Vec<R> = Vec::with_capacity(rows.size_hint().0.min(limit));
    while head.len() < limit {
        match rows.next().await {
            Some(Ok(row)) => head.push(row),
            Some(Err(source)) => return Err(Error::Stream { row: head.len(), source }),
            None => break,
        }
    }
    Ok(head)
}

/// The short path: the batch as arrays, then attempts until one is final:
/// after a plain attempt that met a conflict, the `ON CONFLICT` form; after
/// a statement the server forgot, the same attempt prepared again, then
/// unprepared.
async fn short<T, C, R>(conn: &mut C, model: &'static Model, head: Vec<R>, call: &mut Call<'_>) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    R: Borrow<T>,
{
    let offered = head.len() as u64;
    if call.ledger.is_some() {
        call.fingerprint = Some(crate::wire::copy::fingerprint::<T, R>(model, &head)?);
    }
    let values_max = citus_values_rows(conn, model, call.kind).filter(|&max| head.len() <= max);
    let arrays = arrays::encode::<T, R>(model, call.kind, &head)?;
    if arrays.iter().map(|a| a.0.len()).sum::<usize>() > SHORT_PATH_BYTES {
        // Too large for one message (the server closes the connection on a
        // message of 1 GB): the COPY path sends the rows one by one.
        drop(arrays);
        return long_of::<T, C, R>(conn, model, head, call).await;
    }
    let result = short_arrays(conn, model, offered, arrays, values_max, call).await;
    // (The batch is at hand: a value its column's type modifier refuses
    // is looked for in it only once the server refused one.)
    if let Err(e) = &result
        && Watch::refers(e)
    {
        call.watch = Some(Watch::of_rows::<T, R>(model, &head));
    }
    result
}

/// [`short`] once the batch is encoded as `arrays`.
async fn short_arrays<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    offered: u64,
    arrays: Vec<crate::wire::Encoded>,
    values_max: Option<usize>,
    call: &mut Call<'_>,
) -> Result<Report, Error> {
    // After a row the table refused (of a stored key, perhaps), on Citus:
    // one statement from the arrays, behind Citus's anti-join (see
    // `Form::after_refused`).
    let mut filtered = false;
    let mut values_max = values_max;
    // On Citus, a longer batch as a few `VALUES` statements, one per run of
    // shard ids (see `shards`).
    if let Some(max) = values_max
        && call.ledger.is_none()
        && offered >= shards::GROUPED_FROM as u64
        && shards::worth_reading(conn.client(), model)
    {
        match grouped(conn, model, offered, &arrays, max).await {
            Grouped::Done(result) if result.as_ref().is_err_and(Form::row_refused) => {
                (filtered, values_max) = (true, None);
            }
            Grouped::Done(result) => return result,
            Grouped::OneStatement => {}
        }
    }
    // A new connection's first call, when this process has checked the table.
    let passed = first::eligible(conn.client(), model, call.kind, conn.nested(), call.ledger.is_some());
    if !passed.is_empty() {
        match first::run(conn.client(), model, offered, &arrays, &passed).await {
            first::First::Done(report) => return Ok(report),
            first::First::Failed(error) => return Err(error),
            first::First::Check => {}
        }
    }
    // On Citus, the plain call's rows as one multi-row `VALUES` statement
    // (of `values_max` rows at most: see `call_values`).
    let distinct = arrays.first().map_or(0, arrays::element_count);
    let mut rechecked = false;
    'statement: loop {
        let (values, rows) = match values_max {
            Some(max) => {
                // (Of the batch's own length on a target with a `BEFORE
                // INSERT` row trigger: see `padding_refused`.)
                let max = if crate::statements::unpadded(conn.client(), model) { max.min(distinct) } else { max };
                let (values, rows) = arrays::values(&arrays, max);
                (values, Some(rows))
            }
            None => (Vec::new(), None),
        };
        let params = if rows.is_some() {
            arrays::values_params(model, &values)
        } else {
            arrays::params(model, call.kind, &arrays)
        };
        // (A staging table serves only the COPY path.)
        let dialect = crate::statements::dialect(conn.client(), model).without_stage();
        let mut form = if filtered { Form::Filtered } else { Form::first(model, call.kind, offered, dialect) };
        loop {
            let shape = (form, rows, distinct);
            let mut result = short_attempt(conn, model, offered, &params, call, true, shape).await;
            for prepared in [true, false] {
                if !result.as_ref().is_err_and(Error::is_stale_statement) {
                    break;
                }
                result = short_attempt(conn, model, offered, &params, call, prepared, shape).await;
            }
            let result = match result {
                // The rows repeated to round the statement up were inserted
                // (rolled back): the same rows as a statement of their own length.
                Ok(None) => {
                    values_max = Some(distinct);
                    continue 'statement;
                }
                Ok(Some(report)) => Ok(report),
                Err(e) => Err(e),
            };
            if let Some(again) = form.after(model, &result) {
                form = again;
                continue;
            }
            let changed = |e: &Error| {
                Form::index_changed(e)
                    || Form::plan_changed(e)
                    || Form::name_gone(e)
                    || Form::cast_refused(e)
                    || Form::length_refused(model, e)
            };
            if !rechecked && result.as_ref().is_err_and(changed) {
                // The `ON CONFLICT` form's guard (also a variant's: returning
                // rows, upsert) found the key's index or shape changed since
                // the connection checked the table, or the server would
                // describe a prepared statement's result otherwise now
                // (nothing was written), or a statement names what the
                // table no longer has (an id column dropped) or casts what
                // it no longer can (an id column now a uuid), or a
                // `varchar(n)` key may have been widened: the next attempt
                // checks it again, and runs a statement built for what the
                // check finds, or returns the check's explanation.
                crate::statements::forget_prepared(conn.client(), model);
                rechecked = true;
                continue;
            }
            // The plain call's `ON CONFLICT` statement is the insert alone;
            // on Citus, the returning ones' too (the upsert's `ON CONFLICT DO
            // UPDATE` checks every offered row whatever comes before it).
            let alone = match call.kind {
                Kind::CreateNew => true,
                Kind::Keys | Kind::Positions => crate::statements::dialect(conn.client(), model).is_citus(),
                Kind::Upsert(_) => false,
            };
            if let Some(again) = form.after_refused(alone, &result) {
                form = again;
                if rows.is_some() {
                    // (A `VALUES` statement: the filtered form reads arrays.)
                    (filtered, values_max) = (true, None);
                    continue 'statement;
                }
                continue;
            }
            return result;
        }
    }
}

/// How [`grouped`] ended.
enum Grouped {
    /// The call's result.
    Done(Result<Report, Error>),
    /// Nothing was written (the call's transaction or savepoint is rolled
    /// back): send the batch as one statement.
    OneStatement,
}

/// The plain call on Citus as one `VALUES` statement per run of shard ids
/// (see [`shards`]), in the call's transaction or savepoint, which first
/// reads the shard map (pipelined with `BEGIN` on a `Client`).
async fn grouped<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    offered: u64,
    arrays: &[crate::wire::Encoded],
    max: usize,
) -> Grouped {
    let (client, nested) = (conn.client(), conn.nested());
    let (scope, map) = if nested {
        match Scope::begin(client, true).await {
            Ok(scope) => (scope, shards::read(client, model).await),
            Err(e) => return Grouped::Done(Err(Error::at_step(model, Step::Begin)(e))),
        }
    } else {
        match Scope::begin_then(client, shards::read(client, model)).await {
            (Ok(scope), map) => (scope, map),
            (Err(e), _) => return Grouped::Done(Err(Error::at_step(model, Step::Begin)(e))),
        }
    };
    let columns: Vec<Vec<arrays::Element>> = arrays.iter().map(arrays::elements).collect();
    let Ok(Some(groups)) = map.map(|map| map.and_then(|map| map.split(&columns))) else {
        // (No usable map, or the read failed: it aborted the transaction.)
        return match scope.rollback().await {
            Ok(()) => Grouped::OneStatement,
            Err(e) => Grouped::Done(Err(Error::at_step(model, Step::Insert)(e))),
        };
    };
    let pad = !crate::statements::unpadded(client, model);
    let groups: Vec<_> =
        groups.iter().map(|rows| arrays::values_of(&columns, rows, if pad { max } else { rows.len() })).collect();
    let distinct = columns.first().map_or(0, Vec::len);
    let padded = groups.iter().map(|(_, rows)| rows).sum::<usize>() > distinct;
    match arrays::run_values_groups(scope.client(), model, offered, &groups).await {
        // The rows repeated to round a statement up may have been
        // inserted: rolled back, one statement then.
        Ok((report, triggers)) if padding_refused(client, model, padded, distinct, &report, triggers) => {
            match scope.rollback().await {
                Ok(()) => Grouped::OneStatement,
                Err(e) => Grouped::Done(Err(Error::at_step(model, Step::Insert)(e))),
            }
        }
        Ok((report, _)) => {
            Grouped::Done(scope.commit().await.map(|()| report).map_err(Error::at_step(model, Step::Commit)))
        }
        // (A prepared statement the server forgot: rolled back, then the one
        // statement, which prepares again.)
        Err(e) if e.is_stale_statement() => match scope.rollback().await {
            Ok(()) => Grouped::OneStatement,
            Err(_) => Grouped::Done(Err(e)),
        },
        Err(e) => Grouped::Done(Err(scope.fail(e).await)),
    }
}

/// One attempt of the short path: a single statement runs as its own
/// transaction; with a batch id, an upsert (two statements), inside a
/// caller's transaction, or as Citus's `VALUES` statement (followed by its
/// guard), the attempt opens a transaction (or savepoint). `Ok(None)` when
/// a `VALUES` statement rounded up by repeats of its last row (of
/// `distinct` rows) may have inserted the repeats (a trigger that gives
/// each row a new key, where the repeats would otherwise meet `ON
/// CONFLICT`): rolled back, nothing written.
async fn short_attempt<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    offered: u64,
    params: &[arrays::Param<'_>],
    call: &mut Call<'_>,
    prepared: bool,
    (form, values, distinct): (Form, Option<usize>, usize),
) -> Result<Option<Report>, Error> {
    let padded = values.is_some_and(|rows| rows > distinct);
    let client = conn.client();
    if !call.needs_transaction(conn.nested()) {
        let Some(rows) = values else {
            let (report, proof) = arrays::run(client, model, offered, params, call, prepared, form).await?;
            if !proof {
                no_insert_rule(client, model, call.kind, &report).await?;
            }
            return Ok(Some(report));
        };
        // A `VALUES` statement, followed by its guard: in a transaction of
        // their own, pipelined with its `BEGIN` (one round trip), then
        // `COMMIT`.
        let statement = [(rows, params)];
        let ran = arrays::run_values(client, model, offered, &statement, prepared);
        let (scope, ran) = Scope::begin_then(client, ran).await;
        let scope = scope.map_err(Error::at_step(model, Step::Begin))?;
        return match ran {
            Err(e) => Err(scope.fail(e).await),
            Ok((report, triggers)) if padding_refused(client, model, padded, distinct, &report, triggers) => {
                scope.rollback().await.map_err(Error::at_step(model, Step::Insert))?;
                Ok(None)
            }
            Ok((report, _)) => {
                scope.commit().await.map_err(Error::at_step(model, Step::Commit))?;
                Ok(Some(report))
            }
        };
    }
    let scope = Scope::begin(client, conn.nested()).await.map_err(Error::at_step(model, Step::Begin))?;
    let attempt = async {
        let claimed = match claim(&scope, model, call.ledger, call.fingerprint.as_ref(), call.kind).await? {
            Ok(claimed) => claimed,
            Err(replay) => return Ok(Err(replay)),
        };
        let (report, refused) = match values {
            Some(rows) => {
                let (report, triggers) =
                    arrays::run_values(client, model, offered, &[(rows, params)], prepared).await?;
                let refused = padding_refused(client, model, padded, distinct, &report, triggers);
                (report, refused)
            }
            None => {
                let (report, proof) = arrays::run(client, model, offered, params, call, prepared, form).await?;
                if !proof {
                    no_insert_rule(client, model, call.kind, &report).await?;
                }
                (report, false)
            }
        };
        Ok(Ok((claimed, report, refused)))
    }
    .await;
    match attempt {
        Err(e) => Err(scope.fail(e).await),
        Ok(Err(replay)) => {
            scope.commit().await.map_err(Error::at_step(model, Step::Commit))?;
            Ok(Some(replay))
        }
        Ok(Ok((_, _, true))) => {
            scope.rollback().await.map_err(Error::at_step(model, Step::Insert))?;
            Ok(None)
        }
        Ok(Ok((claimed, report, false))) => {
            finish(scope, model, call.ledger, claimed, &report).await?;
            Ok(Some(report))
        }
    }
}

/// Whether the plain call's multi-row `VALUES` statements on Citus, rounded
/// up by repeats of their last row (`padded`; `distinct` rows offered), may
/// have inserted a repeat, and must be rolled back and sent at their own
/// length: they inserted more rows than were offered (a trigger that gives
/// each row a new key), or the target has a `BEFORE INSERT` row trigger
/// (`triggers`, the answer of the guard that follows the statements: see
/// [`arrays::run_values`]), which may give some rows a new key while most
/// of the batch was stored already, so that the count stays under
/// `distinct`. The guard reads the catalog after the insert, which holds
/// its lock on the table: a trigger created since would have been waited
/// for, and is seen. A refusal makes the connection's later calls of the
/// model send statements of their own length
/// ([`statements::set_unpadded`](crate::statements::set_unpadded)).
fn padding_refused(
    client: &Client,
    model: &'static Model,
    padded: bool,
    distinct: usize,
    report: &Report,
    triggers: bool,
) -> bool {
    let refused = padded && (report.inserted > distinct as u64 || triggers);
    if refused {
        crate::statements::set_unpadded(client, model);
    }
    refused
}

/// [`long`] of a batch held whole (`head`).
async fn long_of<T, C, R>(
    conn: &mut C,
    model: &'static Model,
    head: Vec<R>,
    call: &mut Call<'_>,
) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    R: Borrow<T>,
{
    let none = pin!(futures_util::stream::empty::<Result<R, BoxError>>());
    long::<T, C, _, R>(conn, model, head, none, call).await
}

/// The COPY path, in one transaction (or savepoint): the scratch table, the
/// COPY, the ledger's claim once the whole batch is read (its fingerprint
/// known; a replay rolls the copied rows back), the kind's statements, the
/// ledger's record, the commit.
async fn long<T, C, S, R>(
    conn: &mut C,
    model: &'static Model,
    head: Vec<R>,
    rows: Pin<&mut S>,
    call: &mut Call<'_>,
) -> Result<Report, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    S: Stream<Item = Result<R, BoxError>>,
    R: Borrow<T>,
{
    let mut scope = Scope::begin(conn.client(), conn.nested()).await.map_err(Error::at_step(model, Step::Begin))?;
    let attempt = async {
        let before = copy::scratch(scope.client(), model, call.kind).await?;
        let sent = copy::stream::<T, S, R>(scope.client(), model, head, rows, call, &before).await?;
        let claimed = match claim(&scope, model, call.ledger, call.fingerprint.as_ref(), call.kind).await? {
            Ok(claimed) => claimed,
            Err(replay) => return Ok(Err(replay)),
        };
        let and_commit = call.ledger.is_none();
        let report = copy::insert(&mut scope, model, &sent, before.with_id, call, and_commit).await?;
        Ok(Ok((claimed, report)))
    }
    .await;
    match attempt {
        Err(e) => Err(scope.fail(e).await),
        Ok(Err(replay)) => {
            scope.rollback().await.map_err(Error::at_step(model, Step::Commit))?;
            Ok(replay)
        }
        Ok(Ok((claimed, report))) => {
            finish(scope, model, call.ledger, claimed, &report).await?;
            Ok(report)
        }
    }
}

/// Claims the call's batch id, if it has one: `Ok(Ok(target))` when claimed
/// (or no batch id), `Ok(Err(report))` for a replay.
async fn claim(
    scope: &Scope<'_>,
    model: &'static Model,
    ledger: Option<(&Ledger, &str)>,
    fingerprint: Option<&Fingerprint>,
    kind: &Kind,
) -> Result<Result<Option<String>, Report>, Error> {
    let Some((ledger, batch_id)) = ledger else { return Ok(Ok(None)) };
    let fingerprint = fingerprint.expect("a call with a batch id fingerprints its batch before claiming it");
    match ledger::claim(scope.client(), model, ledger, batch_id, fingerprint, kind).await? {
        Claim::Claimed(target) => Ok(Ok(Some(target))),
        Claim::Replay(report) => Ok(Err(report)),
    }
}

/// Records the counts under the claimed batch id, and commits.
async fn finish(
    scope: Scope<'_>,
    model: &'static Model,
    ledger: Option<(&Ledger, &str)>,
    claimed: Option<String>,
    report: &Report,
) -> Result<(), Error> {
    if let (Some(target), Some((ledger, batch_id))) = (claimed, ledger)
        && let Err(e) = ledger::record(scope.client(), model, ledger, &target, batch_id, report).await
    {
        return Err(scope.fail(e).await);
    }
    scope.commit().await.map_err(Error::at_step(model, Step::Commit))
}

/// After the plain call's statement inserted nothing (`report`; not
/// Citus's `VALUES` statements, whose guard looks for a rule itself), the
/// schema check's refusal if the target now has an `INSERT` or `UPDATE`
/// rule (created since the check, which refuses one), read in the call's
/// transaction or savepoint when it has one. A `DO INSTEAD NOTHING` rule
/// turns the statement (either form: PostgreSQL refuses `ON CONFLICT`
/// under a rule only when the rule leaves a statement) into none at all,
/// answered `INSERT 0 0`, so no guard ran and the batch was not read, let
/// alone stored: without this the call would count every row skipped. One
/// round trip more, only when a batch inserted nothing. (The returning and
/// upsert statements' `WITH` queries are refused under such a rule, as
/// are Citus's.) The connection's statements are forgotten: one that ran
/// under the rule stays a no-op after the rule is dropped (its rewritten
/// form names no table whose change would plan it again). Inside a
/// caller's `REPEATABLE READ` or `SERIALIZABLE` transaction the catalog
/// is read as of its snapshot: a rule created since it began is not seen.
///
/// Not called after a statement that PostgreSQL refuses under such a rule:
/// the `ON CONFLICT` form on a direct connection, by its own `RETURNING`
/// ([`form::RULE_PROOF`]).
async fn no_insert_rule(client: &Client, model: &'static Model, kind: &Kind, report: &Report) -> Result<(), Error> {
    if !matches!(kind, Kind::CreateNew) || report.inserted > 0 || report.offered == 0 {
        return Ok(());
    }
    let target = sql::plan(model).target_regclass.as_str();
    let query = format!("{} ORDER BY 1", sql::insert_rule_names("pg_catalog.to_regclass($1)"));
    let rows =
        client.query_typed(&query, &[(&target, Type::TEXT)]).await.map_err(Error::at_step(model, Step::Insert))?;
    let rules: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    if rules.is_empty() {
        return Ok(());
    }
    crate::statements::forget_prepared(client, model);
    Err(Error::SchemaMismatch {
        table: model.qualified_name(),
        model: model.struct_name(),
        problems: vec![SchemaProblem::InsertRules { rules }],
    })
}

/// When a statement fails because the table does not fit the model (missing
/// table, column or unique index, wrong type), report the schema check's
/// explanation instead of the raw error; when the server refused a value
/// for its column's type modifier, name the row and field (`watch`: see
/// [`Watch`]).
///
/// In a caller's transaction the explanation's catalog reads run in a
/// savepoint of their own, rolled back: the failed call left the caller's
/// transaction as it was, and a read that fails too (after a `SET LOCAL
/// ROLE` to a role without `USAGE` on the table's schema, say) must not
/// abort it. Otherwise in a transaction of their own, rolled back: the
/// check sends its queries together, and behind a pooler in transaction
/// mode each of them on its own would end a transaction, after which the
/// pooler may hand the server to another client while the next answers are
/// still on their way (PgBouncer 1.18 then drops them, and the call would
/// wait for them for ever).
async fn explain_failure<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    error: Error,
    watch: Option<&Watch>,
) -> Error {
    if !error.connection_usable() {
        return error;
    }
    let how = Explanation::of(&error);
    if how.is_none() && !watch.is_some_and(|w| w.may_name(&error)) {
        return error;
    }
    let client = conn.client();
    let Ok(scope) = Scope::begin(client, conn.nested()).await else { return error };
    let mut explained = match how {
        Some(how) => how.explain(client, model, error).await,
        None => error,
    };
    // A value its column's type modifier refuses: the first offered row
    // with such a value, and its field (see `wire::limits`).
    if let Some(watch) = watch.filter(|w| w.may_name(&explained)) {
        explained = watch.name(client, model, explained).await;
    }
    // (Its catalog reads wrote nothing: a failed rollback leaves the
    // connection's next request to report what went wrong.)
    let _ = scope.rollback().await;
    explained
}

/// What [`explain_failure`] reads to explain an error.
enum Explanation {
    /// The table's `BEFORE INSERT` row triggers, which changed a key.
    KeyChanged,
    /// The schema check, after forgetting the connection's statements.
    CheckAfterChange,
    /// The schema check.
    Check,
}

impl Explanation {
    /// How to explain `error`, or `None` to return it as it is.
    fn of(error: &Error) -> Option<Explanation> {
        // A returning or upsert statement refused a stored row whose key the
        // table changed (see `variants::keys_kept`), or its update met one row
        // twice (21000: two offered keys that the table's triggers made one).
        let twice = error.db_error().is_some_and(|db| db.routine() == Some("ExecOnConflictUpdate"));
        let key_changed = (error.sqlstate() == Some(&SqlState::CARDINALITY_VIOLATION) && twice)
            || (error.sqlstate() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
                && error.db_error().is_some_and(|db| db.message().contains(variants::KEY_CHANGED)));
        if key_changed {
            return Some(Explanation::KeyChanged);
        }
        if Form::index_changed(error) || Form::stage_changed(error) {
            // (The COPY path's `ON CONFLICT` form; the short path got here
            // after checking again.) The connection's statements were built for
            // the table as its last check found it. (After the guard of an
            // insert from the staging table, the check keeps the connection's
            // next calls off it.)
            return Some(Explanation::CheckAfterChange);
        }
        // (55000: `ON CONFLICT` met a deferrable constraint on the key added
        // since the check; on Citus a worker's error, relayed.)
        let deferrable = error.sqlstate() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE);
        // (0A000: from the rewriter, an `INSERT` or `UPDATE` rule created
        // since the check, which refuses `ON CONFLICT` and the returning and
        // upsert statements' `WITH` queries on the table; from Citus's
        // planner, a table made since the check a kind the check refuses,
        // such as append-distributed, whose refusal comes before the
        // statement's guard runs. Refused as the statement was planned:
        // nothing was written. A feature the table does not change keeps
        // its own error.)
        let unsupported = error.sqlstate() == Some(&SqlState::FEATURE_NOT_SUPPORTED);
        // (22003: a value the column no longer holds, such as a `bigint` key
        // column narrowed to `integer` since the check: the model no longer
        // fits the table, which the check says. A value out of a range the
        // model allows, such as a `numeric(5, 2)` column's, passes the check
        // and keeps its own error.)
        let out_of_range = error.sqlstate() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE);
        // (22P02 from an enum's input: a label of the model's enum that the
        // type no longer has, renamed or dropped since the check, met by the
        // COPY into the scratch table; the check names the missing labels,
        // as the short path's statements get it to.)
        let enum_label = error.sqlstate() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
            && error.db_error().is_some_and(|db| matches!(db.routine(), Some("enum_in" | "enum_recv")));
        let schema_related = deferrable
            || unsupported
            || out_of_range
            || enum_label
            || error.sqlstate().is_some_and(|code| code.code().starts_with("42"));
        schema_related.then_some(Explanation::Check)
    }

    /// The explanation of `error` that the catalog gives on `client`, or
    /// `error` itself.
    async fn explain(self, client: &Client, model: &'static Model, error: Error) -> Error {
        match self {
            Explanation::KeyChanged => {
                let target = sql::plan(model).target_regclass.as_str();
                // (Each name once: see `sql::before_insert_row_triggers`.)
                let query = format!(
                    "SELECT DISTINCT t.tgname::text FROM ({}) AS t ORDER BY 1",
                    sql::before_insert_row_triggers("pg_catalog.to_regclass($1)")
                );
                let triggers = match client.query_typed(&query, &[(&target, Type::TEXT)]).await {
                    Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                    Err(_) => return error,
                };
                Error::SchemaMismatch {
                    table: model.qualified_name(),
                    model: model.struct_name(),
                    problems: vec![SchemaProblem::KeyChangedOnInsert { triggers }],
                }
            }
            Explanation::CheckAfterChange | Explanation::Check => {
                if matches!(self, Explanation::CheckAfterChange) {
                    crate::statements::forget_prepared(client, model);
                }
                match schema::verify(client, model).await {
                    Err(mismatch @ Error::SchemaMismatch { .. }) => mismatch,
                    _ => error,
                }
            }
        }
    }
}
