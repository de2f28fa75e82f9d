//! The protocol of one bulk call: scratch table, binary COPY, anti-join insert.

use std::borrow::{Borrow, Cow};
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, CopyInSink, SimpleQueryMessage};

use crate::BulkCreateNew;
use crate::connection::Connection;
use crate::error::{Error, SchemaProblem, Step};
use crate::ledger::Fingerprint;
use crate::model::{Column, Model, quote_ident};
use crate::repeats::{Repeats, key_hash};
use crate::report::{Outcome, Report};
use crate::schema::{self, KeyShape};
use crate::scope::Scope;
use crate::sql;
use crate::sql::KeyForm;
use crate::sql::variants;
use crate::statements::{self, Lookup, PLAIN, PLAIN_ON_CONFLICT};
use crate::types::{self, BulkValue, ValueError};

/// Batches shorter than this take the one-statement path (arrays bound as
/// parameters, one round trip); longer ones stream through binary COPY.
pub const SMALL_BATCH: usize = 5000;

/// Inserts every row whose unique key is not stored yet; see
/// [`BulkCreateNew::bulk_create_new`].
///
/// `It` and `R` are the iterator and row types of `I`, named as parameters
/// (see [`BulkCreateNew::bulk_create_new`]).
pub async fn bulk_create_new<T, C, I, It, R>(conn: &mut C, rows: I) -> Result<Outcome, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    I: IntoIterator<IntoIter = It, Item = R>,
    It: Iterator<Item = R>,
    R: Borrow<T>,
{
    let model: &'static Model = T::model();
    let mut rows = rows.into_iter();
    let mut head: Vec<R> = Vec::with_capacity(rows.size_hint().0.min(SMALL_BATCH));
    while head.len() < SMALL_BATCH {
        match rows.next() {
            Some(row) => head.push(row),
            None => break,
        }
    }
    if head.is_empty() {
        return Ok(Outcome::default());
    }
    if head.len() < SMALL_BATCH && !model.copy_only() {
        let offered = head.len() as u64;
        let arrays = if crate::sql::plan(model).client_ordered {
            encode_arrays_key_ordered::<T, _>(model, &head)?
        } else {
            encode_arrays::<T>(model, head.iter().map(|r| r.borrow()))?
        };
        drop(head);
        return small_batch(conn, model, offered, arrays).await;
    }
    match copy_batch::<T, C, _, R>(conn, model, head.into_iter().chain(rows)).await {
        Ok(outcome) => Ok(outcome),
        Err(e) => Err(explain_failure(conn, model, e).await),
    }
}

pub(crate) fn db_error(model: &Model, step: Step) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::database(model, step, source)
}

/// The session's scratch table for `model`, made first (after the schema
/// check) unless it `exists`, and counted as the connection's most recently
/// used; beyond [`SCRATCH_TABLES`](statements::SCRATCH_TABLES) per session,
/// the least recently used one is dropped (see [`statements::scratch_used`]).
pub(crate) async fn use_scratch(tx: &Client, model: &'static Model, exists: bool) -> Result<(), Error> {
    if !exists {
        ensure_scratch(tx, model).await?;
    }
    let Some(old) = statements::scratch_used(tx, model, !exists) else { return Ok(()) };
    // Only a table the current role may drop (after `SET ROLE`, another
    // role's may stay: it is dropped by a later call of its owner, or ends
    // with the session).
    let droppable = tx
        .query_typed(
            "SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class AS c \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[(&crate::sql::plan(old).scratch_regclass, Type::TEXT)],
        )
        .await
        .map_err(db_error(model, Step::Scratch))?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    if droppable {
        let sql = format!("DROP TABLE IF EXISTS pg_temp.{}", quote_ident(&crate::sql::plan(old).scratch));
        tx.batch_execute(&sql).await.map_err(db_error(model, Step::Scratch))?;
    }
    Ok(())
}

/// Checks the live table against the model and creates the session's scratch
/// table (which also marks the session as checked).
pub(crate) async fn ensure_scratch(tx: &Client, model: &'static Model) -> Result<(), Error> {
    let shape = schema::verify(tx, model).await?;
    let plan = crate::sql::plan(model);
    // Key columns compared otherwise than the model's types (citext, a
    // collation) take the table's type and collation in the scratch table.
    let create = if shape.is_plain() { plan.create_scratch.clone() } else { sql::scratch_ddl(model, &shape) };
    let sql = format!("{create}; {}", plan.grant_scratch);
    tx.batch_execute(&sql).await.map_err(db_error(model, Step::Scratch))
}

/// The one-statement path: the batch's columns as array parameters.
///
/// The statement is prepared once per client, right after the client has
/// checked the live table against the model (so "has a prepared statement"
/// means "has checked"). When the server no longer knows the statement
/// (`DISCARD ALL`, a new connection that took a dropped client's address, a
/// pooler that switched backends), the client checks and prepares again; if
/// that does not stick either, the batch runs unprepared after a fresh check.
/// A client whose statement went stale twice runs it unprepared for good, so
/// a pooler in transaction mode is not left a statement on every backend
/// (see `statements`).
async fn small_batch<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    offered: u64,
    arrays: Vec<Encoded>,
) -> Result<Outcome, Error> {
    let params: Vec<(&(dyn ToSql + Sync), Type)> = arrays
        .iter()
        .zip(&crate::sql::plan(model).small_types)
        .map(|(a, t)| (a as &(dyn ToSql + Sync), t.clone()))
        .collect();
    let mut form = Form::first(model, offered as usize);
    loop {
        let mut result = small_attempt(conn, model, &params, true, form).await;
        for prepared in [true, false] {
            if !result.as_ref().is_err_and(Error::is_stale_statement) {
                break;
            }
            result = small_attempt(conn, model, &params, prepared, form).await;
        }
        if let Some(again) = form.after(model, &result) {
            form = again;
            continue;
        }
        return match result {
            Ok(inserted) => Ok(Report::counts(offered, inserted)),
            Err(e) => Err(explain_failure(conn, model, e).await),
        };
    }
}

