//! The pieces every statement is assembled from: column lists, the key's
//! equality, the anti-join, the batch as a relation (array parameters or
//! the scratch table), literals and the plain form's guard.
//!
//! Each is written once; the statements in [`insert`](super::insert) and
//! [`variants`](super::variants) are text assembled from them. Every
//! identifier goes through [`quote_ident`], values never appear (the one
//! literal, [`literal`], is a name the library itself writes).

use crate::model::{Column, Model, quote_ident};

/// Name of the batch's position column: the scratch table's, and the first
/// array's on the short path, so that the first offered row of a key wins.
pub(crate) const ORD: &str = "__bulk_ord";

/// Column of the upsert's mask array: the row's key was inserted by the
/// upsert's first statement.
pub(crate) const DONE: &str = "__bulk_done";

/// A quoted identifier.
pub(crate) fn q(name: &str) -> String {
    quote_ident(name)
}

/// `alias.c1, alias.c2, ...` for `columns`, quoted (`alias` as written).
pub(crate) fn cols<'c>(alias: &str, columns: impl IntoIterator<Item = &'c Column>) -> String {
    columns.into_iter().map(|c| format!("{alias}.{}", q(c.name()))).collect::<Vec<_>>().join(", ")
}

/// `c1, c2, ...`: the quoted names of `columns`.
pub(crate) fn names<'c>(columns: impl IntoIterator<Item = &'c Column>) -> String {
    columns.into_iter().map(|c| q(c.name())).collect::<Vec<_>>().join(", ")
}

/// The key of the row `b` equals the key of the stored row `a`, column by
/// column; a nullable key column (a `nulls_not_distinct` key) also matches
/// NULL to NULL. The anti-join's condition: an index probe per row.
pub(crate) fn key_equal(model: &Model, a: &str, b: &str) -> String {
    let equal = |c: &Column| {
        let (l, r) = (format!("{a}.{}", q(c.name())), format!("{b}.{}", q(c.name())));
        if c.nullable() { format!("({l} = {r} OR ({l} IS NULL AND {r} IS NULL))") } else { format!("{l} = {r}") }
    };
    model.unique_key().map(equal).collect::<Vec<_>>().join(" AND ")
}

/// `a.k = b.k AND ...` over the key, for a join: a nullable key column
/// compares `ARRAY[a.k] = ARRAY[b.k]`, which holds for two NULLs and, unlike
/// `IS NOT DISTINCT FROM`, can be hashed.
pub(crate) fn key_match(model: &Model, a: &str, b: &str) -> String {
    let matches = |c: &Column| {
        let (l, r) = (format!("{a}.{}", q(c.name())), format!("{b}.{}", q(c.name())));
        if c.nullable() { format!("ARRAY[{l}] = ARRAY[{r}]") } else { format!("{l} = {r}") }
    };
    model.unique_key().map(matches).collect::<Vec<_>>().join(" AND ")
}

/// The anti-join: no stored row of the target has the key of the row `alias`.
pub(crate) fn not_stored(model: &Model, alias: &str) -> String {
    format!("NOT EXISTS (SELECT 1 FROM {} AS \"t\" WHERE {})", model.qualified_name(), key_equal(model, "\"t\"", alias))
}

/// The layout of the short path's array parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrays {
    /// The first array holds the rows' positions (`$1::bigint[]`); without
    /// it, the client sent the rows in key order, each key once.
    pub positions: bool,
    /// The last array is the upsert's mask ([`DONE`]).
    pub mask: bool,
}

