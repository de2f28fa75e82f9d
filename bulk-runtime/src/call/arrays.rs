//! The short path: the whole batch as array parameters of one statement
//! (two for an upsert), prepared once per connection.
//!
//! A connection prepares a statement right after it checked the live table
//! against the model, in the same round trip, so "has the prepared
//! statement" means "has checked". When the server no longer knows the
//! statement (`DISCARD ALL`, a new connection that took a dropped client's
//! address, a pooler that switched backends), the driver runs the attempt
//! again: the connection checks and prepares again, and if that does not
//! stick either, the statement runs unprepared after a fresh check. A
//! connection whose statement went stale twice runs it unprepared for good
//! (see `statements`).

use std::borrow::{Borrow, Cow};

use futures_util::future::join3;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, RowStream, Statement};

use super::form::{Form, RULE_PROOF};
use super::spec::{Call, Mask, counted, counts, deliver, upsert_report};
use crate::BulkCreateNew;
use crate::api::{Keep, Kind, Report, UpdateSet};
use crate::error::{Error, Step};
use crate::model::Model;
use crate::schema;
use crate::sql;
use crate::sql::variants::{self, Returned, Source};
use crate::sql::{Dialect, KeyShape};
use crate::statements::{self, Lookup};
use crate::types::PgType;
use crate::wire::{self, Encoded};

/// A statement parameter with its type.
pub(crate) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The batch's columns as binary arrays: for the plain call of a model whose
/// key the client orders, in key order with each key once (see
/// [`Plan::client_ordered`](crate::sql::plan)); otherwise in offered order,
/// with the positions first.
pub(crate) fn encode<T: BulkCreateNew, R: Borrow<T>>(
    model: &'static Model,
    kind: &Kind,
    rows: &[R],
) -> Result<Vec<Encoded>, Error> {
    if matches!(kind, Kind::CreateNew) && sql::plan(model).client_ordered {
        wire::encode_arrays_key_ordered::<T, R>(model, rows)
    } else {
        wire::encode_arrays::<T>(model, rows.iter().map(Borrow::borrow))
    }
}

/// The arrays as parameters of the kind's first statement.
pub(crate) fn params<'a>(model: &'static Model, kind: &Kind, arrays: &'a [Encoded]) -> Vec<Param<'a>> {
    let types = match kind {
        Kind::CreateNew => sql::plan(model).small_types.clone(),
        _ => variants::array_types(model, false),
    };
    arrays.iter().zip(types).map(|(a, t)| (a as &(dyn ToSql + Sync), t)).collect()
}

/// At most this many rows go in one multi-row `VALUES` statement on Citus
/// (fewer when the model's columns would pass 65,535 parameters).
pub const CITUS_VALUES_ROWS: usize = 16_384;

/// The most parameters a statement can have (the protocol counts them in 16 bits).
pub(super) const MAX_PARAMS: usize = 65_535;

/// The most rows of a plain call on Citus that go as one multi-row `VALUES`
/// statement ([`sql::values_on_conflict`]), one parameter per value: for a
/// model whose key the client orders (rows sorted and each key once on the
/// client) and without array columns; `None` for other models. On Citus
/// such a statement is routed shard by shard, where `unnest` or a scratch
/// table is pulled through the coordinator (see `notes/citus.md`, §1.1).
pub(crate) fn citus_values_rows(model: &'static Model) -> Option<usize> {
    let columns = model.columns();
    let eligible = sql::plan(model).client_ordered
        && !columns.is_empty()
        && !columns.iter().any(|c| matches!(c.pg_type(), crate::types::PgType::Array(_)));
    eligible.then(|| CITUS_VALUES_ROWS.min(MAX_PARAMS / columns.len()))
}

/// The row count of the `VALUES` statement for `rows` rows, at most `max`:
/// rounded up (by less than an eighth, from 16 rows on), so that a
/// connection prepares a few dozen statements, not one per batch length.
fn values_bucket(rows: usize, max: usize) -> usize {
    let step = (rows.next_power_of_two() / 16).max(1);
    rows.div_ceil(step).saturating_mul(step).min(max).max(rows)
}