/// The two forms of a call's insert; see [`contention`](crate::contention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// The anti-join insert alone: fails with `unique_violation` on a key
    /// another writer stored after the statement's snapshot.
    Plain,
    /// The anti-join insert with `ON CONFLICT (key) DO NOTHING`.
    OnConflict,
}

/// Batches shorter than this go straight to the `ON CONFLICT` form: for a
/// few rows, what the plain form saves per new row (about a microsecond) is
/// less than what its anti-join costs to plan (some 70-100 µs whenever the
/// server plans the statement again, e.g. after the table was analyzed).
/// Measured on the retweeter table, each plan made afresh: at 100 rows the
/// plain form is 3% faster when every key is new and 3% slower when half are
/// stored; at 150 rows it is 4-7% faster, at 1,000 rows 25%.
pub const PLAIN_FROM: usize = 128;

impl Form {
    /// The form of the first attempt of a call on `rows` rows.
    pub(crate) fn first(model: &'static Model, rows: usize) -> Form {
        if rows >= PLAIN_FROM && model.contention().try_plain() { Form::Plain } else { Form::OnConflict }
    }

    /// Counts the outcome of an attempt in this form; returns the form to run
    /// the call again in: `ON CONFLICT`, after a plain attempt that met a
    /// key stored meanwhile (the attempt wrote nothing).
    pub(crate) fn after<T>(self, model: &'static Model, result: &Result<T, Error>) -> Option<Form> {
        if self != Form::Plain {
            return None;
        }
        let contention = model.contention();
        match result {
            // A key stored meanwhile, or the guard found no unique index
            // to rely on (see `sql::key_index_guard`): the attempt wrote
            // nothing, and the `ON CONFLICT` form decides.
            Err(e) if e.sqlstate() == Some(&SqlState::UNIQUE_VIOLATION) => {
                contention.conflicted();
                Some(Form::OnConflict)
            }
            Err(e) if e.sqlstate() == Some(&SqlState::DIVISION_BY_ZERO) => {
                // (Counted as a conflict: under REPEATABLE READ the guard
                // always refuses, and the next calls go straight to
                // ON CONFLICT for a while.)
                contention.conflicted();
                Some(Form::OnConflict)
            }
            Ok(_) => {
                contention.succeeded();
                None
            }
            Err(_) => None,
        }
    }

    /// The label of the plain call's short-batch statement in this form.
    fn label(self) -> &'static str {
        match self {
            Form::Plain => PLAIN,
            Form::OnConflict => PLAIN_ON_CONFLICT,
        }
    }

    /// The text of the plain call's short-batch statement in this form, for
    /// a table whose key compares as `shape` says.
    fn small_sql(self, model: &'static Model, shape: &KeyShape) -> Cow<'static, str> {
        let plan = crate::sql::plan(model);
        match (self, shape.is_plain()) {
            (Form::Plain, true) => Cow::Borrowed(&plan.small_insert_plain),
            (Form::OnConflict, true) => Cow::Borrowed(&plan.small_insert),
            // (Only a text key compares otherwise, and the client never
            // orders one: see `Plan::client_ordered`.)
            (Form::Plain, false) => Cow::Owned(sql::small_insert_plain_sql(model, plan.client_ordered, shape)),
            (Form::OnConflict, false) => Cow::Owned(sql::small_insert_sql(model, shape)),
        }
    }
}

/// The enabled `BEFORE INSERT` row triggers of the table `$1` names.
const BEFORE_INSERT_TRIGGERS: &str = "\
SELECT tgname::text FROM pg_catalog.pg_trigger
 WHERE tgrelid = pg_catalog.to_regclass($1) AND NOT tgisinternal AND tgenabled <> 'D'
   AND tgtype::int & 7 = 7 ORDER BY tgname";

/// When a statement fails because the table does not fit the model (missing
/// table, column or unique index, wrong type), report the schema check's
/// explanation instead of the raw error.
pub(crate) async fn explain_failure<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    error: Error,
) -> Error {
    if !error.connection_usable() {
        return error;
    }
    // A returning or upsert statement refused a stored row whose key the
    // table changed (see `variants::keys_kept`), or its update met one row
    // twice (21000: two offered keys that the table's triggers made one).
    let twice = error.db_error().is_some_and(|db| db.routine() == Some("ExecOnConflictUpdate"));
    let key_changed = (error.sqlstate() == Some(&SqlState::CARDINALITY_VIOLATION) && twice)
        || (error.sqlstate() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
            && error.db_error().is_some_and(|db| db.message().contains(variants::KEY_CHANGED)));
    if key_changed {
        let target = crate::sql::plan(model).target_regclass.as_str();
        let triggers = match conn.client().query_typed(BEFORE_INSERT_TRIGGERS, &[(&target, Type::TEXT)]).await {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(_) => return error,
        };
        return Error::SchemaMismatch {
            table: model.qualified_name(),
            model: model.struct_name(),
            problems: vec![SchemaProblem::KeyChangedOnInsert { triggers }],
        };
    }
    let schema_related = error.sqlstate().is_some_and(|code| code.code().starts_with("42"));
    if !schema_related {
        return error;
    }
    match schema::verify(conn.client(), model).await {
        Err(mismatch @ Error::SchemaMismatch { .. }) => mismatch,
        _ => error,
    }
}