/// The batch as the relation `alias`: `unnest($1::type[], ...) AS
/// alias(names)`, one array per column. When the table compares its key
/// otherwise than the model's types ([`KeyShape`](super::KeyShape)), the
/// key columns are read as the table's, under the same names.
pub(crate) fn arrays(model: &Model, alias: &str, layout: Arrays, shape: &super::KeyShape) -> String {
    let mut arrays = Vec::new();
    let mut names = Vec::new();
    if layout.positions {
        arrays.push("bigint".to_owned());
        names.push(q(ORD));
    }
    for c in model.columns() {
        arrays.push(c.pg_type().sql_name().to_owned());
        names.push(q(c.name()));
    }
    if layout.mask {
        arrays.push("boolean".to_owned());
        names.push(q(DONE));
    }
    let params: Vec<String> = arrays.iter().enumerate().map(|(i, ty)| format!("${}::{ty}[]", i + 1)).collect();
    let plain = format!("unnest({}) AS {alias}({})", params.join(", "), names.join(", "));
    if shape.is_plain() {
        return plain;
    }
    let select: Vec<String> = names
        .iter()
        .map(|n| match model.unique_key().position(|k| q(k.name()) == *n) {
            Some(i) => format!("{} AS {n}", shape.read(i, &format!("{alias}.{n}"))),
            None => format!("{alias}.{n}"),
        })
        .collect();
    format!("(SELECT {} FROM {plain}) AS {alias}", select.join(", "))
}

/// `insert` (an `INSERT ... ON CONFLICT` without `RETURNING`) counted in
/// SQL, after the CTEs `ctes`: `WITH ctes, "ins" AS (insert RETURNING 1)
/// SELECT count(*) FROM "ins"`. Citus's dialect: there the command tag of an
/// `INSERT ... SELECT` is the number of rows attempted, `RETURNING` gives
/// exactly the rows the shards inserted.
pub(crate) fn counted(ctes: &[String], insert: &str) -> String {
    let mut with: Vec<String> = ctes.to_vec();
    with.push(format!("\"ins\" AS ({insert} RETURNING 1)"));
    format!("WITH {} SELECT count(*) FROM \"ins\"", with.join(", "))
}

/// The session's scratch table `scratch` as the relation `alias`.
pub(crate) fn scratch(scratch: &str, alias: &str) -> String {
    format!("pg_temp.{} AS {alias}", q(scratch))
}

/// `value` as an SQL string literal (an escape string, so it reads the same
/// whatever `standard_conforming_strings` is).
pub(crate) fn literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The guard of the insert's plain form: a condition that divides by zero
/// (SQLSTATE 22012) unless the table the target's name resolves to *now*
/// has a unique index that refuses a repeated key: unique, valid, ready,
/// checked immediately, not partial, on exactly the key's columns (NULLs
/// not distinct when the key is nullable).
///
/// The plain form relies on that index to refuse a key another writer
/// stored meanwhile; without it (an index dropped since the session checked
/// the table, or a `search_path` that now leads to another table of the same
/// name) the insert would store duplicates. Uncorrelated, the condition is
/// evaluated once, before any row is inserted, after the insert has locked
/// the table (so the index cannot be dropped until the call ends); the call
/// answers 22012 with the `ON CONFLICT` form, which refuses to run without
/// such an index (42P10), and the schema check then explains what changed.
/// Under `REPEATABLE READ` or `SERIALIZABLE` the guard always refuses (the
/// catalog the statement reads may be older than its lock), so such calls
/// take the `ON CONFLICT` form.
pub(crate) fn key_index_guard(model: &Model) -> String {
    let k = model.unique_key().len();
    let names: Vec<String> = model.unique_key().map(|c| literal(c.name())).collect();
    let nulls = if model.unique_key().any(Column::nullable) { " AND i.indnullsnotdistinct" } else { "" };
    // Only under READ COMMITTED: there the statement's snapshot is taken
    // after its lock, while under REPEATABLE READ or SERIALIZABLE it is the
    // transaction's first, which may still show an index dropped since.
    format!(
        "1 / (SELECT count(*)::int4 FROM pg_catalog.pg_index AS i \
         WHERE pg_catalog.current_setting('transaction_isolation') = 'read committed' \
         AND i.indrelid = {target}::pg_catalog.regclass AND i.indisunique AND i.indisvalid AND i.indisready \
         AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = {k}{nulls} \
         AND (SELECT count(*) FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = i.indrelid \
         AND a.attnum = ANY ((i.indkey::pg_catalog.int2[])[0:{last}]) \
         AND a.attname = ANY (ARRAY[{names}]::pg_catalog.name[])) = {k}) >= 0",
        target = literal(&model.qualified_name()),
        last = k - 1,
        names = names.join(", "),
    )
}
