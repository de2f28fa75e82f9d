//! The forms of a call's insert, and which one an attempt takes: the
//! plain anti-join first, `ON CONFLICT` after it met a key another writer
//! stored meanwhile (see [`contention`](crate::contention)); on the short
//! path, `ON CONFLICT` behind the anti-join after the `ON CONFLICT` form
//! alone met a row the table refused.

use std::borrow::Cow;

use tokio_postgres::error::SqlState;

use crate::api::Kind;
use crate::error::Error;
use crate::model::Model;
use crate::sql;
use crate::sql::{Dialect, KeyShape};
use crate::statements::{PLAIN, PLAIN_FILTERED, PLAIN_ON_CONFLICT};

/// The form of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// The anti-join insert alone: fails with `unique_violation` on a key
    /// another writer stored after the statement's snapshot.
    Plain,
    /// The anti-join insert with `ON CONFLICT (key) DO NOTHING` (on the
    /// short path, in PostgreSQL's dialect, `ON CONFLICT` alone: see
    /// [`sql::arrays_on_conflict`]).
    OnConflict,
    /// On the short path, in PostgreSQL's dialect, the anti-join with `ON
    /// CONFLICT (key) DO NOTHING` ([`sql::arrays_filtered`]), after the `ON
    /// CONFLICT` form alone failed on a row the table refused
    /// ([`row_refused`](Form::row_refused)): `ON CONFLICT` alone lets the
    /// rows of stored keys reach the table's row triggers, `CHECK`
    /// constraints and type modifiers, which the anti-join keeps them from,
    /// as in every other form. In Citus's dialect, which refuses the
    /// anti-join of a batch with a distributed table, the `ON CONFLICT`
    /// statements (the plain call's and the returning ones', on both paths)
    /// behind Citus's anti-join instead (`sql::stored_cte`: the batch's keys
    /// the target holds, found on the shards); from a Citus staging table,
    /// the insert from it with both the anti-join and `ON CONFLICT`.
    /// Elsewhere the same statement as `OnConflict`.
    Filtered,
}

/// Batches shorter than this go straight to the `ON CONFLICT` form: for a
/// few rows, what the plain form saves per new row (about a microsecond) is
/// less than what its anti-join costs to plan (some 70-100 µs whenever the
/// server plans the statement again, e.g. after the table was analyzed).
/// Measured on the retweeter table, each plan made afresh: at 100 rows the
/// plain form is 3% faster when every key is new and 3% slower when half are
/// stored; at 150 rows it is 4-7% faster, at 1,000 rows 25%.
pub const PLAIN_FROM: usize = 128;

/// Ends the short path's `ON CONFLICT` statement in PostgreSQL's dialect on
/// a connection known to be direct: `RETURNING` one empty column per
/// inserted row (under 128 rows, read past by `execute`, which counts from
/// the command tag), so that PostgreSQL refuses the statement (0A000,
/// "cannot perform INSERT RETURNING", which the schema check explains as
/// [`InsertRules`](crate::SchemaProblem::InsertRules)) when a
/// `DO INSTEAD NOTHING` rule was created on the table since the check. Such
/// a rule turns a plain `INSERT` into no statement at all, answered
/// `INSERT 0 0`, which cannot be told from a batch whose keys were all
/// stored; the statement that refuses it costs no round trip, where looking
/// for the rule after a call that inserted nothing costs one (the plain
/// form, from 128 rows, still does: its `RETURNING` would send a row per
/// inserted row, up to 5,000). Behind a pooler (or before a check told) the
/// call still looks for the rule: with the clause there, a call made right
/// after a dropped one through PgBouncer 1.18 in transaction mode waited
/// for ever in about one run of
/// `pooler_faults::dropped_call_through_transaction_pooler` in six (not
/// understood yet; not seen without it in as many runs).
pub(crate) const RULE_PROOF: &str = " RETURNING NULL";