/// One attempt at the small-batch statement: in a savepoint inside a
/// caller's transaction, otherwise as its own (autocommit) transaction.
async fn small_attempt<C: Connection + ?Sized>(
    conn: &mut C,
    model: &'static Model,
    params: &[(&(dyn ToSql + Sync), Type)],
    prepared: bool,
    form: Form,
) -> Result<u64, Error> {
    if conn.nested() {
        let scope = Scope::begin(conn.client(), true).await.map_err(db_error(model, Step::Begin))?;
        let inserted = run_small(scope.client(), model, params, prepared, form).await?;
        scope.commit().await.map_err(db_error(model, Step::Commit))?;
        Ok(inserted)
    } else {
        run_small(conn.client(), model, params, prepared, form).await
    }
}

/// Runs the small-batch statement in `form` and returns the rows inserted.
/// A client without the prepared statement checks the schema first.
pub(crate) async fn run_small(
    client: &Client,
    model: &'static Model,
    params: &[(&(dyn ToSql + Sync), Type)],
    prepared: bool,
    form: Form,
) -> Result<u64, Error> {
    let label = form.label();
    let found = if prepared { statements::lookup(client, model, label) } else { Lookup::Unnamed };
    let statement = match found {
        Lookup::Prepared(statement) => Ok(statement),
        Lookup::Prepare | Lookup::Unnamed => {
            let prepared = matches!(found, Lookup::Prepare);
            let plan = crate::sql::plan(model);
            if prepared {
                // The check and the prepare of the statement for a table
                // that compares keys as the model does go out together (one
                // round trip); the statement runs only once the check passed.
                let plain = form.small_sql(model, &KeyShape::default());
                let (shape, statement) = futures_util::future::join(
                    schema::verify(client, model),
                    client.prepare_typed(&plain, &plan.small_types),
                )
                .await;
                let shape = shape?;
                let statement = if shape.is_plain() {
                    statement
                } else {
                    client.prepare_typed(&form.small_sql(model, &shape), &plan.small_types).await
                };
                let statement = statement.map_err(|source| insert_error(model, source))?;
                statements::put(client, model, label, statement.clone());
                Ok(statement)
            } else {
                let shape = schema::verify(client, model).await?;
                Err(form.small_sql(model, &shape))
            }
        }
    };
    match statement {
        Ok(statement) => {
            let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
            client.execute(&statement, &values).await.map_err(|source| {
                if source.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
                    statements::evict(client, model, label);
                }
                insert_error(model, source)
            })
        }
        Err(sql) => client.execute_typed(&sql, params).await.map_err(|source| insert_error(model, source)),
    }
}

/// The streaming path: binary COPY into the scratch table, then the insert.
/// (`R` is a parameter, not `I::Item`, so that the future's `Send` never
/// depends on proving `I: Iterator`; see [`bulk_create_new`].)
async fn copy_batch<T, C, I, R>(conn: &mut C, model: &'static Model, rows: I) -> Result<Outcome, Error>
where
    T: BulkCreateNew,
    C: Connection + ?Sized,
    I: Iterator<Item = R>,
    R: Borrow<T>,
{
    let plan = crate::sql::plan(model);
    let db = |step: Step| db_error(model, step);
    let nested = conn.nested();
    let mut scope = Scope::begin(conn.client(), nested).await.map_err(db(Step::Begin))?;
    let tx = scope.client();

    // 1. The scratch table, created (after the schema check) the first time
    //    this backend session sees the model. A pooler that switches backends,
    //    or DISCARD ALL, simply makes it absent again.
    let scratch_exists = tx
        .query_typed("SELECT to_regclass($1) IS NOT NULL", &[(&plan.scratch_regclass, Type::TEXT)])
        .await
        .map_err(db(Step::Scratch))?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    use_scratch(tx, model, scratch_exists).await?;

    // 2. Binary COPY, streaming: rows are encoded synchronously into a buffer
    //    that is sent whenever it passes CHUNK bytes, so no borrow of a row is
    //    held across an await (the future stays Send) and memory stays flat.
    let mut copy = CopyWriter::start(tx, model, true).await?;
    for row in rows {
        let full = copy.push::<T>(model, row.borrow())?;
        drop(row);
        if full {
            copy.flush(model).await?;
        }
    }
    let (offered, bytes_sent, repeats) = (copy.offered, copy.bytes_sent(), copy.repeats_possible());
    let copied = copy.finish(model).await?;
    debug_assert_eq!(copied, offered);

    // 3. The anti-join insert (and, inside a caller's transaction, emptying the
    //    scratch table, which ON COMMIT DELETE ROWS would only do at its commit).
    //    The commit goes in the same request as the insert: once the insert is
    //    sent, the call completes even if its future is dropped.
    let sort_kb = (!nested).then(|| sort_memory_kb(offered, bytes_sent));
    let inserted = insert_from_scratch(&mut scope, model, offered, repeats, sort_kb, true).await?;
    scope.commit().await.map_err(db(Step::Commit))?;
    Ok(Report::counts(offered, inserted))
}

/// The savepoint around the plain form of the COPY path's insert.
const PLAIN_SAVEPOINT: &str = "bulk_create_new_plain";

/// The COPY path's insert from the scratch table: the plain form first,
/// inside a savepoint; on `unique_violation` (a key another writer stored
/// meanwhile) back to the savepoint, and the `ON CONFLICT` form on the same
/// scratch rows (see [`contention`](crate::contention)). With `nested`, the
/// scratch table is emptied after the insert (`ON COMMIT DELETE ROWS` would
/// only act at the caller's commit). With `sort_kb`, the transaction's
/// `work_mem` is set first (`SET LOCAL`: it ends with the transaction), so
/// the sort of the batch stays in memory. One round trip, two after a
/// conflict. `offered` is the number of scratch rows; without `repeats`,
/// none of them repeats a key (the plain form needs no `DISTINCT ON`).
/// Returns the rows inserted.
pub(crate) async fn insert_from_scratch(
    scope: &mut Scope<'_>,
    model: &'static Model,
    offered: u64,
    repeats: bool,
    sort_kb: Option<u64>,
    and_commit: bool,
) -> Result<u64, Error> {
    let plan = crate::sql::plan(model);
    let tx = scope.client();
    let fail = |source| insert_error(model, source);
    let nested = scope.nested();
    let clear = if nested { format!("; {}", plan.clear) } else { String::new() };
    // The commit rides with the insert, except in a caller's transaction:
    // there the savepoint is released only once the insert has succeeded, so
    // that a dropped call is rolled back to it.
    let commit = if and_commit && !nested { format!("; {}", scope.commit_sql()) } else { String::new() };
    let set_memory = sort_kb.map(|kb| format!("SET LOCAL work_mem = '{kb}kB'; ")).unwrap_or_default();
    let before = usize::from(sort_kb.is_some());
    let mut form = Form::first(model, usize::try_from(offered).unwrap_or(usize::MAX));
    let mut sql = if form == Form::Plain {
        let insert = if repeats { &plan.insert_plain } else { &plan.insert_plain_distinct_keys };
        format!("{set_memory}SAVEPOINT {PLAIN_SAVEPOINT}; {insert}; RELEASE SAVEPOINT {PLAIN_SAVEPOINT}{clear}{commit}")
    } else {
        format!("{set_memory}{}{clear}{commit}", plan.insert)
    };
    let mut at = before + usize::from(form == Form::Plain);
    let mut refused: Option<Error> = None;
    loop {
        let request = tx.simple_query(&sql);
        if !commit.is_empty() {
            scope.commit_sent();
        }
        // When the commit went with the insert and the answer never came
        // (a lost connection), the commit is what is in doubt.
        let result = request.await.map_err(|source| {
            if !commit.is_empty() && source.as_db_error().is_none() {
                db_error(model, Step::Commit)(source)
            } else {
                fail(source)
            }
        });
        match &result {
            _ if commit.is_empty() => {}
            Ok(_) => scope.sent_ok(),
            Err(_) => scope.sent_failed(),
        }
        if refused.is_some()
            && let Err(e) = &result
            && e.sqlstate() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION)
        {
            // The plain attempt failed at its COMMIT (a deferred constraint
            // on another column), which ended the transaction: that is the
            // call's error, and nothing was written.
            return Err(refused.take().expect("checked above"));
        }
        if let Some(again) = form.after(model, &result) {
            form = again;
            sql = format!(
                "ROLLBACK TO SAVEPOINT {PLAIN_SAVEPOINT}; RELEASE SAVEPOINT {PLAIN_SAVEPOINT}; {}{clear}{commit}",
                plan.insert
            );
            at = 2;
            refused = result.err();
            continue;
        }
        return Ok(command_count(&result?, at));
    }
}

