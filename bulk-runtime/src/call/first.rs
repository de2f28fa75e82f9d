//! A connection's first call without the schema check: the insert itself,
//! checked by what the server says about its result.
//!
//! On a new backend the schema check's catalog queries cost several times
//! the insert of a short batch (they are planned and run on cold caches;
//! see BENCHMARKS.md, issue 14). A job that opens a connection per batch
//! pays that on every call. So when this process has passed a check of the
//! model in the last [`TRUSTED_FOR`](schema::TRUSTED_FOR)
//! ([`schema::passed_checks`]), a connection's first short plain call
//! sends, in one round trip:
//!
//! ```sql
//! BEGIN;
//! INSERT INTO target (cols) VALUES ($1, $2, ...), ... ON CONFLICT (key) DO NOTHING RETURNING cols
//! ```
//!
//! (`unnest` of one array per column instead of `VALUES` from
//! [`VALUES_UP_TO`] rows; from [`PLAIN_FROM`](super::PLAIN_FROM) rows the
//! plain form, whose guard refuses a table without a unique index on the
//! key, as the connection's later calls do). The `RowDescription` of the
//! result names, per column, the table's OID, the column's type OID and its
//! type modifier. When they are those of a passed check, the call commits:
//! the rows went into the table the check accepted, with the types it
//! accepted (a type modifier that rounds a key shows as another modifier).
//! The count is the rows returned: exact on any server, Citus included.
//!
//! What else the check verifies, the statement enforces on its own: `ON
//! CONFLICT (key)` fails unless a unique, valid, immediate, non-partial
//! index on exactly the key columns exists (so no key is stored twice,
//! whatever changed); a missing column or table, a new required column, a
//! lost privilege make it fail. Models whose check reads more than that (a
//! text key's collation, a nullable field's `NOT NULL` column, arrays)
//! never take this path (see `Plan::first_insert`), nor does a table the
//! check found on Citus or in a database without `TEMPORARY` for every
//! role (see `schema::passed`). What the description cannot show, and the
//! statement does not refuse, a first call writes to as the table is: a
//! column made a domain over its type (the server describes the base type),
//! a required column that a trigger fills, `TEMPORARY` revoked since the
//! check. The connection's next call checks, as does every first call once
//! the pass is older than `TRUSTED_FOR`.
//!
//! Otherwise the call rolls back and runs as it always did, with the check:
//! after a result of other types or another table, after an error that a
//! table which no longer fits the model would raise (`table_changed`). When
//! no row came back (the description is only read from a row), the check
//! runs in the statement's transaction, which commits once it passes: what
//! the table's triggers wrote elsewhere is kept, as on any call; one round
//! trip more (under a session default of `REPEATABLE READ` or
//! `SERIALIZABLE`, whose snapshot may predate the insert's lock, the call
//! rolls back and runs as usual instead). A failed check, and such
//! an error, forget the passed checks. Two round trips, one more than a
//! warm call, and no prepared statement: the connection's next call checks
//! and prepares as before. Unlike the usual short path's statement, the
//! insert commits only once its answer was read: a first call dropped
//! before that (a timeout) writes nothing.

use futures_util::TryStreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Column};

use super::arrays::{self, Param};
use super::form::Form;
use crate::api::{Kind, Report};
use crate::error::{Error, Step};
use crate::model::Model;
use crate::schema::{self, Passed};
use crate::scope::Scope;
use crate::sql::{self, Dialect, KeyShape};
use crate::wire::Encoded;

/// Batches up to this many rows go as one multi-row `VALUES` statement
/// (when their values fit the protocol's 65,535 parameters), longer ones as
/// `unnest` of arrays: on a new backend `VALUES` costs the
/// server less for a few rows (no function to look up), more from a few
/// dozen (each parameter is parsed and planned on its own).
pub const VALUES_UP_TO: usize = 48;

/// What the first call did.
pub(super) enum First {
    /// It inserted (or found every key stored, and the check passed).
    Done(Report),
    /// It wrote nothing: run the call as usual, with the check.
    Check,
    /// It failed in a way that running it again would not change.
    Failed(Error),
}

