//! Schema checks that passed in this process, so that the first call on a
//! new connection writes in one round trip instead of checking first.
//!
//! A connection that opens, calls once and closes (a cron job, a queue
//! worker) would otherwise pay, on every call, the schema check's catalog
//! queries on a backend whose catalog caches are cold: about twice the
//! insert itself (see BENCHMARKS.md, "A new connection's first call").
//! Instead, the process keeps, per model, what its last passed check found
//! ([`Trusted`]: the table's OID, the OID of the unique index the call
//! relies on, each column's type, how the key compares), and the first call
//! on a connection sends its insert with a guard ([`guard`]) that the
//! server evaluates once, before any row is written, against the live
//! catalog:
//!
//! - the model's name resolves (with the session's `search_path`) to the
//!   checked table;
//! - each of the model's columns has the checked type (the key's type and
//!   collation, and whether it rounds, cannot change without rebuilding
//!   the index, see below);
//! - the checked unique index is still there, on that table, valid and
//!   ready (for the plain form, and for a key with a text or nullable
//!   column; see [`guard`] for the others). Its other properties (unique, its columns, their collations,
//!   `NULLS NOT DISTINCT`, not partial, not deferrable) cannot change
//!   while it keeps its OID: `ALTER COLUMN ... TYPE` (or `COLLATE`) rebuilds
//!   it under a new one;
//! - the database has no Citus (whose tables take another dialect).
//!
//! The guard makes a few catalog lookups (the name, the row type, Citus's
//! table, and one index lookup in `pg_index` when the form needs it); the
//! full check is several catalog queries, each planned on a cold backend. When the guard refuses (an error whose message
//! holds [`STALE`]), or the insert fails as a table that does not fit the
//! model would make it fail (SQLSTATE class 42, or a `NOT NULL` violation:
//! a required column the model lacks, a nullable field whose column became
//! `NOT NULL`), nothing was written: the entry is forgotten and the call
//! runs the full check, which then explains the difference, exactly as on a
//! connection without a trusted check. The one difference the guard does
//! not see is a column that became `NOT NULL` while the model's field is
//! nullable: a batch without NULLs in it is stored, one with a NULL gets
//! the check's explanation.
//!
//! Only a call that runs as its own statement outside any transaction uses
//! it (inside a transaction, a refused statement would abort it).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::error::SqlState;

use crate::error::Error;
use crate::model::Model;
use crate::sql::fragments::{literal, q};
use crate::sql::{self, KeyShape};
use crate::types::PgType;

/// What a passed schema check of a model found, to be verified by [`guard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trusted {
    /// The OID of the table the model's name resolved to.
    pub table: u32,
    /// The OID of the unique index that refuses a repeated key.
    pub index: u32,
    /// The type OID of each of the model's columns, in the model's order.
    pub types: Vec<u32>,
    /// How the key compares (always PostgreSQL's dialect).
    pub shape: KeyShape,
}

/// Marks the error of a guard that refused: the table is not the one this
/// process checked.
pub(crate) const STALE: &str = "bulk_runtime: the table changed since this process checked it";

/// Beyond this many models the map is cleared.
const MAX_ENTRIES: usize = 4096;

/// Per model (by address), its last passed check.
static TRUSTED: Mutex<Option<HashMap<usize, Trusted>>> = Mutex::new(None);

fn key(model: &'static Model) -> usize {
    std::ptr::from_ref(model) as usize
}

/// Keeps what a passed check of `model` found.
pub(crate) fn remember(model: &'static Model, trusted: Trusted) {
    let mut guard = TRUSTED.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key(model)) {
        map.clear();
    }
    map.insert(key(model), trusted);
}

/// The last passed check of `model` in this process, if any.
pub(crate) fn get(model: &'static Model) -> Option<Trusted> {
    let guard = TRUSTED.lock().unwrap_or_else(PoisonError::into_inner);
    guard.as_ref().and_then(|m| m.get(&key(model)).cloned())
}

/// Forgets the check of `model` (it failed, or a guard refused it).
pub(crate) fn forget(model: &'static Model) {
    let mut guard = TRUSTED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(map) = guard.as_mut() {
        map.remove(&key(model));
    }
}

