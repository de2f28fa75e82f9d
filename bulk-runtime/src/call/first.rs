//! A connection's first call without the schema check: the insert itself,
//! checked by what the server says about its result.
//!
//! On a new backend the schema check's catalog queries cost several times
//! the insert of a short batch (they are planned and run on cold caches;
//! see BENCHMARKS.md, issue 14). A job that opens a connection per batch
//! pays that on every call. So when this process has already passed a
//! check of the model ([`schema::passed_checks`]), a connection's first
//! short plain call sends, in one round trip:
//!
//! ```sql
//! BEGIN;
//! INSERT INTO target (cols) VALUES ($1, $2, ...), ... ON CONFLICT (key) DO NOTHING RETURNING cols
//! ```
//!
//! (`unnest` of one array per column instead of `VALUES` from
//! [`VALUES_UP_TO`] rows; from [`PLAIN_FROM`](super::PLAIN_FROM) rows
//! the plain form, whose guard refuses a table without a unique index on
//! the key, as the connection's later calls do). The `RowDescription` of the result names, per
//! column, the table's OID, the column's type OID and its type modifier.
//! When they are those of a passed check, the call commits: the rows went
//! into the table the check accepted, with the types it accepted (a type
//! modifier that rounds a key shows as another modifier). What else the
//! check verifies, the statement enforces on its own: `ON CONFLICT (key)`
//! fails unless a unique, valid, immediate, non-partial index on exactly
//! the key columns exists (so no key is stored twice, whatever changed);
//! a missing column or table, a new required column, a lost privilege make
//! it fail. Models whose check reads more than that (a text key's
//! collation, a nullable field's `NOT NULL` column, arrays) never take this
//! path (see `Plan::first_insert`), nor does a table on Citus or a database
//! without `TEMPORARY` for every role (see `schema::passed`).
//!
//! Otherwise the call rolls back and runs as it always did, with the check:
//! after a result of other types or another table, after an error that a
//! table which no longer fits the model would raise, and when no row came
//! back (the description is only read from a row; the check then runs in
//! the rollback's round trip). The count is the rows returned: exact on any
//! server. Two round trips, one more than a warm call, and no prepared
//! statement: the connection's next call checks and prepares as before.

use futures_util::TryStreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Column};

use super::arrays::{self, Param};
use super::form::Form;
use crate::api::{Kind, Report};
use crate::error::{Error, Step, retryable};
use crate::model::Model;
use crate::schema::{self, Passed};
use crate::scope::Scope;
use crate::sql::{self, Dialect, KeyShape};
use crate::wire::Encoded;

/// Batches up to this many rows go as one multi-row `VALUES` statement,
/// longer ones as `unnest` of arrays: on a new backend `VALUES` costs the
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
    let rows = arrays.first().map_or(0, element_count);
    let plan = sql::plan(model);
    let form = Form::first(model, &Kind::CreateNew, rows as u64, Dialect::Postgres);
    let (sql, values);
    let params: Vec<Param<'_>> = if rows <= VALUES_UP_TO && form == Form::OnConflict {
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
        // Nothing inserted, and no description to read: nothing was
        // written either way; the check says whether the table fits.
        Ok((_, None)) => {
            let (rolled_back, checked) =
                futures_util::future::join(scope.rollback(), schema::verify(client, model)).await;
            match (rolled_back, checked) {
                (Err(e), _) => First::Failed(Error::database(model, Step::Commit, e)),
                (Ok(()), Err(e)) => First::Failed(e),
                (Ok(()), Ok(_)) => First::Done(Report::counts(offered, 0)),
            }
        }
        Err(error) => {
            let rolled_back = scope.rollback().await;
            if !error.connection_usable() || rolled_back.is_err() || !worth_checking(&error) {
                First::Failed(error)
            } else {
                if !conflicted {
                    // The checks this process passed may no longer hold.
                    schema::forget(model, None);
                }
                First::Check
            }
        }
    }
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

/// Whether the first call's error may come from a table that no longer
/// fits the model, so that the call with the check explains it (or runs):
/// not a lost connection, a conflict between transactions, a timeout or a
/// cancel, which would only happen again.
fn worth_checking(error: &Error) -> bool {
    let Error::Database { source, .. } = error else { return false };
    !retryable(source)
        && !matches!(
            source.code(),
            Some(
                &SqlState::QUERY_CANCELED
                    | &SqlState::READ_ONLY_SQL_TRANSACTION
                    | &SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
            )
        )
        && !source.code().is_some_and(|c| c.code().starts_with("53"))
}

/// The number of elements of a one-dimensional binary array.
fn element_count(array: &Encoded) -> usize {
    let bytes = &array.0;
    let int = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if int(0) == 0 { 0 } else { usize::try_from(int(12)).unwrap_or(0) }
}