/// The row count of the `n`th statement (0-based) of a simple query.
fn command_count(messages: &[SimpleQueryMessage], n: usize) -> u64 {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(rows) => Some(*rows),
            _ => None,
        })
        .nth(n)
        .unwrap_or(0)
}

/// A parameter encoded ahead of time (a binary array), so nothing borrowed
/// from the rows lives across an await.
#[derive(Debug)]
pub(crate) struct Encoded(Bytes);

impl ToSql for Encoded {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The batch's values, column by column, each element length-prefixed as in
/// PostgreSQL's binary array format (-1 for NULL).
struct ColumnBuffers {
    types: Vec<Type>,
    elements: Vec<BytesMut>,
    /// Per column, per row: where the element's length prefix starts, and the length.
    spans: Vec<Vec<(usize, i32)>>,
    has_null: Vec<bool>,
    rows: usize,
}

impl ColumnBuffers {
    /// The value of column `c` in row `i` (without its length), `None` for NULL.
    fn value(&self, c: usize, i: usize) -> Option<&[u8]> {
        let (at, len) = self.spans[c][i];
        usize::try_from(len).ok().map(|len| &self.elements[c][at + 4..at + 4 + len])
    }

    /// The element of column `c` in row `i`, with its length prefix.
    fn element(&self, c: usize, i: usize) -> &[u8] {
        let (at, len) = self.spans[c][i];
        &self.elements[c][at..at + 4 + usize::try_from(len).unwrap_or(0)]
    }
}

/// Appends `value` to `buf` as PostgreSQL's binary formats lay out a field
/// (COPY) or an array element: its length (-1 for NULL), then its bytes.
/// Returns the length. After an error `buf` may end in a partial value.
fn put_value(value: &dyn BulkValue, ty: &Type, buf: &mut BytesMut) -> Result<i32, ValueError> {
    let at = buf.len();
    buf.put_i32(0);
    let len = match value.as_to_sql().to_sql_checked(ty, buf) {
        Ok(IsNull::Yes) => -1,
        Ok(IsNull::No) => {
            i32::try_from(buf.len() - at - 4).map_err(|_| ValueError::Encode("value larger than 2 GiB".into()))?
        }
        Err(e) => return Err(ValueError::Encode(e.to_string())),
    };
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(len)
}

/// Encodes the batch column by column, checking every value on the client.
fn encode_columns<'r, T: BulkCreateNew + 'r>(
    model: &Model,
    rows: impl ExactSizeIterator<Item = &'r T>,
) -> Result<ColumnBuffers, Error> {
    let n = rows.len();
    let columns = model.columns();
    let types: Vec<Type> = columns.iter().map(|c| c.pg_type().wire_type()).collect();
    // Room for every value of a fixed-width type (and a guess for the others)
    // with its length prefix, so the buffers do not grow value by value.
    let mut elements: Vec<BytesMut> = columns
        .iter()
        .map(|c| BytesMut::with_capacity(n * (4 + types::fixed_width(c.pg_type()).unwrap_or(16))))
        .collect();
    let mut spans: Vec<Vec<(usize, i32)>> = columns.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut has_null = vec![false; columns.len()];
    for (index, row) in rows.enumerate() {
        let values = row.copy_values();
        for (c, value) in values.as_ref().iter().enumerate() {
            let fail = |source| Error::InvalidValue { row: index, field: columns[c].field(), source };
            value.check().map_err(fail)?;
            let at = elements[c].len();
            let len = put_value(*value, &types[c], &mut elements[c]).map_err(fail)?;
            has_null[c] |= len < 0;
            spans[c].push((at, len));
        }
    }
    Ok(ColumnBuffers { types, elements, spans, has_null, rows: n })
}

/// A one-dimensional binary array: dimensions, null flag, element type,
/// length, lower bound, then the length-prefixed elements.
fn array(elem: &Type, has_null: bool, n: usize, body: &[u8]) -> Encoded {
    let mut out = array_header(elem, has_null, n, body.len());
    out.put_slice(body);
    Encoded(out.freeze())
}

/// The header of [`array`], in a buffer with room for `body` more bytes.
fn array_header(elem: &Type, has_null: bool, n: usize, body: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(20 + body);
    out.put_i32(1);
    out.put_i32(i32::from(has_null));
    out.put_u32(elem.oid());
    out.put_i32(n as i32);
    out.put_i32(1);
    out
}

/// One binary array per column (and one for the ordinals), in PostgreSQL's
/// array wire format, rows in offered order.
pub(crate) fn encode_arrays<'r, T: BulkCreateNew + 'r>(
    model: &Model,
    rows: impl ExactSizeIterator<Item = &'r T>,
) -> Result<Vec<Encoded>, Error> {
    let cols = encode_columns(model, rows)?;
    let n = cols.rows;
    let mut ords = BytesMut::with_capacity(12 * n);
    for i in 0..n {
        ords.put_i32(8);
        ords.put_i64(i as i64);
    }
    let mut out = vec![array(&Type::INT8, false, n, &ords)];
    out.extend(
        cols.elements.iter().zip(&cols.types).zip(&cols.has_null).map(|((body, ty), &null)| array(ty, null, n, body)),
    );
    Ok(out)
}

/// One binary array per column, rows sorted on the client into the order of
/// PostgreSQL's `ORDER BY key`, each key once: its first offered row (the
/// sort is stable), for a model whose key the client can order
/// ([`Plan::client_ordered`](crate::sql::Plan)). Two keys are equal when
/// their binary forms are (for these types, as in PostgreSQL; NULL equals
/// NULL, as in a `NULLS NOT DISTINCT` key).
pub(crate) fn encode_arrays_key_ordered<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
) -> Result<Vec<Encoded>, Error> {
    match &crate::sql::plan(model).key_form {
        Some(form) if form.packs() => encode_arrays_packed(model, rows, form),
        _ => encode_arrays_sorted(model, rows),
    }
}