/// Whether `client`'s call of `kind` on `model` may go without the check:
/// the plain call, outside a caller's transaction, without a batch id, on
/// a connection that has not checked the model yet, of a model whose check
/// this process passed on a table a first call may rely on.
pub(super) fn eligible(client: &Client, model: &'static Model, kind: &Kind, nested: bool, ledger: bool) -> Vec<Passed> {
    if nested || ledger || !matches!(kind, Kind::CreateNew) || sql::plan(model).first_insert.is_none() {
        return Vec::new();
    }
    // (A warm connection, the usual case, stops here, before the passed
    // checks are looked up and copied.)
    if !crate::statements::dialect_unknown(client, model) {
        return Vec::new();
    }
    let passed = schema::passed_checks(model);
    if passed.is_empty() || !crate::statements::first_call(client, model) {
        return Vec::new();
    }
    passed
}

/// Runs the first call of `offered` rows, `arrays` from [`arrays::encode`]
/// (key-ordered, each key once), trusting one of `passed`.
pub(super) async fn run(
    client: &Client,
    model: &'static Model,
    offered: u64,
    arrays: &[Encoded],
    passed: &[Passed],
) -> First {
    let rows = arrays.first().map_or(0, arrays::element_count);
    let plan = sql::plan(model);
    let form = Form::first(model, &Kind::CreateNew, rows as u64, Dialect::Postgres);
    let (sql, values);
    // (`VALUES` takes one parameter per value: a model of more than 1,365
    // columns goes as `unnest`, one per column, rather than past the
    // protocol's 65,535.)
    let fits = rows * model.columns().len() <= arrays::MAX_PARAMS;
    let params: Vec<Param<'_>> = if rows <= VALUES_UP_TO && fits && form == Form::OnConflict {
        let (elements, n) = arrays::values(arrays, rows);
        values = elements;
        sql = sql::returning_all(model, &sql::values_on_conflict(model, n, &KeyShape::default()));
        arrays::values_params(model, &values)
    } else {
        let statement = if form == Form::Plain { &plan.first_insert_plain } else { &plan.first_insert };
        sql = statement.clone().expect("an eligible model has its first inserts");
        arrays::params(model, &Kind::CreateNew, arrays)
    };
    let mut table_oid = None;
    let insert = async {
        let stream = client.query_typed_raw(&sql, params.iter().map(|(v, t)| (*v, t.clone()))).await?;
        let mut stream = std::pin::pin!(stream);
        let (mut returned, mut fits) = (0u64, None);
        while let Some(row) = stream.try_next().await? {
            if fits.is_none() {
                fits = Some(fitting(row.columns(), passed));
                table_oid = row.columns().first().and_then(Column::table_oid);
            }
            returned += 1;
        }
        Ok::<_, tokio_postgres::Error>((returned, fits))
    };
    let (scope, result) = Scope::begin_then(client, insert).await;
    let scope = match scope {
        Ok(scope) => scope,
        Err(e) => return First::Failed(Error::database(model, Step::Begin, e)),
    };
    let result = result.map_err(|e| Error::insert(model, e));
    // (A plain attempt that met a key stored meanwhile, or whose guard
    // found no unique index, counts against the plain form; the call then
    // runs as usual.)
    let conflicted = form.after(model, &result).is_some();
    match result {
        // The rows went where the check looked, as it saw.
        Ok((returned, Some(Some(_)))) => match scope.commit().await {
            Ok(()) => First::Done(Report::counts(offered, returned)),
            Err(e) => First::Failed(Error::database(model, Step::Commit, e)),
        },
        // Another table, or other types: undo, and check (a passed check
        // of this table no longer holds).
        Ok((_, Some(None))) => {
            if let Some(table) = table_oid {
                schema::forget(model, Some(table));
            }
            match scope.rollback().await {
                Ok(()) => First::Check,
                Err(e) => First::Failed(Error::database(model, Step::Commit, e)),
            }
        }
        // Nothing inserted, and no description to read: the check, in the
        // statement's transaction, says whether the table fits; then the
        // transaction commits, keeping what the table's triggers wrote (a
        // `BEFORE` trigger that sends each row elsewhere), as any call does.
        // Only under `READ COMMITTED`, where the check's queries see the
        // catalog as of the insert's lock; under a session default of
        // `REPEATABLE READ` or `SERIALIZABLE` their snapshot may be older,
        // so the call rolls back and runs as usual, with the check.
        Ok((_, None)) => {
            // (Unprepared: in the check's round trip, not one of its own first.)
            let isolation = client.query_typed("SELECT pg_catalog.current_setting('transaction_isolation')", &[]);
            let (checked, isolation) = futures_util::future::join(schema::verify(client, model), isolation).await;
            let read_committed =
                isolation.is_ok_and(|rows| rows.first().is_some_and(|row| row.get::<_, &str>(0) == "read committed"));
            match checked {
                Ok(_) if read_committed => match scope.commit().await {
                    Ok(()) => First::Done(Report::counts(offered, 0)),
                    Err(e) => First::Failed(Error::database(model, Step::Commit, e)),
                },
                Ok(_) => match scope.rollback().await {
                    Ok(()) => First::Check,
                    Err(e) => First::Failed(Error::database(model, Step::Commit, e)),
                },
                Err(e) => match scope.rollback().await {
                    Ok(()) if read_committed => First::Failed(e),
                    Ok(()) => First::Check,
                    Err(rollback) => First::Failed(Error::database(model, Step::Commit, rollback)),
                },
            }
        }
        Err(error) => {
            let rolled_back = scope.rollback().await;
            if !error.connection_usable() || rolled_back.is_err() {
                return First::Failed(error);
            }
            if conflicted {
                // The plain form met a key stored meanwhile, or its guard
                // refused (REPEATABLE READ): the call's `ON CONFLICT` form
                // decides, as on any connection.
                return First::Check;
            }
            match error.sqlstate() {
                Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    // Perhaps `RETURNING` alone (see `refuse_first_calls`).
                    schema::refuse_first_calls(model);
                    First::Check
                }
                Some(code) if table_changed(code) => {
                    // The checks this process passed may no longer hold.
                    schema::forget(model, None);
                    First::Check
                }
                // A row the table refused, perhaps of a stored key, which
                // the `ON CONFLICT` form alone lets reach it: the call as
                // usual, whose form behind the anti-join skips such a row
                // (see `Form::Filtered`).
                _ if form == Form::OnConflict && Form::row_refused(&error) => First::Check,
                _ => First::Failed(error),
            }
        }
    }
}