/// A condition that holds when the live table is the one `trusted`
/// describes, and otherwise raises an error whose message holds [`STALE`]
/// (SQLSTATE 22P02), so that the statement writes nothing. It reads no row
/// of the statement: the planner evaluates it once, before the insert
/// writes (after it has locked the table).
///
/// For the `ON CONFLICT` form (`plain_form` false) of a model whose key has
/// no text and no nullable column, the guard checks the column types and
/// Citus only: every unique index that `ON CONFLICT (key)` can take as its
/// arbiter (valid, not partial, not on an expression, exactly the key's
/// columns; PostgreSQL refuses the statement without one) then refuses a
/// repeated key as the model means it, on whichever table the name
/// resolves to now. Each catalog lookup costs a cold backend about 0.1 to
/// 0.7 ms (see BENCHMARKS.md), so the guard makes only the ones the
/// statement needs.
pub(crate) fn guard(model: &'static Model, trusted: &Trusted, plain_form: bool) -> String {
    let target = model.qualified_name();
    let any_arbiter = !plain_form && !model.unique_key().any(|c| c.nullable() || c.pg_type() == PgType::Text);
    let mut holds = vec!["pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL".to_owned()];
    if !any_arbiter {
        holds.push(format!(
            "pg_catalog.to_regclass({})::pg_catalog.oid = {}::pg_catalog.oid",
            literal(&sql::plan(model).target_regclass),
            trusted.table
        ));
    }
    for (column, ty) in model.columns().iter().zip(&trusted.types) {
        holds.push(format!(
            "pg_catalog.pg_typeof((NULL::{target}).{})::pg_catalog.oid = {ty}::pg_catalog.oid",
            q(column.name())
        ));
    }
    if !any_arbiter {
        holds.push(format!(
            "EXISTS (SELECT FROM pg_catalog.pg_index AS \"i\" WHERE \"i\".indexrelid = {}::pg_catalog.oid \
             AND \"i\".indrelid = {}::pg_catalog.oid AND \"i\".indisvalid AND \"i\".indisready)",
            trusted.index, trusted.table
        ));
    }
    format!(
        "CASE WHEN {} THEN true ELSE pg_catalog.concat({})::pg_catalog.int4 = 0 END",
        holds.join(" AND "),
        literal(STALE)
    )
}

/// Whether a statement sent with a [`guard`] failed because the table is
/// not (or no longer fits) the one checked: the guard refused, or the
/// insert met a missing table, column or index, a type it cannot assign, a
/// `NOT NULL` column it does not fill, or a deferrable unique index. Nothing
/// was written.
pub(crate) fn refused(error: &Error) -> bool {
    let Some(code) = error.sqlstate() else { return false };
    let stale = *code == SqlState::INVALID_TEXT_REPRESENTATION
        && error.db_error().is_some_and(|db| db.message().contains(STALE));
    // 55000: `ON CONFLICT` refuses a deferrable unique index as its arbiter.
    stale
        || matches!(*code, SqlState::NOT_NULL_VIOLATION | SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
        || code.code().starts_with("42")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::fixtures::{MODEL, at};

    #[test]
    fn the_guard_names_what_the_check_found_and_refuses_with_its_marker() {
        let trusted = Trusted { table: 16_388, index: 16_391, types: vec![20, 20, 1043], shape: KeyShape::default() };
        let guard = guard(&MODEL, &trusted, true);
        at(&guard, r#"pg_catalog.to_regclass(E'"my schema"."re""tweet"')::pg_catalog.oid = 16388::pg_catalog.oid"#);
        at(&guard, r#"pg_catalog.pg_typeof((NULL::"my schema"."re""tweet")."re""tweeter")::pg_catalog.oid = 20::"#);
        at(&guard, r#"pg_catalog.pg_typeof((NULL::"my schema"."re""tweet")."author")::pg_catalog.oid = 1043::"#);
        at(&guard, r#""i".indexrelid = 16391::pg_catalog.oid AND "i".indrelid = 16388::pg_catalog.oid"#);
        at(&guard, "to_regclass('pg_catalog.pg_dist_partition') IS NULL");
        at(&guard, &format!("ELSE pg_catalog.concat(E'{STALE}')::pg_catalog.int4 = 0 END"));
        // The fixture's key is two bigint columns: in the `ON CONFLICT`
        // form, any arbiter refuses a repeated key.
        let light = super::guard(&MODEL, &trusted, false);
        assert!(!light.contains("pg_index") && !light.contains("16388"), "{light}");
        at(&light, "pg_typeof");
    }

    #[test]
    fn a_forgotten_check_is_not_trusted() {
        let trusted = Trusted { table: 1, index: 2, types: vec![20, 20, 25], shape: KeyShape::default() };
        remember(&MODEL, trusted.clone());
        assert_eq!(get(&MODEL), Some(trusted));
        forget(&MODEL);
        assert_eq!(get(&MODEL), None);
    }
}