/// One value of a row, cut from a binary array: its bytes (sent as they
/// are, like a whole array), or `None` for NULL.
pub(crate) type Element = Option<Encoded>;

/// The number of elements of a one-dimensional binary array (as [`wire`]
/// encodes them): its header's length of the one dimension.
pub(crate) fn element_count(array: &Encoded) -> usize {
    let bytes = &array.0;
    let int = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if int(0) == 0 { 0 } else { usize::try_from(int(12)).unwrap_or(0) }
}

/// The elements of a one-dimensional binary array (as [`wire`] encodes them).
pub(crate) fn elements(array: &Encoded) -> Vec<Element> {
    let bytes = &array.0;
    let int = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let n = element_count(array);
    if n == 0 {
        return Vec::new();
    }
    let mut at = 20;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = int(at);
        at += 4;
        match usize::try_from(len) {
            Ok(len) => {
                out.push(Some(Encoded(bytes.slice(at..at + len))));
                at += len;
            }
            Err(_) => out.push(None),
        }
    }
    out
}

/// The plain call's key-ordered arrays (see [`encode`]) as the values of a
/// [`sql::values_on_conflict`] statement, row after row, with the row count
/// of that statement (at most `max`): the last row is repeated up to it
/// (a repeat meets `ON CONFLICT` and is not counted).
pub(crate) fn values(arrays: &[Encoded], max: usize) -> (Vec<Element>, usize) {
    let columns: Vec<Vec<Element>> = arrays.iter().map(elements).collect();
    let rows: Vec<usize> = (0..columns.first().map_or(0, Vec::len)).collect();
    values_of(&columns, &rows, max)
}

/// The rows `rows` (indexes, in order) of `columns` (each column's
/// elements, from [`elements`]) as the values of a
/// [`sql::values_on_conflict`] statement, row after row, with the row count
/// of that statement (see [`values`]).
pub(crate) fn values_of(columns: &[Vec<Element>], rows: &[usize], max: usize) -> (Vec<Element>, usize) {
    let bucket = values_bucket(rows.len(), max);
    let mut out = Vec::with_capacity(bucket * columns.len());
    for i in 0..bucket {
        let row = rows[i.min(rows.len().saturating_sub(1))];
        for column in columns {
            out.push(column[row].clone());
        }
    }
    (out, bucket)
}