/// [`encode_arrays_key_ordered`] for any client-orderable key: the batch
/// encoded column by column first, then sorted on the encoded keys.
fn encode_arrays_sorted<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
) -> Result<Vec<Encoded>, Error> {
    let cols = encode_columns(model, rows.iter().map(Borrow::borrow))?;
    let columns = model.columns();
    let key: Vec<&Column> = model.unique_key().collect();
    let key: Vec<(usize, &Column)> =
        key.iter().filter_map(|k| columns.iter().position(|c| std::ptr::eq(c, *k)).map(|i| (i, *k))).collect();
    let order = first_of_each_key_in_order(&cols, &key, crate::sql::plan(model).key_form.as_ref());
    Ok((0..columns.len())
        .map(|c| {
            // Whether the kept rows (not the dropped repeats) hold a NULL here.
            let has_null = cols.has_null[c] && order.iter().any(|&i| cols.value(c, i).is_none());
            let mut out = array_header(&cols.types[c], has_null, order.len(), cols.elements[c].len());
            for &i in &order {
                out.put_slice(cols.element(c, i));
            }
            Encoded(out.freeze())
        })
        .collect())
}

/// [`encode_arrays_key_ordered`] for a key whose form packs into 16 bytes
/// (see [`KeyForm`]), with few allocations, as it
/// runs for every short batch: every value is checked in offered order,
/// each row's key is written in its sort form as one `u128`, the pairs
/// (form, position) are sorted, and then each column's array is encoded
/// straight from the rows in that order.
fn encode_arrays_packed<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    rows: &[R],
    key: &KeyForm,
) -> Result<Vec<Encoded>, Error> {
    let columns = model.columns();
    let types = &crate::sql::plan(model).copy_types[1..];
    let invalid = |row: usize, c: usize, source| Error::InvalidValue { row, field: columns[c].field(), source };
    let mut value_buf = BytesMut::with_capacity(16);
    let mut keyed: Vec<(u128, usize)> = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let values = row.borrow().copy_values();
        let values = values.as_ref();
        for (c, value) in values.iter().enumerate() {
            value.check().map_err(|source| invalid(index, c, source))?;
        }
        let mut form = [0u8; 16];
        for k in &key.columns {
            value_buf.clear();
            let len = put_value(values[k.column], &types[k.column], &mut value_buf)
                .map_err(|source| invalid(index, k.column, source))?;
            let value = match usize::try_from(len) {
                Err(_) => None,
                Ok(len) if len + usize::from(k.nullable) == k.width => Some(&value_buf[4..]),
                Ok(len) => {
                    let message = format!("{len} bytes for a value of type {}", k.ty.sql_name());
                    return Err(invalid(index, k.column, ValueError::Encode(message)));
                }
            };
            types::write_sort_form(k.ty, k.nullable, value, &mut form[k.at..k.at + k.width]);
        }
        keyed.push((u128::from_be_bytes(form), index));
    }
    keyed.sort_unstable();
    keyed.dedup_by_key(|(form, _)| *form);

    let mut arrays = Vec::with_capacity(columns.len());
    for (c, column) in columns.iter().enumerate() {
        let guess = keyed.len() * (4 + types::fixed_width(column.pg_type()).unwrap_or(16));
        let mut out = array_header(&types[c], false, keyed.len(), guess);
        let mut has_null = false;
        for &(_, index) in &keyed {
            let values = rows[index].borrow().copy_values();
            let len = put_value(values.as_ref()[c], &types[c], &mut out).map_err(|source| invalid(index, c, source))?;
            has_null |= len < 0;
        }
        if has_null {
            // The header's flag: the array holds NULLs.
            out[4..8].copy_from_slice(&1i32.to_be_bytes());
        }
        arrays.push(Encoded(out.freeze()));
    }
    Ok(arrays)
}