impl Form {
    /// The form of the first attempt of a call of `kind` on `rows` rows of
    /// a table in `dialect`: only the plain call has a plain form, from
    /// [`PLAIN_FROM`] rows, when the model's recent calls met few conflicts;
    /// on Citus only from the staging table (`Dialect::CitusStaged`: the
    /// anti-join of a temporary table or of arrays with a distributed table
    /// is refused).
    pub(crate) fn first(model: &'static Model, kind: &Kind, rows: u64, dialect: Dialect) -> Form {
        let plain = matches!(dialect, Dialect::Postgres | Dialect::CitusStaged)
            && matches!(kind, Kind::CreateNew)
            && rows >= PLAIN_FROM as u64
            && model.contention().try_plain();
        if plain { Form::Plain } else { Form::OnConflict }
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
            // A key stored meanwhile, or the guard found no unique index to
            // rely on (see `sql::key_index_guard`): the attempt wrote
            // nothing, and the `ON CONFLICT` form decides. (The guard's
            // refusal counts as a conflict: under REPEATABLE READ it always
            // refuses, and the next calls go straight to ON CONFLICT for a
            // while.)
            Err(e) if e.is_unique_violation() || e.sqlstate() == Some(&SqlState::DIVISION_BY_ZERO) => {
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

    /// The form to run the call again in after an attempt in this form:
    /// the filtered form, after the `ON CONFLICT` form failed on a row the
    /// table refused ([`row_refused`](Form::row_refused); nothing was
    /// written), where that form is `ON CONFLICT` alone (`alone`: the short
    /// path's plain call; on Citus every statement but the upsert's), so that
    /// the anti-join skips the rows of stored keys as every other form does;
    /// a new key's row fails it again.
    pub(crate) fn after_refused<T>(self, alone: bool, result: &Result<T, Error>) -> Option<Form> {
        (alone && self == Form::OnConflict && result.as_ref().is_err_and(Form::row_refused)).then_some(Form::Filtered)
    }

    /// Whether `error` is the refusal of an `ON CONFLICT` form's guard
    /// ([`KEY_INDEX_CHANGED`](crate::sql::KEY_INDEX_CHANGED)): the key's
    /// unique index or how the table compares the key changed since the
    /// connection checked the table; nothing was written.
    pub(crate) fn index_changed(error: &Error) -> bool {
        error.sqlstate() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
            && error.db_error().is_some_and(|db| db.message().contains(sql::KEY_INDEX_CHANGED))
    }

    /// Whether `error` is the refusal of the guard that follows an insert
    /// from a Citus staging table
    /// ([`STAGE_CHANGED`](crate::sql::STAGE_CHANGED)), or Citus's refusal of
    /// an insert from a staging table no longer co-located with the target:
    /// nothing was written.
    pub(crate) fn stage_changed(error: &Error) -> bool {
        (error.sqlstate() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
            && error.db_error().is_some_and(|db| db.message().contains(sql::STAGE_CHANGED)))
            || error.db_error().is_some_and(crate::error::citus_stage_not_colocated)
    }

    /// Whether `error` is the server's refusal to run a prepared statement
    /// whose result it would now describe otherwise (SQLSTATE 0A000, "cached
    /// plan must not change result type"): a `returning_keys` statement after
    /// a `search_path` switch to a same-named table whose key column has
    /// another collation or type. Refused as the statement was planned
    /// again, before it ran: nothing was written.
    pub(crate) fn plan_changed(error: &Error) -> bool {
        error.sqlstate() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
            && error.db_error().is_some_and(|db| {
                db.routine() == Some("RevalidateCachedQuery") || db.message().contains("cached plan must not change")
            })
    }

    /// Whether `error` is the refusal of a statement that names something
    /// the table no longer has (SQLSTATE 42703, 42P01, 42704, 42883): a
    /// statement the connection prepared for the table as its last check
    /// found it, such as `returning_keys` with an id column dropped since;
    /// or whose guard reads a column of the table's row type by the
    /// table's name, which now finds another type first (42809: see
    /// `KeyShape::catalog_guard`).
    /// Refused as the statement was analysed again, before it ran: nothing
    /// was written. The call checks the table again once, and runs a
    /// statement built for what the check finds, or returns the check's
    /// explanation.
    pub(crate) fn name_gone(error: &Error) -> bool {
        matches!(
            error.sqlstate(),
            Some(
                &SqlState::UNDEFINED_COLUMN
                    | &SqlState::UNDEFINED_TABLE
                    | &SqlState::UNDEFINED_OBJECT
                    | &SqlState::UNDEFINED_FUNCTION
                    | &SqlState::WRONG_OBJECT_TYPE
            )
        )
    }

    /// Whether `error` is a cast in a statement the connection prepared that
    /// the table's columns no longer allow: `"id"::bigint` of the returning
    /// statements after the id column became a `uuid` (42846, refused as the
    /// statement was analysed again) or a `text` (22P02, from a value, as
    /// the statement ran), since the check or after a `search_path` switch
    /// to a same-named table of another tenant. Nothing was written; the
    /// call checks the table again once, as for [`name_gone`](Self::name_gone).
    /// (Not the guards' own refusals, which are 22P02 too: their messages
    /// start with `bulk_runtime:`.)
    pub(crate) fn cast_refused(error: &Error) -> bool {
        match error.sqlstate() {
            Some(&SqlState::CANNOT_COERCE | &SqlState::DATATYPE_MISMATCH) => true,
            Some(&SqlState::INVALID_TEXT_REPRESENTATION) => {
                error.db_error().is_some_and(|db| !db.message().contains("bulk_runtime:"))
            }
            _ => false,
        }
    }

    /// Whether `error` may come from a short-path statement that reads the
    /// batch's key as a `varchar(n)` the connection's check found, on a
    /// column widened since (SQLSTATE 22001, for a model with a text key):
    /// the statement reads the key (see `KeyAs::typmod`) before its guard
    /// runs, which would have found the key's shape changed. Nothing was
    /// written; the call checks the table again once, and a value the
    /// column refuses fails again with the same error.
    pub(crate) fn length_refused(model: &Model, error: &Error) -> bool {
        error.sqlstate() == Some(&SqlState::STRING_DATA_RIGHT_TRUNCATION)
            && model.unique_key().any(|c| c.pg_type() == crate::types::PgType::Text)
    }

    /// Whether `error`, from a statement of the `ON CONFLICT` form alone,
    /// may be the table's refusal of a row whose key is stored, which the
    /// anti-join would have kept from the table: a value a column's type
    /// or type modifier refuses (class 22, but for the guards' own
    /// refusals, whose messages hold `bulk_runtime:`), a `CHECK`
    /// constraint (23514), an error a `BEFORE INSERT` trigger raised (class
    /// P0). PostgreSQL forms each row, and runs its `BEFORE` triggers and
    /// checks, before `ON CONFLICT` looks for its key. Nothing was written.
    /// (Not among them: errors raised only for rows that are inserted, such
    /// as a foreign key's; and a `NULL` in a `NOT NULL` column, 23502, which
    /// the schema check refuses for a nullable field, so that it comes from
    /// a column made `NOT NULL` since, and stands for the table, as the
    /// server reported it.)
    pub(crate) fn row_refused(error: &Error) -> bool {
        let Some(code) = error.sqlstate() else { return false };
        let class = &code.code()[..2];
        let refused = matches!(class, "22" | "P0") || code == &SqlState::CHECK_VIOLATION;
        refused && !error.db_error().is_some_and(|db| db.message().contains("bulk_runtime:"))
    }

    /// The label of the plain call's short-batch statement in this form.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Form::Plain => PLAIN,
            Form::OnConflict => PLAIN_ON_CONFLICT,
            Form::Filtered => PLAIN_FILTERED,
        }
    }