/// The plain call on Citus as one [`sql::values_on_conflict`] statement per
/// group of rows (`groups`: each one's values, from [`values_of`], and row
/// count), pipelined on `client` inside the call's transaction or
/// savepoint, in the groups' order, with their guard behind them (see
/// [`run_values`]). The statements are kept per connection as [`run`]'s
/// are (and run unnamed where they went stale twice: a pooler); a stale one
/// fails the call with [`Error::is_stale_statement`], and the caller sends
/// the batch as one statement.
pub(crate) async fn run_values_groups(
    client: &Client,
    model: &'static Model,
    offered: u64,
    groups: &[(Vec<Element>, usize)],
) -> Result<(Report, bool), Error> {
    let params: Vec<Vec<Param<'_>>> = groups.iter().map(|(values, _)| values_params(model, values)).collect();
    let statements: Vec<(usize, &[Param<'_>])> =
        groups.iter().zip(&params).map(|((_, rows), params)| (*rows, params.as_slice())).collect();
    run_values(client, model, offered, &statements, true).await
}

/// The plain call on Citus as [`sql::values_on_conflict`] statements (each
/// of so many rows, with its parameters from [`values_params`]), in the
/// call's transaction or savepoint on `client`, pipelined in their order
/// and followed, in the same round trip, by their guard
/// ([`Plan::values_guard`](crate::sql::Plan)), which the server runs after
/// them, under their lock on the table; `prepared` is false for the last
/// try after stale statements. Returns the count (the sum of the
/// statements' command tags: exact for `VALUES` on Citus) and the guard's
/// answer: whether the target has a `BEFORE INSERT` row trigger. The
/// guard's refusal (the table changed since the check) is the call's
/// error; after a failed statement, that statement's error is.
pub(crate) async fn run_values(
    client: &Client,
    model: &'static Model,
    offered: u64,
    groups: &[(usize, &[Param<'_>])],
    prepared: bool,
) -> Result<(Report, bool), Error> {
    // (A staging table serves only the COPY path.)
    let dialect = statements::dialect(client, model).without_stage();
    let mut statements = Statements { client, model, prepared, checked: None, dialect };
    let mut ready = Vec::with_capacity(groups.len());
    for (rows, params) in groups {
        ready.push(statements.values(*rows, params).await?);
    }
    let statements = &statements;
    let runs = ready.iter().zip(groups).map(|(statement, (_, params))| statement.execute_tagged(statements, params));
    // (`join` polls the statements first: their requests go out first, as
    // `join_all` polls each of its futures in turn on its first poll. It
    // does so for up to 30 of them; a call sends at most 8, see
    // `shards::statements_for`.)
    debug_assert!(groups.len() <= 30, "the guard would not be sure to follow the statements");
    let guard = client.query_typed(sql::plan(model).values_guard.as_str(), &[]);
    let (results, guarded) = futures_util::future::join(futures_util::future::join_all(runs), guard).await;
    let mut inserted = 0;
    for result in results {
        inserted += result?;
    }
    let rows = guarded.map_err(Error::at_step(model, Step::Insert))?;
    let triggers = rows.first().is_some_and(|row| row.get::<_, bool>(0));
    Ok((Report::counts(offered, inserted), triggers))
}

/// The values of [`values`] as parameters, typed as the columns' elements.
pub(crate) fn values_params<'a>(model: &'static Model, values: &'a [Element]) -> Vec<Param<'a>> {
    let types: Vec<Type> = sql::plan(model)
        .small_types
        .iter()
        .map(|t| match t.kind() {
            tokio_postgres::types::Kind::Array(member) => member.clone(),
            _ => t.clone(),
        })
        .collect();
    values.iter().zip(types.iter().cycle()).map(|(v, t)| (v as &(dyn ToSql + Sync), t.clone())).collect()
}

/// Runs the kind's statements on `client` (in `form`, for the plain call and
/// the returning ones; the plain call's multi-row `VALUES` statements go
/// through [`run_values`]); `prepared`
/// is false for the last try after stale statements.
pub(crate) async fn run(
    client: &Client,
    model: &'static Model,
    offered: u64,
    params: &[Param<'_>],
    call: &mut Call<'_>,
    prepared: bool,
    form: Form,
) -> Result<(Report, bool), Error> {
    let dialect = statements::dialect(client, model);
    let mut statements = Statements { client, model, prepared, checked: None, dialect };
    match call.kind {
        Kind::CreateNew => {
            // (Decided as the statement is built: a check that ran before
            // it may just have found the connection direct.)
            let proof = || form == Form::OnConflict && statements::direct(client) == Some(true);
            let statement =
                statements.get(form.label(), false, params, |_, shape| form.small_sql(model, shape, proof())).await?;
            let inserted = statement.execute(&statements, params).await?;
            // A named statement is prepared only on a connection known to
            // be direct, and so was built with the clause (on Citus the
            // statement is a `WITH` query with `RETURNING`, which
            // PostgreSQL refuses under such a rule as well).
            let proof = match &statement {
                Prepared::Statement(..) => form == Form::OnConflict,
                Prepared::Text(sql) => sql.ends_with(RULE_PROOF),
            };
            Ok((Report::counts(offered, inserted), proof))
        }
        Kind::Keys | Kind::Positions => {
            let keys = matches!(call.kind, Kind::Keys);
            // (On Citus, behind Citus's anti-join after a row the table refused.)
            let filtered = form == Form::Filtered;
            let label = match (keys, filtered) {
                (true, false) => "keys",
                (false, false) => "positions",
                (true, true) => "keys filtered",
                (false, true) => "positions filtered",
            };
            let statement = statements
                .get(label, keys, params, |with_id, shape| {
                    let returned = if keys { Returned::Keys { with_id } } else { Returned::Positions };
                    let from = Source::Arrays(shape);
                    match filtered {
                        true => variants::returning_filtered(model, from, returned).into(),
                        false => variants::returning(model, from, Keep::First, returned).into(),
                    }
                })
                .await?;
            let rows = statement.query(&statements, params).await?;
            let inserted = deliver(model, rows, offered, call.receiver).await?;
            Ok((Report::counts(offered, inserted), false))
        }
        Kind::Upsert(set) => Ok((upsert(&mut statements, offered, params, set).await?, false)),
    }
}

/// An upsert's two statements: insert the new keys (and mark the rows they
/// came from), then update the stored ones.
async fn upsert(
    statements: &mut Statements<'_>,
    offered: u64,
    params: &[Param<'_>],
    set: &UpdateSet,
) -> Result<Report, Error> {
    let model = statements.model;
    // 1. The new keys, and which kept rows they came from.
    let label = format!("upsert insert {:?}", set.keep);
    let statement = statements
        .get(&label, false, params, |_, shape| {
            variants::returning(model, Source::Arrays(shape), set.keep, Returned::Positions).into()
        })
        .await?;
    let rows = statement.query(statements, params).await?;
    let mut done = Mask(vec![false; offered as usize]);
    let inserted = deliver(model, rows, offered, &mut done).await?;

    // 2. The stored keys, without the rows whose key step 1 inserted.
    let mut label = format!("upsert update {:?} {}", set.keep, set.only_if_changed);
    for c in &set.columns {
        label.push('\0');
        label.push_str(c.name());
    }
    let mut params = params.to_vec();
    params.push((&done.0, Type::BOOL_ARRAY));
    let statement = statements
        .get(&label, false, &params, |_, shape| variants::upsert_update(model, Source::Arrays(shape), set).into())
        .await?;
    let (remaining, updated) = counts(model, statement.query(statements, &params).await?).await?;
    Ok(upsert_report(offered, inserted, inserted + remaining, updated))
}

/// The statements of one attempt on one connection.
struct Statements<'a> {
    client: &'a Client,
    model: &'static Model,
    /// Whether statements are prepared (and kept per connection).
    prepared: bool,
    /// The schema check's result, once this attempt has run it.
    checked: Option<KeyShape>,
    /// The table's dialect: the connection's last check's, then this attempt's.
    dialect: Dialect,
}

/// A statement of the short path: prepared (and kept per connection, under
/// its label), or its text when the connection does not prepare.
enum Prepared {
    Statement(Statement, String),
    Text(String),
}

impl Statements<'_> {
    /// The statement `label`: the connection's prepared one, or else made
    /// by `build` (given whether the table has a usable id column, checked
    /// only when `wants_id`, and how it compares keys) after the schema
    /// check. The check, the id check and the prepare of the statement for
    /// a table as the model describes it go out together, in one round trip;
    /// the statement runs only once the check has passed.
    async fn get(
        &mut self,
        label: &str,
        wants_id: bool,
        params: &[Param<'_>],
        build: impl Fn(bool, &KeyShape) -> Cow<'static, str>,
    ) -> Result<Prepared, Error> {
        let (client, model) = (self.client, self.model);
        let labelled = |dialect: Dialect| format!("{label}{}", dialect.label_suffix());
        let found =
            if self.prepared { statements::lookup(client, model, &labelled(self.dialect)) } else { Lookup::Unnamed };
        let (prepare, after_check) = match found {
            Lookup::Prepared(statement) => return Ok(Prepared::Statement(statement, labelled(self.dialect))),
            Lookup::Prepare => (true, false),
            Lookup::PrepareAfterCheck => (false, true),
            Lookup::Unnamed => (false, false),
        };
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let guess_id = wants_id && model.id_column().is_some();
        // (In the dialect the connection's last check found: on Citus, a
        // guess in PostgreSQL's would be prepared, then built and prepared
        // again once the check told.)
        let guessed = KeyShape { dialect: self.dialect, ..KeyShape::default() };
        let guess = build(guess_id, &guessed);
        // Only a guess that prepares on every table the check accepts goes
        // out with the check: a failed prepare would abort the call's
        // transaction, and the statement built after the check would then
        // fail with 25P02 instead of running. Not such a guess: one with a
        // nullable text key, which compares as `ARRAY[k]` and does not
        // parse for a `varchar` column against the batch's `text` (see
        // `schema::key_as`), and one that returns the id column, which the
        // table may lack (the rows are then returned without ids), and one
        // for a table whose guard, the connection's last check found, reads
        // the columns' types from the catalog (see `KeyShape::catalog_guard`:
        // the guess would be made again, or fail to prepare when the
        // table's name finds another type first).
        let guess_parses = !guess_id
            && !model.unique_key().any(|c| c.nullable() && c.pg_type() == PgType::Text)
            && !statements::catalog_guard(client, model);
        let prepare_guess = prepare && guess_parses;
        let (shape, with_id, statement) =
            join3(self.check(), async { if wants_id { id_usable(client, model).await } else { Ok(false) } }, async {
                match prepare_guess {
                    true => Some(client.prepare_typed(&guess, &types).await),
                    false => None,
                }
            })
            .await;
        let (shape, with_id) = (shape?, with_id?);
        self.checked = Some(shape.clone());
        self.dialect = shape.dialect;
        // The check told whether the connection is direct: only then is a
        // name of this process's sure to be its own on the backend (see
        // `statements`), and the statement is prepared now.
        let prepare = prepare || (after_check && statements::direct(client) == Some(true));
        let guess_fits = shape.is_plain() && !shape.catalog_guard && shape.dialect == guessed.dialect;
        let (sql, statement) = if guess_fits && with_id == guess_id && prepare_guess == prepare {
            (guess, statement)
        } else {
            let sql = build(with_id, &shape);
            let built = match prepare {
                true => Some(client.prepare_typed(&sql, &types).await),
                false => None,
            };
            // A guess that failed to prepare (a lock or statement timeout)
            // aborted the call's transaction: its failure, not this
            // statement's 25P02, is the call's error.
            match (built, statement) {
                (Some(Err(e)), Some(Err(cause))) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                    (sql, Some(Err(cause)))
                }
                (built, _) => (sql, built),
            }
        };
        match statement {
            None => Ok(Prepared::Text(sql.into_owned())),
            Some(statement) => {
                let statement = statement.map_err(|source| Error::insert(model, source))?;
                let label = labelled(self.dialect);
                statements::put(client, model, &label, statement.clone());
                Ok(Prepared::Statement(statement, label))
            }
        }
    }

    /// The plain call's [`sql::values_on_conflict`] statement of `rows` rows.
    async fn values(&mut self, rows: usize, params: &[Param<'_>]) -> Result<Prepared, Error> {
        let model = self.model;
        let label = format!("create_new values {rows}");
        self.get(&label, false, params, |_, shape| sql::values_on_conflict(model, rows, shape).into()).await
    }

    /// The schema check, once per attempt.
    async fn check(&self) -> Result<KeyShape, Error> {
        match &self.checked {
            Some(shape) => Ok(shape.clone()),
            None => schema::verify(self.client, self.model).await,
        }
    }
}

impl Prepared {
    /// Runs the statement; returns the rows it wrote: its command tag, or
    /// on Citus the count its one row says (see [`Dialect::Citus`]).
    async fn execute(&self, on: &Statements<'_>, params: &[Param<'_>]) -> Result<u64, Error> {
        if on.dialect.is_citus() {
            let rows = self.query(on, params).await?;
            return counted(on.model, rows).await;
        }
        let result = match self {
            Prepared::Statement(statement, _) => on.client.execute_raw(statement, params.iter().map(|(v, _)| *v)).await,
            Prepared::Text(sql) => on.client.execute_typed(sql, params).await,
        };
        result.map_err(|source| self.failed(on, source))
    }

    /// Runs the statement; returns its command tag's count of rows (exact
    /// also on Citus for [`sql::values_on_conflict`]).
    async fn execute_tagged(&self, on: &Statements<'_>, params: &[Param<'_>]) -> Result<u64, Error> {
        let result = match self {
            Prepared::Statement(statement, _) => on.client.execute_raw(statement, params.iter().map(|(v, _)| *v)).await,
            Prepared::Text(sql) => on.client.execute_typed(sql, params).await,
        };
        result.map_err(|source| self.failed(on, source))
    }

    /// Runs the statement; returns its rows.
    async fn query(&self, on: &Statements<'_>, params: &[Param<'_>]) -> Result<RowStream, Error> {
        let result = match self {
            Prepared::Statement(statement, _) => on.client.query_raw(statement, params.iter().map(|(v, _)| *v)).await,
            Prepared::Text(sql) => on.client.query_typed_raw(sql, params.iter().map(|(v, t)| (*v, t.clone()))).await,
        };
        result.map_err(|source| self.failed(on, source))
    }

    /// The error of a failed run; a prepared statement the server no longer
    /// knows is forgotten.
    fn failed(&self, on: &Statements<'_>, source: tokio_postgres::Error) -> Error {
        let error = Error::insert(on.model, source);
        if let (true, Prepared::Statement(_, label)) = (error.is_stale_statement(), self) {
            statements::evict(on.client, on.model, label);
        }
        error
    }
}

/// Whether the target has the model's id column with an integer type.
async fn id_usable(client: &Client, model: &'static Model) -> Result<bool, Error> {
    let Some(id) = model.id_column() else { return Ok(false) };
    let target = sql::plan(model).target_regclass.as_str();
    let row = client
        .query_typed(variants::ID_COLUMN_USABLE, &[(&target, Type::TEXT), (&id, Type::TEXT)])
        .await
        .map_err(Error::at_step(model, Step::SchemaCheck))?;
    Ok(row.first().is_some_and(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_buckets_cover_the_rows_by_less_than_an_eighth_and_are_few() {
        let max = CITUS_VALUES_ROWS;
        let mut buckets = std::collections::BTreeSet::new();
        for rows in 1..=max {
            let b = values_bucket(rows, max);
            assert!(b >= rows && b <= max, "{rows} -> {b}");
            assert!(rows <= 16 || (b - rows) * 8 <= rows, "{rows} -> {b}");
            buckets.insert(b);
        }
        assert!(buckets.len() < 120, "{} statements", buckets.len());
        assert_eq!(values_bucket(100, 40), 100, "never fewer rows than the batch has");
    }

    #[test]
    fn values_are_the_arrays_elements_row_after_row_the_last_row_repeated() {
        let column = |values: &[Option<i64>]| {
            let mut body = bytes::BytesMut::new();
            for v in values {
                match v {
                    Some(v) => {
                        body.extend_from_slice(&8i32.to_be_bytes());
                        body.extend_from_slice(&v.to_be_bytes());
                    }
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            wire::array(&Type::INT8, values.contains(&None), values.len(), &body)
        };
        let rows = 17;
        let a: Vec<Option<i64>> = (0..rows).map(Some).collect();
        let b: Vec<Option<i64>> = (0..rows).map(|i| (i % 3 != 0).then_some(-i)).collect();
        let (values, bucket) = values(&[column(&a), column(&b)], 1000);
        assert_eq!(bucket, 18);
        assert_eq!(values.len(), 2 * bucket);
        let decode = |e: &Element| e.as_ref().map(|b| i64::from_be_bytes(b.0[..].try_into().unwrap()));
        for row in 0..bucket {
            let i = row.min(rows as usize - 1);
            assert_eq!((decode(&values[2 * row]), decode(&values[2 * row + 1])), (a[i], b[i]), "row {row}");
        }
    }
}