/// The positions of the rows in key order, each key once (the first offered
/// row of it: the sorts are stable). `key` lists the key's columns (their
/// index in `cols`, and the column) in key order; every one is
/// [client-orderable](crate::types::PgType::client_orderable).
///
/// With a [`KeyForm`] (every key column has a fixed width), each row's key
/// is first written in its form, whose bytes sort as the key does, so the
/// sort compares byte strings instead of decoding the columns at every
/// comparison. (Forms of up to 16 bytes take [`encode_arrays_packed`].)
fn first_of_each_key_in_order(cols: &ColumnBuffers, key: &[(usize, &Column)], form: Option<&KeyForm>) -> Vec<usize> {
    let n = cols.rows;
    match form {
        Some(KeyForm { columns, width }) => {
            let width = *width;
            let mut forms = vec![0u8; n * width];
            for (i, form) in forms.chunks_exact_mut(width).enumerate() {
                for k in columns {
                    types::write_sort_form(k.ty, k.nullable, cols.value(k.column, i), &mut form[k.at..k.at + k.width]);
                }
            }
            let form = |i: usize| &forms[i * width..(i + 1) * width];
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| form(a).cmp(form(b)));
            order.dedup_by(|later, kept| form(*later) == form(*kept));
            order
        }
        None => {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| {
                key.iter()
                    .map(|&(c, k)| types::order_key(k.pg_type(), cols.value(c, a), cols.value(c, b)))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            order.dedup_by(|later, kept| key.iter().all(|&(c, _)| cols.value(c, *later) == cols.value(c, *kept)));
            order
        }
    }
}

/// `work_mem` (in kB) for the insert's sort in the call's own transaction:
/// room for the batch's tuples (their COPY bytes plus PostgreSQL's per-tuple
/// overhead, twice over for the sort's slack), at least 64 MB, at most 1 GB.
pub(crate) fn sort_memory_kb(rows: u64, bytes: u64) -> u64 {
    let need = 2 * (bytes + 96 * rows) / 1024;
    need.clamp(64 * 1024, 1024 * 1024)
}

/// Bytes per message sent to the server during COPY.
pub(crate) const CHUNK: usize = 128 * 1024;

/// The binary COPY header: signature, flags, header extension length.
pub(crate) const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Binary COPY into the session's scratch table: rows are encoded
/// synchronously into a buffer, which goes to the connection in messages of
/// about [`CHUNK`] bytes, so client memory stays flat and no borrow of a row
/// needs to live across an await.
pub(crate) struct CopyWriter {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    buf: BytesMut,
    /// The wire types of the COPY columns (looked up once, not per row).
    types: &'static [Type],
    /// Rows encoded so far.
    pub(crate) offered: u64,
    sent_bytes: u64,
    unsent: bool,
    /// The keys seen so far, to tell whether one may repeat (when asked).
    repeats: Option<Repeats>,
    /// Per column, whether it is part of the key.
    key_columns: &'static [bool],
    /// The batch's fingerprint so far, when asked (a call with a batch id).
    pub(crate) fingerprint: Option<Fingerprint>,
}

impl CopyWriter {
    /// Starts `COPY ... FROM STDIN (FORMAT binary)` into the scratch table;
    /// with `watch_repeats`, the writer tells whether a key may repeat (see
    /// [`repeats_possible`](Self::repeats_possible)).
    pub(crate) async fn start(tx: &Client, model: &'static Model, watch_repeats: bool) -> Result<CopyWriter, Error> {
        // Prepared apart: a COPY statement the server refuses at parse time
        // (a missing scratch table) leaves the connection as it was, but one
        // refused when it starts (a permission) leaves tokio-postgres's
        // connection unusable, and the error says so.
        let statement = tx.prepare(&crate::sql::plan(model).copy).await.map_err(db_error(model, Step::Copy))?;
        let sink = tx.copy_in::<_, Bytes>(&statement).await.map_err(|e| db_error(model, Step::Copy)(e).broken())?;
        let mut buf = BytesMut::with_capacity(CHUNK + 4096);
        buf.put_slice(COPY_HEADER);
        Ok(CopyWriter {
            sink: Box::pin(sink),
            buf,
            types: &crate::sql::plan(model).copy_types,
            offered: 0,
            sent_bytes: 0,
            unsent: false,
            repeats: if watch_repeats { Some(Repeats::new()) } else { None },
            key_columns: &crate::sql::plan(model).key_columns,
            fingerprint: None,
        })
    }