/// Whether an insert's error may come from a table that no longer fits
/// the model (which the call with the check then explains, or writes to):
/// a name, type or privilege the statement could not resolve (class 42,
/// 3F), a value the column's type refuses (class 22, e.g. a narrowed
/// type), a column required or a feature missing (23502, 0A000, e.g. a
/// table moved to Citus), an index `ON CONFLICT` cannot use (55000). Any
/// other error (a conflict between transactions, a constraint, a trigger,
/// a timeout) is the call's answer as it would be with the check.
fn table_changed(code: &SqlState) -> bool {
    let class = &code.code()[..2];
    matches!(class, "42" | "3F" | "22")
        || matches!(
            code,
            &SqlState::NOT_NULL_VIOLATION
                | &SqlState::FEATURE_NOT_SUPPORTED
                | &SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
        )
}

/// The passed check whose table and column types `columns` (the insert's
/// result, one per model column) are.
fn fitting<'p>(columns: &[Column], passed: &'p [Passed]) -> Option<&'p Passed> {
    passed.iter().find(|p| {
        p.columns.len() == columns.len()
            && columns.iter().zip(&p.columns).all(|(c, &(oid, typmod))| {
                c.table_oid() == Some(p.table) && c.type_().oid() == oid && c.type_modifier() == typmod
            })
    })
}
