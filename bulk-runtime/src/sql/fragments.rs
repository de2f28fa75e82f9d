//! The pieces every statement is assembled from: column lists, the key's
//! equality, the anti-join, the batch as a relation (array parameters or
//! the scratch table), literals and the plain form's guard.
//!
//! Each is written once; the statements in [`insert`](super::insert) and
//! [`variants`](super::variants) are text assembled from them. Every
//! identifier goes through [`quote_ident`], values never appear (the one
//! literal, [`literal`], is a name the library itself writes).

use std::fmt::Write as _;

use tokio_postgres::types::Type;

use super::KeyShape;
use crate::model::{Column, Model, quote_ident};
use crate::types::PgType;

/// Name of the batch's position column: the scratch table's, and the first
/// array's on the short path, so that the first offered row of a key wins.
pub(crate) const ORD: &str = crate::model::STAGING_ORD;

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
/// `IS NOT DISTINCT FROM`, can be hashed. Arrays compare only of one type,
/// while one side may be the table's (a stored row) and the other the
/// model's (the batch): a scalar key other than text is read as the model's
/// type on both sides (a `bigint` column of an `i32` field; its values came
/// from the model), and a text key compares as the table's type on both
/// (the batch is read as the column's type when it is not `text`: see
/// `schema::key_as`).
pub(crate) fn key_match(model: &Model, a: &str, b: &str) -> String {
    let matches = |c: &Column| {
        let (l, r) = (format!("{a}.{}", q(c.name())), format!("{b}.{}", q(c.name())));
        match c.pg_type() {
            _ if !c.nullable() => format!("{l} = {r}"),
            PgType::Text | PgType::Enum(_) | PgType::Array(_) => format!("ARRAY[{l}] = ARRAY[{r}]"),
            ty => format!("ARRAY[CAST({l} AS {t})] = ARRAY[CAST({r} AS {t})]", t = ty.sql_name()),
        }
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

/// Name of a row's place in the short path's arrays as sent (`WITH
/// ORDINALITY`), which the elements of an array column refer to.
const ROW: &str = "__bulk_row";

/// The array parameters of [`arrays`], in their order, with what the
/// relation makes of them.
struct Params {
    /// Each parameter as the statement reads it (`$2::bigint[]`).
    arrays: Vec<String>,
    /// Each parameter's type, for the prepare.
    types: Vec<Type>,
    /// The relation's columns, quoted, one per parameter but an array
    /// column's elements and their rows.
    names: Vec<String>,
    /// Per array column: its place among the model's columns, the
    /// parameters of its elements and of their rows.
    elements: Vec<(usize, String, String)>,
}

impl Params {
    /// The parameters laid out as `layout`: the positions, then the model's
    /// columns in order (three for an array column: its rows' lengths, its
    /// elements, each element's row), then the mask.
    fn new(model: &Model, layout: Arrays) -> Params {
        let mut p = Params { arrays: Vec::new(), types: Vec::new(), names: Vec::new(), elements: Vec::new() };
        if layout.positions {
            p.column(q(ORD), "bigint[]", Type::INT8_ARRAY);
        }
        for (i, c) in model.columns().iter().enumerate() {
            match c.pg_type() {
                ty @ PgType::Array(_) => {
                    p.column(q(c.name()), "integer[]", Type::INT4_ARRAY);
                    let elements = p.push(ty.sql_name(), ty.wire_type());
                    let rows = p.push("integer[]", Type::INT4_ARRAY);
                    p.elements.push((i, elements, rows));
                }
                ty => p.column(q(c.name()), &format!("{}[]", ty.sql_name()), ty.array_wire_type()),
            }
        }
        if layout.mask {
            p.column(q(DONE), "boolean[]", Type::BOOL_ARRAY);
        }
        p
    }

    /// The next parameter, of SQL type `sql_type` and wire type `ty`.
    fn push(&mut self, sql_type: &str, ty: Type) -> String {
        self.types.push(ty);
        format!("${}::{sql_type}", self.types.len())
    }

    /// The next parameter, read as the relation's column `name`.
    fn column(&mut self, name: String, sql_type: &str, ty: Type) {
        let param = self.push(sql_type, ty);
        self.arrays.push(param);
        self.names.push(name);
    }
}

/// The types of the array parameters laid out as `layout`, in their order:
/// what [`arrays`] reads (three for an array column; see there).
pub(crate) fn array_types(model: &Model, layout: Arrays) -> Vec<Type> {
    Params::new(model, layout).types
}

/// The batch as the relation `alias`, rows in the order sent, from the
/// short path's array parameters laid out as `layout` (their types:
/// [`array_types`]). Without array columns this is `unnest($1::type[],
/// ...) AS alias(names)`, one array per column. When the table compares its
/// key otherwise than the model's types ([`KeyShape`]), the key columns are
/// read as the table's, under the same names.
///
/// An array column cannot be one parameter: PostgreSQL arrays are
/// rectangular, and `unnest` would flatten an array of arrays. It travels as
/// its rows' lengths (`integer[]`, NULL for a NULL array), all its elements
/// in row order (`T[]`), and the row of each element (`integer[]`, a row's
/// place from 1); each row's array is rebuilt by `array_agg(... ORDER BY`
/// the element's place`)` of its elements, grouped by row, joined to the
/// rows on their ordinality. Element NULLs stay, a row without elements
/// gets `'{}'`, a NULL length NULL. The elements are read by set-returning
/// functions in a select list (run in lockstep, not stored first as a
/// function in `FROM` is). The join is a `FULL JOIN` (every element's row is
/// sent, so it returns what a left join would): PostgreSQL runs a full join
/// only as a hash or merge join, linear in the batch whatever the planner
/// estimates for `unnest` of a parameter (10 rows in a generic plan), where
/// a nested loop would take rows × rows. (Slices of one array of all the
/// elements, `elems[a:b]`, would be quadratic too: each slice walks a
/// variable-width array from its start; measured, seconds for 5,000 rows of
/// 20 `text` elements.) The rebuild still costs more per element than COPY
/// does: see [`SMALL_BATCH_ARRAY_ELEMENTS`](crate::call::SMALL_BATCH_ARRAY_ELEMENTS).
pub(crate) fn arrays(model: &Model, alias: &str, layout: Arrays, shape: &KeyShape) -> String {
    let params = Params::new(model, layout);
    let unnest = format!("unnest({})", params.arrays.join(", "));
    let names = params.names.join(", ");
    if params.elements.is_empty() && shape.is_plain() {
        return format!("{unnest} AS {alias}({names})");
    }
    let select: Vec<String> = params.names.iter().map(|n| read(model, alias, n, shape)).collect();
    let select = select.join(", ");
    if params.elements.is_empty() {
        return format!("(SELECT {select} FROM {unnest} AS {alias}({names})) AS {alias}");
    }
    let row = q(ROW);
    let mut from = format!("{unnest} WITH ORDINALITY AS {alias}({names}, {row})");
    for (i, elements, rows) in &params.elements {
        let e = element_alias(*i);
        let _ = write!(
            from,
            " FULL JOIN (SELECT \"x\".\"r\", array_agg(\"x\".\"v\" ORDER BY \"x\".\"i\") AS \"v\" \
             FROM (SELECT unnest({elements}) AS \"v\", unnest({rows}) AS \"r\", \
             generate_series(1, cardinality({elements})) AS \"i\") AS \"x\" GROUP BY \"x\".\"r\") AS {e} \
             ON {e}.\"r\" = {alias}.{row}"
        );
    }
    format!("(SELECT {select} FROM {from} ORDER BY {alias}.{row}) AS {alias}")
}

/// The relation of the rebuilt arrays of the model's column `i` (an array
/// column) in [`arrays`].
fn element_alias(i: usize) -> String {
    q(&format!("__bulk_e{i}"))
}

/// The column `name` (quoted) of the relation [`arrays`] as its select list
/// reads it: an array column rebuilt from its elements, a key column as the
/// table compares it, any other as sent.
fn read(model: &Model, alias: &str, name: &str, shape: &KeyShape) -> String {
    let Some(i) = model.columns().iter().position(|c| q(c.name()) == name) else {
        return format!("{alias}.{name}");
    };
    let c = &model.columns()[i];
    if let ty @ PgType::Array(_) = c.pg_type() {
        return format!(
            "CASE WHEN {alias}.{name} IS NOT NULL THEN COALESCE({e}.\"v\", ARRAY[]::{ty}) END AS {name}",
            e = element_alias(i),
            ty = ty.sql_name(),
        );
    }
    match model.unique_key().position(|k| std::ptr::eq(k, c)) {
        Some(k) if !shape.is_plain() => format!("{} AS {name}", shape.read(k, &format!("{alias}.{name}"))),
        _ => format!("{alias}.{name}"),
    }
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
/// evaluated once (in the select list: see `insert`'s module documentation),
/// before any row is inserted, after the insert has locked
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