    /// Encodes one row (its position in the batch is the count so far);
    /// returns whether the buffer is full and should be [flushed](Self::flush).
    pub(crate) fn push<T: BulkCreateNew>(&mut self, model: &'static Model, row: &T) -> Result<bool, Error> {
        let start = self.buf.len();
        encode_row::<T>(model, self.types, self.offered as usize, row, &mut self.buf)?;
        if let Some(repeats) = self.repeats.as_mut().filter(|r| !r.maybe()) {
            // (encode_row wrote a whole row; a row it could not read back
            // would count as a possible repeat: the safe side.)
            repeats.insert(key_hash(&self.buf[start..], self.key_columns));
        }
        if let Some(fingerprint) = self.fingerprint.as_mut() {
            fingerprint.add_row(&self.buf[start..]);
        }
        self.offered += 1;
        self.unsent = true;
        Ok(self.buf.len() >= CHUNK)
    }

    /// Whether a key may have come twice so far (see [`repeats`](crate::repeats));
    /// always true when the writer was not asked to watch.
    pub(crate) fn repeats_possible(&self) -> bool {
        self.repeats.as_ref().is_none_or(Repeats::maybe)
    }

    /// Whether rows are buffered but not sent yet.
    pub(crate) fn pending(&self) -> bool {
        self.unsent
    }

    /// Bytes of COPY data sent or buffered so far.
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.sent_bytes + self.buf.len() as u64
    }

    /// Sends what is buffered.
    pub(crate) async fn flush(&mut self, model: &'static Model) -> Result<(), Error> {
        self.sent_bytes += self.buf.len() as u64;
        self.unsent = false;
        self.sink.as_mut().send(self.buf.split().freeze()).await.map_err(|source| copy_error(model, source))
    }

    /// Ends the COPY; returns the rows the server received.
    pub(crate) async fn finish(mut self, model: &'static Model) -> Result<u64, Error> {
        self.buf.put_i16(-1);
        self.flush(model).await?;
        self.sink.as_mut().finish().await.map_err(|source| copy_error(model, source))
    }
}

/// Appends one row in binary COPY format: the field count, the ordinal, then
/// each value as a length-prefixed encoding. Values are checked on the client
/// first, and an error names the row and the field.
pub(crate) fn encode_row<T: BulkCreateNew>(
    model: &Model,
    types: &[Type],
    index: usize,
    row: &T,
    buf: &mut BytesMut,
) -> Result<(), Error> {
    let values = row.copy_values();
    let values = values.as_ref();
    let start = buf.len();
    buf.put_i16(types.len() as i16);
    buf.put_i32(8);
    buf.put_i64(index as i64);
    for ((value, ty), column) in values.iter().zip(&types[1..]).zip(model.columns()) {
        let fail = |buf: &mut BytesMut, source: ValueError| {
            buf.truncate(start);
            Error::InvalidValue { row: index, field: column.field(), source }
        };
        if let Err(source) = value.check().and_then(|()| put_value(*value, ty, buf).map(drop)) {
            return Err(fail(buf, source));
        }
    }
    Ok(())
}

/// The server rejected COPY data: its context reads
/// `COPY __bulk_..., line N, column c: ...`; line N is row N-1.
pub(crate) fn copy_error(model: &Model, source: tokio_postgres::Error) -> Error {
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
    Error::database_at(model, Step::Copy, row, field, source)
}