    /// The text of the plain call's short-batch statement in this form, for
    /// a table whose key compares as `shape` says (in its dialect: on Citus
    /// always the one `ON CONFLICT` statement counted from `RETURNING`,
    /// whatever the form). In PostgreSQL's dialect the `ON CONFLICT` form
    /// ends with [`RULE_PROOF`] when `proof`.
    pub(crate) fn small_sql(self, model: &'static Model, shape: &KeyShape, proof: bool) -> Cow<'static, str> {
        let plan = sql::plan(model);
        if shape.dialect.is_citus() {
            return Cow::Owned(sql::arrays_citus(model, plan.client_ordered, shape, self == Form::Filtered));
        }
        match (self, shape.is_plain() && !shape.catalog_guard) {
            (Form::Plain, true) => Cow::Borrowed(&plan.small_insert_plain),
            (Form::OnConflict, true) if proof => Cow::Owned(format!("{}{RULE_PROOF}", plan.small_insert)),
            (Form::OnConflict, true) => Cow::Borrowed(&plan.small_insert),
            // (Only a text key compares otherwise, and the client never
            // orders one: see `Plan::client_ordered`.)
            (Form::Plain, false) => Cow::Owned(sql::arrays_plain(model, plan.client_ordered, shape)),
            (Form::OnConflict, false) => {
                let sql = sql::arrays_on_conflict(model, plan.client_ordered, shape);
                Cow::Owned(if proof { format!("{sql}{RULE_PROOF}") } else { sql })
            }
            // (Only after a refused row: built when it is needed.)
            (Form::Filtered, _) => Cow::Owned(sql::arrays_filtered(model, plan.client_ordered, shape)),
        }
    }

    /// The COPY path's insert from the scratch table in this form (the
    /// plain form without `DISTINCT ON` when no key `repeats`); on Citus
    /// (`dialect`) the one `ON CONFLICT` statement counted from `RETURNING`
    /// (without `DISTINCT ON` too when no key repeats), or with the staging
    /// table, its insert from there, counted from the command tag.
    pub(crate) fn scratch_sql(self, model: &'static Model, repeats: bool, dialect: Dialect) -> &'static str {
        let plan = sql::plan(model);
        match dialect {
            Dialect::Citus => {
                return match (self, repeats) {
                    (Form::Filtered, true) => &plan.insert_citus_filtered,
                    (Form::Filtered, false) => &plan.insert_citus_filtered_distinct_keys,
                    (_, true) => &plan.insert_citus,
                    (_, false) => &plan.insert_citus_distinct_keys,
                };
            }
            Dialect::CitusStaged => {
                return match (self, repeats) {
                    (Form::Plain, true) => &plan.insert_staged_plain,
                    (Form::Plain, false) => &plan.insert_staged_plain_distinct_keys,
                    (Form::OnConflict, true) => &plan.insert_staged,
                    (Form::OnConflict, false) => &plan.insert_staged_distinct_keys,
                    (Form::Filtered, true) => &plan.insert_staged_filtered,
                    (Form::Filtered, false) => &plan.insert_staged_filtered_distinct_keys,
                };
            }
            Dialect::Postgres => {}
        }
        match (self, repeats) {
            (Form::Plain, true) => &plan.insert_plain,
            (Form::Plain, false) => &plan.insert_plain_distinct_keys,
            (Form::OnConflict | Form::Filtered, _) => &plan.insert,
        }
    }
}