/// The insert failed (NOT NULL, CHECK, out of range for the column's type...):
/// the server names the column, not the row.
pub(crate) fn insert_error(model: &Model, source: tokio_postgres::Error) -> Error {
    let field = source.as_db_error().and_then(|db| db.column()).map(|col| {
        model.columns().iter().find(|c| c.name() == col).map_or_else(|| col.to_owned(), |c| c.field().to_owned())
    });
    Error::database_at(model, Step::Insert, None, field, source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnSpec;
    use crate::types::{PgType, order_key};

    /// Column buffers holding `rows` (each a value per column, `None` for NULL).
    fn buffers(types: &[PgType], rows: &[Vec<Option<Vec<u8>>>]) -> ColumnBuffers {
        let mut elements: Vec<BytesMut> = types.iter().map(|_| BytesMut::new()).collect();
        let mut spans: Vec<Vec<(usize, i32)>> = types.iter().map(|_| Vec::new()).collect();
        let mut has_null = vec![false; types.len()];
        for row in rows {
            for (c, value) in row.iter().enumerate() {
                let at = elements[c].len();
                let len = value.as_ref().map_or(-1, |v| v.len() as i32);
                elements[c].put_i32(len);
                if let Some(v) = value {
                    elements[c].put_slice(v);
                }
                has_null[c] |= value.is_none();
                spans[c].push((at, len));
            }
        }
        let types = types.iter().map(|t| t.wire_type()).collect();
        ColumnBuffers { types, elements, spans, has_null, rows: rows.len() }
    }

    /// What `first_of_each_key_in_order` must return, the slow way: a stable
    /// sort with `order_key`, then the first row of each run of equal keys.
    fn reference(cols: &ColumnBuffers, key: &[(usize, &Column)]) -> Vec<usize> {
        let compare = |a: usize, b: usize| {
            key.iter()
                .map(|&(c, k)| order_key(k.pg_type(), cols.value(c, a), cols.value(c, b)))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        };
        let mut order: Vec<usize> = (0..cols.rows).collect();
        order.sort_by(|&a, &b| compare(a, b));
        let mut out: Vec<usize> = Vec::new();
        for i in order {
            if out.last().is_none_or(|&last| compare(last, i).is_ne()) {
                out.push(i);
            }
        }
        out
    }

    #[derive(crate::BulkCreateNew, Debug, Clone)]
    #[bulk(table = "packed", unique(a, b), nulls_not_distinct)]
    struct Packed {
        payload: String,
        a: i64,
        b: Option<i32>,
    }

    #[derive(crate::BulkCreateNew, Debug, Clone)]
    #[bulk(table = "flags", unique(on, day))]
    struct Flags {
        on: bool,
        day: i16,
        note: Option<String>,
    }

    fn bytes(arrays: &[Encoded]) -> Vec<Vec<u8>> {
        arrays.iter().map(|a| a.0.to_vec()).collect()
    }

    #[test]
    fn packed_keys_give_the_arrays_of_the_general_sort() {
        let mut seed = 3u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        for form in [&crate::sql::plan(Packed::model()).key_form, &crate::sql::plan(Flags::model()).key_form] {
            assert!(form.as_ref().is_some_and(KeyForm::packs), "{form:?}");
        }
        for len in [1, 2, 10, 300] {
            // Few distinct keys: many repeats, NULLs, negative numbers.
            let rows: Vec<Packed> = (0..len)
                .map(|i| Packed {
                    payload: format!("row {i}"),
                    a: next() % 5 - 2,
                    b: (next() % 4 != 0).then(|| (next() % 3 - 1) as i32 * 70_000),
                })
                .collect();
            let packed = encode_arrays_key_ordered::<Packed, _>(Packed::model(), &rows).unwrap();
            let general = encode_arrays_sorted::<Packed, _>(Packed::model(), &rows).unwrap();
            assert_eq!(bytes(&packed), bytes(&general), "{len} rows");
            let flags: Vec<Flags> = (0..len)
                .map(|i| Flags {
                    on: next() % 2 == 0,
                    day: (next() % 5 - 2) as i16,
                    note: (i % 3 == 0).then(String::new),
                })
                .collect();
            let packed = encode_arrays_key_ordered::<Flags, _>(Flags::model(), &flags).unwrap();
            let general = encode_arrays_sorted::<Flags, _>(Flags::model(), &flags).unwrap();
            assert_eq!(bytes(&packed), bytes(&general), "{len} rows");
        }
        // A bad value is reported with its row and field, whichever path.
        let bad = [Packed { payload: "ok".into(), a: 1, b: None }, Packed { payload: "a\0b".into(), a: 0, b: None }];
        for result in [
            encode_arrays_key_ordered::<Packed, _>(Packed::model(), &bad),
            encode_arrays_sorted::<Packed, _>(Packed::model(), &bad),
        ] {
            let err = result.unwrap_err();
            assert_eq!((err.row(), err.field()), (Some(1), Some("payload")), "{err}");
        }
    }

    #[test]
    fn rows_come_in_key_order_once_per_key_whatever_the_key_is() {
        static PACKED: [Column; 3] = [
            ColumnSpec::of("tweet", PgType::Int8).build(),
            ColumnSpec::of("retweeter", PgType::Int8).build(),
            ColumnSpec::of("day", PgType::Date).nullable().build(),
        ];
        static WIDE: [Column; 2] =
            [ColumnSpec::of("id", PgType::Uuid).build(), ColumnSpec::of("at", PgType::Timestamptz).nullable().build()];
        static VARIABLE: [Column; 2] =
            [ColumnSpec::of("owner", PgType::Int4).nullable().build(), ColumnSpec::of("blob", PgType::Bytea).build()];
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        // Keys of 13 to 25 bytes (some with a nullable column), sorted as
        // byte strings; with bytea, sorted column by column.
        let cases: [(&[Column], &[usize]); 5] =
            [(&PACKED, &[1, 0]), (&PACKED, &[2, 0]), (&PACKED, &[1, 0, 2]), (&WIDE, &[0, 1]), (&VARIABLE, &[1, 0])];
        for (columns, key_order) in cases {
            let types: Vec<PgType> = columns.iter().map(Column::pg_type).collect();
            // Few distinct values per column: many repeated keys, NULLs,
            // negative numbers, and byte strings that are prefixes of others.
            let mut value = |ty: PgType, nullable: bool| -> Option<Vec<u8>> {
                let r = next();
                if nullable && r % 5 == 0 {
                    return None;
                }
                let small = (r % 7) as i64 - 3;
                Some(match ty {
                    PgType::Int8 => small.to_be_bytes().to_vec(),
                    PgType::Int4 | PgType::Date => (small as i32).to_be_bytes().to_vec(),
                    PgType::Timestamptz => (small * 1_000_000).to_be_bytes().to_vec(),
                    PgType::Uuid => [(r % 3) as u8; 16].to_vec(),
                    PgType::Bytea => vec![0xab; (r % 3) as usize],
                    other => unreachable!("{other:?}"),
                })
            };
            let rows: Vec<Vec<Option<Vec<u8>>>> =
                (0..300).map(|_| columns.iter().map(|c| value(c.pg_type(), c.nullable())).collect()).collect();
            let cols = buffers(&types, &rows);
            let key: Vec<(usize, &Column)> = key_order.iter().map(|&i| (i, &columns[i])).collect();
            let form = KeyForm::for_key(columns, key.iter().map(|&(_, k)| k));
            assert_eq!(form.is_some(), !types.contains(&PgType::Bytea), "{columns:?}");
            let got = first_of_each_key_in_order(&cols, &key, form.as_ref());
            assert_eq!(got, reference(&cols, &key), "{columns:?}");
            assert!(got.len() < rows.len(), "the rows repeat keys: {}", got.len());
        }
    }
}
