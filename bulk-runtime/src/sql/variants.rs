//! The SQL of the call's variants: returning the inserted rows (their keys,
//! ids and batch positions), and the two statements of an upsert.
//!
//! Each statement reads the batch from one of the two sources of the plain
//! call (`unnest` of array parameters for a short batch, the session's scratch
//! table for a long one), keeps one row per key (`DISTINCT ON (key) ... ORDER
//! BY key, position`), and writes in key order with `ON CONFLICT (key)`, so
//! the guarantees of the plain call hold: no table lock, no deadlock between
//! overlapping batches, exact counts. For a nullable or text key, each
//! insert carries the `ON CONFLICT` forms' guard in its select list (see
//! `values`), so it never relies on an arbiter the call cannot trust.
//!
//! The text is assembled from the same fragments as the plain call's
//! statements (`fragments`): every identifier quoted, nothing but static
//! keywords and type names besides; no value is ever part of the text.

use std::fmt::Write as _;
use std::sync::LazyLock;

use tokio_postgres::types::Type;

use super::fragments::{self, Arrays, Compared, DONE, ORD, cols as list, key_match, literal, names, not_stored, q};
use super::insert::on_conflict_cols;
use super::plan::plan;
use super::shape::{Dialect, KeyShape};
use crate::api::{Keep, UpdateSet};
use crate::model::{Column, Model};
use crate::types::PgType;

/// Column of the statements' results (and of the arrays' mask) naming the
/// generated id of an inserted row.
pub(crate) const ID: &str = "__bulk_id";

/// The order of the positions of a key's rows that puts the kept one first.
fn order(keep: Keep) -> &'static str {
    match keep {
        Keep::First => "ASC",
        Keep::Last => "DESC",
    }
}

/// Where a statement reads the batch from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source<'a> {
    /// `unnest` of the array parameters (`$1` the positions, then the
    /// columns', see [`fragments::arrays`]), the key read as the table
    /// compares it.
    Arrays(&'a KeyShape),
    /// The session's scratch table, filled by `COPY`, in the table's dialect.
    Scratch(Dialect),
}

impl Source<'_> {
    /// Whether the statement is in Citus's dialect.
    fn is_citus(self) -> bool {
        match self {
            Source::Arrays(shape) => shape.dialect.is_citus(),
            Source::Scratch(dialect) => dialect.is_citus(),
        }
    }
}

/// What the returning insert sends back for each inserted row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Returned {
    /// The row's position in the batch, the generated id when `with_id`, then
    /// the key columns (as the model's types), in batch order.
    Keys { with_id: bool },
    /// Only the row's position in the batch.
    Positions,
}

/// Parameter types of the array source: positions, the columns' arrays
/// (three for an array column, see [`fragments::arrays`]), and (for the
/// upsert's second statement) the mask.
pub(crate) fn array_types(model: &Model, mask: bool) -> Vec<Type> {
    fragments::array_types(model, Arrays { positions: true, mask })
}

/// The batch as the relation `"u"`: the array parameters (with the
/// upsert's `mask`) or the scratch table.
fn source(model: &'static Model, source: Source<'_>, mask: bool) -> String {
    match source {
        Source::Arrays(shape) => fragments::arrays(model, "\"u\"", Arrays { positions: true, mask }, shape),
        Source::Scratch(_) => fragments::scratch(&plan(model).scratch, "\"u\""),
    }
}

/// The select list of an insert from `"__bulk_src"` AS `"s"`: the model's
/// columns, the last one guarded by
/// [`on_conflict_guard`](fragments::on_conflict_guard) for a nullable or
/// text key, as in the plain call's `ON CONFLICT` forms: `ON CONFLICT
/// (key)` takes a NULLS DISTINCT index, or one under another collation than
/// the column's, as its arbiter, and a statement built for a key that
/// compared otherwise would keep the wrong row of a key. The guard checks
/// that the key's index and shape are still what the statement was built
/// for (from the arrays, the shape the connection's check found; from the
/// scratch table, its key columns); when not, the statement fails with
/// [`KEY_INDEX_CHANGED`](super::KEY_INDEX_CHANGED), nothing written, and the
/// driver checks the table again. The guard also checks the types of the
/// model's columns and the session's encoding
/// ([`columns_fit`](fragments::columns_fit)). In Citus's dialect too: the
/// insert reads the batch from the coordinator (an intermediate result),
/// where the guard's catalog query runs.
fn values(model: &'static Model, from: Source<'_>) -> String {
    let compared = match from {
        Source::Arrays(shape) => Compared::As(shape),
        Source::Scratch(dialect) if dialect.is_citus() => Compared::AsCitusScratch(&plan(model).scratch),
        Source::Scratch(_) => Compared::AsScratch(&plan(model).scratch),
    };
    on_conflict_cols(model, "\"s\"", compared)
}

/// `"__bulk_src"`: one row per key, the kept one, with its position (and the mask).
fn src_cte(model: &'static Model, from: Source<'_>, keep: Keep, mask: bool) -> String {
    let key = list("\"u\"", model.unique_key());
    let mut cols = format!("\"u\".{}, {}", q(ORD), list("\"u\"", model.columns()));
    if mask {
        let _ = write!(cols, ", \"u\".{}", q(DONE));
    }
    let distinct = format!(
        "SELECT DISTINCT ON ({key}) {cols} FROM {source} ORDER BY {key}, \"u\".{ord} {order}",
        source = source(model, from, mask),
        ord = q(ORD),
        order = order(keep),
    );
    if mask {
        format!("\"__bulk_src\" AS (SELECT * FROM ({distinct}) AS \"d\" WHERE NOT \"d\".{})", q(DONE))
    } else {
        format!("\"__bulk_src\" AS ({distinct})")
    }
}

/// The condition that keeps the row `alias` out of the insert from `from`
/// when its key is already stored, if the insert has one: on plain
/// PostgreSQL the plain call's anti-join; on Citus, which refuses it, none
/// (`ON CONFLICT` alone skips stored keys), but with `filtered` (after that
/// form failed on a row the table refused, see `Form::Filtered`) Citus's
/// anti-join ([`fragments::stored_cte`]). With it no row of a key stored
/// before the statement reaches the table's triggers, and [`keys_kept`]
/// knows that such a row was not stored under another key.
fn drops_stored(model: &Model, from: Source<'_>, filtered: bool, alias: &str) -> Option<String> {
    match (from.is_citus(), filtered) {
        (false, _) => Some(not_stored(model, alias)),
        (true, true) => Some(fragments::not_in_stored(model, alias)),
        (true, false) => None,
    }
}

/// `"__bulk_ins"`: the conflict-skipping insert of the kept rows, in key order, that
/// returns the key of each row it inserted (as stored: it is matched to the
/// batch's row under the key's own equality, and read as the model's types
/// only when delivered), and the id when asked. Keys already stored are
/// dropped first by the anti-join of the plain call (see [`drops_stored`]).
fn insert_cte(model: &'static Model, from: Source<'_>, with_id: bool, filtered: bool) -> String {
    let target = model.qualified_name();
    let cols = names(model.columns());
    let key = names(model.unique_key());
    let mut sql = format!(
        "\"__bulk_ins\" AS (INSERT INTO {target} ({cols}) SELECT {} FROM \"__bulk_src\" AS \"s\"",
        values(model, from)
    );
    if let Some(unstored) = drops_stored(model, from, filtered, "\"s\"") {
        let _ = write!(sql, " WHERE {unstored}");
    }
    // The key, then the other columns (for `keys_kept`'s whole-row check).
    let is_key = |c: &Column| model.unique_key().any(|k| std::ptr::eq(k, c));
    let returning = model
        .unique_key()
        .chain(model.columns().iter().filter(|c| !is_key(c)))
        .map(|c| q(c.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        sql,
        " ORDER BY {} ON CONFLICT ({key}) DO NOTHING RETURNING {returning}",
        list("\"s\"", model.unique_key())
    );
    if let (true, Some(id)) = (with_id, model.id_column()) {
        let _ = write!(sql, ", {}::bigint AS {}", q(id), q(ID));
    }
    sql.push(')');
    sql
}

/// The insert that reports which rows it inserted:
///
/// ```sql
/// WITH "__bulk_src" AS (SELECT DISTINCT ON (key) ord, cols FROM <batch> ORDER BY key, ord),
///      "__bulk_ins" AS (INSERT INTO target (cols) SELECT ... FROM "__bulk_src" ORDER BY key
///                ON CONFLICT (key) DO NOTHING RETURNING key [, id])
/// SELECT "s".ord [, "i".id, "i".key] FROM "__bulk_ins" AS "i" JOIN "__bulk_src" AS "s" ON key
/// ```
///
/// The join maps each inserted key back to the kept row's position; it is one
/// to one (one kept row per key, one insert per key), so the number of rows
/// returned is the number inserted.
pub(crate) fn returning(model: &'static Model, from: Source<'_>, keep: Keep, returned: Returned) -> String {
    returning_as(model, from, keep, returned, false)
}

/// [`returning`] in Citus's dialect behind Citus's anti-join
/// ([`fragments::stored_cte`] of `"__bulk_src"`), after it failed on a row
/// the table refused (see `Form::Filtered`): the rows of stored keys never
/// reach the table. (In PostgreSQL's dialect, the same as [`returning`].)
pub(crate) fn returning_filtered(model: &'static Model, from: Source<'_>, returned: Returned) -> String {
    returning_as(model, from, Keep::First, returned, true)
}

fn returning_as(model: &'static Model, from: Source<'_>, keep: Keep, returned: Returned, filtered: bool) -> String {
    let with_id = matches!(returned, Returned::Keys { with_id: true }) && model.id_column().is_some();
    let src = src_cte(model, from, keep, false);
    let filtered = filtered && from.is_citus();
    let stored =
        if filtered { format!(", {}", fragments::stored_cte(model, "\"__bulk_src\" AS \"b\"")) } else { String::new() };
    let mut sql = format!("WITH {src}{stored}, {} SELECT \"s\".{}", insert_cte(model, from, with_id, filtered), q(ORD));
    if let Returned::Keys { .. } = returned {
        if with_id {
            let _ = write!(sql, ", \"i\".{}", q(ID));
        }
        // Read as the model's types (a `varchar`, `citext` or `numeric`
        // column as the model's `text` or `bigint`).
        for c in model.unique_key() {
            let _ = write!(sql, ", \"i\".{name}::{ty} AS {name}", name = q(c.name()), ty = c.pg_type().sql_name());
        }
    }
    let _ = write!(
        sql,
        " FROM \"__bulk_ins\" AS \"i\" JOIN \"__bulk_src\" AS \"s\" ON {} WHERE {}",
        key_match(model, "\"i\"", "\"s\""),
        keys_kept(model, drops_stored(model, from, filtered, "\"s4\""))
    );
    if let Returned::Keys { .. } = returned {
        let _ = write!(sql, " ORDER BY \"s\".{}", q(ORD));
    }
    sql
}

/// Marks the error a statement raises when a stored row's key is not the
/// key the batch offered (see [`keys_kept`]).
pub(crate) const KEY_CHANGED: &str = "bulk_runtime: the table changed the key of a row as it was stored";

/// A condition on a statement with the `"__bulk_ins"` and `"__bulk_src"` CTEs that holds
/// when every inserted row's key is the key of a kept row of the batch, and
/// otherwise raises an error whose message holds [`KEY_CHANGED`] (SQLSTATE
/// 22P02), so the statement writes nothing: a `BEFORE INSERT` trigger that
/// rewrites the key (`lower(email)`) would otherwise leave inserted rows
/// that no offered row can be mapped to. Evaluated once (it reads no row of
/// the query), after the insert has run.
///
/// A key match alone would miss a trigger that rewrote one offered key into
/// another key of the batch (the row stored under that key holds the other
/// row's values). So, first, each inserted row must be its kept row as
/// offered, in every column. When that fails (a trigger that sets
/// `updated_at`, a `timestamptz(3)` or `numeric(p, s)` column that rounds
/// what it stores), the keys alone must match, and no inserted row that
/// differs from its own kept row may hold exactly the values of another
/// kept row whose key no inserted row has (as text: it hashes, and reads the
/// same whatever the column's type): that row's key went missing, its
/// values stored under another key. (A kept row whose key was inserted too
/// is its own row: rounding can make two new rows' values equal.) With
/// `dropped_stored` (the insert's anti-join dropped the keys stored before
/// the statement, see [`drops_stored`]: `unstored`, of the row `"s4"`), nor may the other row's key be one
/// stored before the statement (its row never reached the table: a new
/// row that a trigger or rounding made equal to the offered row of a
/// stored key is its own row too). The second test runs only when the
/// first fails.
fn keys_kept(model: &Model, unstored: Option<String>) -> String {
    // JSON compares as jsonb (`json` has no equality). An array compares
    // only with an array of its own type, and the inserted row holds the
    // table's (`varchar(10)[]`, `citext[]`) where the batch holds the
    // model's (`text[]`): the inserted one is read as the model's type.
    let value = |alias: &str, c: &Column| match c.pg_type() {
        PgType::Jsonb => format!("{}.{}::jsonb", q(alias), q(c.name())),
        PgType::Array(_) if alias.starts_with('i') => {
            format!("{}.{}::{}", q(alias), q(c.name()), c.pg_type().sql_name())
        }
        _ => format!("{}.{}", q(alias), q(c.name())),
    };
    let is_key = |c: &Column| model.unique_key().any(|k| std::ptr::eq(k, c));
    let others: Vec<&Column> = model.columns().iter().filter(|c| !is_key(c)).collect();
    let row = |alias: &str| format!("ROW({})", others.iter().map(|c| value(alias, c)).collect::<Vec<_>>().join(", "));
    let inserted = "(SELECT count(*) FROM \"__bulk_ins\")";
    let keyed = |alias_i: &str, alias_s: &str| {
        format!(
            "FROM \"__bulk_ins\" AS {} JOIN \"__bulk_src\" AS {} ON {}",
            q(alias_i),
            q(alias_s),
            key_match(model, &q(alias_i), &q(alias_s))
        )
    };
    let raise = format!("pg_catalog.concat({})::int4 = 0", literal(KEY_CHANGED));
    if others.is_empty() {
        return format!("CASE WHEN {inserted} = (SELECT count(*) {}) THEN true ELSE {raise} END", keyed("i2", "s2"));
    }
    format!(
        "CASE WHEN {inserted} = (SELECT count(*) {keyed2} AND {i2} IS NOT DISTINCT FROM {s2}) THEN true \
         WHEN {inserted} = (SELECT count(*) {keyed2}) AND (SELECT count(*) {keyed3} \
         JOIN \"__bulk_src\" AS \"s4\" ON {i3}::text = {s4}::text \
         LEFT JOIN (SELECT *, true AS \"__bulk_hit\" FROM \"__bulk_ins\") AS \"i5\" ON {s4_inserted} \
         WHERE {i3} IS DISTINCT FROM {s3} AND \"s4\".{ord} <> \"s3\".{ord} AND \"i5\".\"__bulk_hit\" IS NULL{unstored}) = 0 \
         THEN true ELSE {raise} END",
        keyed2 = keyed("i2", "s2"),
        s4_inserted = key_match(model, "\"i5\"", "\"s4\""),
        keyed3 = keyed("i3", "s3"),
        i2 = row("i2"),
        s2 = row("s2"),
        i3 = row("i3"),
        s3 = row("s3"),
        s4 = row("s4"),
        ord = q(ORD),
        unstored = unstored.map(|u| format!(" AND {u}")).unwrap_or_default(),
    )
}

/// The upsert's first statement from the scratch table: insert the kept row
/// of every key not stored yet, then delete every scratch row of those keys,
/// so that the second statement sees only keys that were already stored.
/// Returns `(inserted, distinct keys offered)`.
pub(crate) fn upsert_insert_from_scratch(model: &'static Model, keep: Keep, dialect: Dialect) -> String {
    format!(
        "WITH {}, {}, \"__bulk_del\" AS (DELETE FROM pg_temp.{} AS \"x\" USING \"__bulk_ins\" AS \"i\" WHERE {}) \
         SELECT (SELECT count(*) FROM \"__bulk_ins\"), (SELECT count(*) FROM \"__bulk_src\") WHERE {}",
        src_cte(model, Source::Scratch(dialect), keep, false),
        insert_cte(model, Source::Scratch(dialect), false, false),
        q(&plan(model).scratch),
        key_match(model, "\"x\"", "\"i\""),
        keys_kept(model, drops_stored(model, Source::Scratch(dialect), false, "\"s4\"")),
    )
}

/// The upsert's statement between its two on Citus: deletes every scratch
/// row of the keys of the rows at the positions `$1` (those the first
/// statement, [`returning`], inserted), so that the second statement sees
/// only keys that were already stored. Elsewhere the first statement does
/// this itself ([`upsert_insert_from_scratch`]); on Citus, a
/// data-modifying `WITH` query on the session's temporary table beside the
/// insert into a distributed table runs as a task of its own, over a
/// connection to the coordinator (another session, without that table)
/// when `citus.enable_local_execution` is off.
pub(crate) fn upsert_forget_inserted(model: &'static Model) -> String {
    format!(
        "DELETE FROM pg_temp.{scratch} AS \"x\" USING pg_temp.{scratch} AS \"k\" \
         WHERE \"k\".{ord} = ANY ($1::pg_catalog.int8[]) AND {}",
        key_match(model, "\"x\"", "\"k\""),
        scratch = q(&plan(model).scratch),
        ord = q(ORD),
    )
}

/// The upsert's second statement: the kept row of every remaining key (from
/// the scratch table, or from the arrays with the mask of keys the first
/// statement inserted) goes in in key order with `ON CONFLICT (key) DO UPDATE
/// SET c = EXCLUDED.c, ...`, optionally `WHERE ROW(t.c, ...) IS DISTINCT FROM
/// ROW(EXCLUDED.c, ...)`. Returns `(keys considered, rows updated)`.
pub(crate) fn upsert_update(model: &'static Model, from: Source<'_>, set: &UpdateSet) -> String {
    let mask = matches!(from, Source::Arrays(_));
    let cols = names(model.columns());
    let key = names(model.unique_key());
    let assignments = set
        .columns
        .iter()
        .map(|c| format!("{name} = EXCLUDED.{name}", name = q(c.name())))
        .collect::<Vec<_>>()
        .join(", ");
    let mut up = format!(
        "\"__bulk_up\" AS (INSERT INTO {target} AS \"t\" ({cols}) SELECT {values} FROM \"__bulk_src\" AS \"s\" ORDER BY {order} \
         ON CONFLICT ({key}) DO UPDATE SET {assignments}",
        target = model.qualified_name(),
        values = values(model, from),
        order = list("\"s\"", model.unique_key()),
    );
    if set.only_if_changed {
        // A JSON model field may be stored in a `json` column, which has no
        // equality operator: compare both sides as `jsonb` (a no-op cast for
        // a `jsonb` column), which also ignores key order and white space.
        let compared = |alias: &str, c: &Column| match c.pg_type() {
            PgType::Jsonb => format!("{alias}.{}::jsonb", q(c.name())),
            _ => format!("{alias}.{}", q(c.name())),
        };
        let old = set.columns.iter().map(|c| compared("\"t\"", c)).collect::<Vec<_>>().join(", ");
        let new = set.columns.iter().map(|c| compared("EXCLUDED", c)).collect::<Vec<_>>().join(", ");
        let _ = write!(up, " WHERE ROW({old}) IS DISTINCT FROM ROW({new})");
    }
    up.push_str(" RETURNING 1)");
    format!(
        "WITH {}, {up} SELECT (SELECT count(*) FROM \"__bulk_src\"), (SELECT count(*) FROM \"__bulk_up\")",
        src_cte(model, from, set.keep, mask)
    )
}

/// Whether the target has the model's id column, of an integer type (so that
/// the returning insert can send it back as a `bigint`): `$1` the target as
/// for `to_regclass`, `$2` the id column's name.
pub(crate) const ID_COLUMN_USABLE: &str = "\
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2::name
                  AND attnum > 0 AND NOT attisdropped AND atttypid = ANY ('{20,21,23}'::oid[]))";

/// One round trip before the COPY of the call's variants: whether the scratch
/// table exists (`$1`), whether the id column is usable (`$2`, `$3` as in
/// [`ID_COLUMN_USABLE`]; `$3` NULL when not asked), and whether the Citus
/// staging table (`$4`) exists and is open to the current role as the
/// schema check requires (`SELECT`, `INSERT`, `DELETE`, and `USAGE` of the
/// sequence of the model's id column `$5`, NULL without one; a `SET ROLE`
/// since the check changes the answer), and no column of the target other
/// than the staging table's `$6` is left to a default that Citus would not
/// settle on the coordinator, an identity or a generated column (as the schema check's
/// Citus statement requires); and whether the target's text key columns
/// `$7` (`$8`: whether the model declares each nullable) compare as the scratch table's do (which took the table's type and
/// collation when the connection checked it), and the scratch table's enum
/// columns `$9` are of the types their names `$10` now resolve to (a
/// tenant's own enum type, its schema first on the `search_path`): when not
/// (a `search_path` that now leads to a same-named table whose key has
/// another collation or to another schema's enum type, a column altered or
/// dropped with its type), or the scratch table lacks one of the COPY's
/// columns `$11` (dropped: the type dropped with `CASCADE`, an `ALTER
/// TABLE`) or the current role may not insert into it, so that the server
/// would refuse the COPY as it starts, or the target has an `INSERT` or
/// `UPDATE` rule (created since the connection checked it: a `DO INSTEAD`
/// rule would replace the insert, guard and all, and its command tag
/// count the rows its action wrote elsewhere), the call makes the scratch
/// table again after a check (which refuses a table with such a rule);
/// whether the transaction is `READ COMMITTED`, the only isolation
/// that copies into the staging table (the guard after the insert from it,
/// `Plan::stage_guard`, reads the catalog as the insert saw it only there);
/// and whether every text key column compares as `text` does (no collation,
/// `citext`, `char(n)`, ...), read in the same pass over `$7` as the
/// comparison with the scratch table (see `call::copy::Before::bytewise_keys`).
pub(crate) static BEFORE_COPY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
SELECT pg_catalog.to_regclass($1) IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                WHERE attrelid = pg_catalog.to_regclass($2) AND attname = $3::name
                  AND attnum > 0 AND NOT attisdropped AND atttypid = ANY ('{{20,21,23}}'::oid[])),
       coalesce(pg_catalog.to_regclass($4) IS NOT NULL AND {open}, false),
       kc.fit
         AND NOT EXISTS (SELECT 1 FROM ROWS FROM (pg_catalog.unnest($9::pg_catalog.text[]), pg_catalog.unnest($10::pg_catalog.text[])) AS e(name, type)
                          WHERE (SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                                  WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = e.name AND NOT a.attisdropped)
                                IS DISTINCT FROM pg_catalog.to_regtype(e.type))
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest($11::pg_catalog.text[]) AS c(name)
                          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                                             WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = c.name
                                               AND a.attnum > 0 AND NOT a.attisdropped))
         AND coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass($1), 'INSERT'), true)
         AND NOT {rules},
       pg_catalog.current_setting('transaction_isolation') = 'read committed',
       kc.plain
  FROM (SELECT coalesce(pg_catalog.bool_and(cmp.target IS NOT DISTINCT FROM cmp.scratch), true),
               coalesce(pg_catalog.bool_and(cmp.target IS NOT DISTINCT FROM '{{NULL,NULL,NULL,NULL,NULL,NULL,NULL}}'::pg_catalog.text[]), true)
          FROM (SELECT {target}, {scratch}
                  FROM ROWS FROM (pg_catalog.unnest($7::pg_catalog.text[]), pg_catalog.unnest($8::pg_catalog.bool[])) AS k(name, nullable))
               AS cmp(target, scratch)) AS kc(fit, plain)",
        open =
            crate::schema::staging_open("pg_catalog.to_regclass($2)", "$2", "pg_catalog.to_regclass($4)", "$6", "$5"),
        target = fragments::column_compares("pg_catalog.to_regclass($2)", "k.name", "k.nullable"),
        scratch = fragments::column_compares("pg_catalog.to_regclass($1)", "k.name", "k.nullable"),
        rules = fragments::insert_rules("pg_catalog.to_regclass($2)"),
    )
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ColumnSpec, ModelSpec};
    use crate::sql::fixtures::{COLUMNS, MODEL, at};
    use crate::types::PgType;

    static NULLABLE_COLUMNS: [Column; 2] =
        [ColumnSpec::of("owner", PgType::Int4).build(), ColumnSpec::of("label", PgType::Text).nullable().build()];
    static NULLABLE_MODEL: Model = ModelSpec::of("Tag", "tag", &NULLABLE_COLUMNS, &[1, 0]).nulls_not_distinct().build();

    #[test]
    fn returning_keys_inserts_in_key_order_and_maps_keys_back_to_positions() {
        let sql =
            returning(&MODEL, Source::Arrays(&KeyShape::default()), Keep::First, Returned::Keys { with_id: true });
        let src = at(
            &sql,
            r#"WITH "__bulk_src" AS (SELECT DISTINCT ON ("u"."tweet", "u"."re""tweeter") "u"."__bulk_ord", "u"."tweet""#,
        );
        let arrays = at(
            &sql,
            r#"FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[]) AS "u"("__bulk_ord", "tweet", "re""tweeter", "author")"#,
        );
        let first = at(&sql, r#"ORDER BY "u"."tweet", "u"."re""tweeter", "u"."__bulk_ord" ASC)"#);
        let insert = at(
            &sql,
            r#""__bulk_ins" AS (INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT "s"."tweet""#,
        );
        let order =
            at(&sql, r#"ORDER BY "s"."tweet", "s"."re""tweeter" ON CONFLICT ("tweet", "re""tweeter") DO NOTHING"#);
        let ret = at(&sql, r#"RETURNING "tweet", "re""tweeter", "author", "id"::bigint AS "__bulk_id")"#);
        // Matched to the batch under the key's own equality, then read as
        // the model's types.
        let select = at(
            &sql,
            r#"SELECT "s"."__bulk_ord", "i"."__bulk_id", "i"."tweet"::bigint AS "tweet", "i"."re""tweeter"::bigint AS "re""tweeter" FROM "__bulk_ins" AS "i" JOIN "__bulk_src" AS "s""#,
        );
        at(&sql, r#"ON "i"."tweet" = "s"."tweet" AND "i"."re""tweeter" = "s"."re""tweeter" WHERE CASE WHEN "#);
        // Every inserted row must match a kept row, or the statement fails.
        at(&sql, &format!("{} ORDER BY \"s\".\"__bulk_ord\"", keys_kept(&MODEL, Some(not_stored(&MODEL, "\"s4\"")))));
        assert!(src < arrays && arrays < first && first < insert && insert < order && order < ret && ret < select);
        // Keys already stored are dropped by the anti-join before the
        // insert (its rows never reach the table), and `keys_kept` knows it.
        at(&sql, r#"FROM "__bulk_src" AS "s" WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "#);
        assert!(
            keys_kept(&MODEL, Some(not_stored(&MODEL, "\"s4\""))).contains(
                r#"NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "t"."tweet" = "s4"."tweet""#
            )
        );
        assert!(!keys_kept(&MODEL, None).contains("NOT EXISTS"));
        assert!(!sql.to_uppercase().contains("LOCK"), "{sql}");

        let sql = returning(&MODEL, Source::Scratch(Dialect::Postgres), Keep::First, Returned::Positions);
        at(&sql, &format!(r#"FROM pg_temp."{}" AS "u""#, crate::sql::plan(&MODEL).scratch));
        at(&sql, r#"WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "t"."tweet" = "s"."tweet""#);
        at(&sql, r#"SELECT "s"."__bulk_ord" FROM "__bulk_ins" AS "i" JOIN "__bulk_src" AS "s" ON "#);
        assert!(!sql.contains("__bulk_id") && !sql.ends_with("\"__bulk_ord\""), "{sql}");
    }

    #[test]
    fn on_citus_the_statements_from_the_scratch_table_have_no_anti_join() {
        let from = Source::Scratch(Dialect::Citus);
        let sql = returning(&MODEL, from, Keep::First, Returned::Keys { with_id: true });
        at(&sql, r#"FROM "__bulk_src" AS "s" ORDER BY "s"."tweet", "s"."re""tweeter" ON CONFLICT"#);
        let sql = upsert_insert_from_scratch(&MODEL, Keep::Last, Dialect::Citus);
        at(&sql, r#"FROM "__bulk_src" AS "s" ORDER BY "s"."tweet", "s"."re""tweeter" ON CONFLICT"#);
        let citus = KeyShape { dialect: Dialect::Citus, ..KeyShape::default() };
        let arrays = returning(&MODEL, Source::Arrays(&citus), Keep::First, Returned::Positions);
        for sql in [returning(&MODEL, from, Keep::First, Returned::Positions), sql, arrays] {
            // (The guard's `NOT EXISTS` reads Citus's metadata, not the table.)
            assert!(!sql.contains("WHERE NOT EXISTS"), "{sql}");
        }
        // The same statements in PostgreSQL's dialect keep it.
        let sql = upsert_insert_from_scratch(&MODEL, Keep::Last, Dialect::Postgres);
        at(&sql, r#"FROM "__bulk_src" AS "s" WHERE NOT EXISTS ("#);
    }

    #[test]
    fn nullable_keys_match_null_to_null_with_a_hashable_condition() {
        let sql = returning(
            &NULLABLE_MODEL,
            Source::Scratch(Dialect::Postgres),
            Keep::First,
            Returned::Keys { with_id: true },
        );
        at(&sql, r#"ON ARRAY["i"."label"] = ARRAY["s"."label"] AND "i"."owner" = "s"."owner""#);
        at(&sql, r#"("t"."label" = "s"."label" OR ("t"."label" IS NULL AND "s"."label" IS NULL))"#);
        assert!(!sql.contains("__bulk_id"), "no id column in the model: {sql}");
    }

    #[test]
    fn the_inserts_of_a_nullable_or_text_key_check_what_on_conflict_takes_blindly() {
        use crate::sql::fragments::on_conflict_guard;
        let shape = KeyShape::default();
        let arrays = on_conflict_guard(&NULLABLE_MODEL, Compared::As(&shape));
        let scratch_table = &plan(&NULLABLE_MODEL).scratch;
        let scratch = on_conflict_guard(&NULLABLE_MODEL, Compared::AsScratch(scratch_table));
        let guarded =
            |guard: &str| format!(r#"SELECT "s"."owner", CASE WHEN {guard} THEN "s"."label" END FROM "__bulk_src""#);
        let set = UpdateSet { columns: vec![&NULLABLE_COLUMNS[0]], only_if_changed: false, keep: Keep::Last };
        for keys in [Returned::Positions, Returned::Keys { with_id: false }] {
            at(&returning(&NULLABLE_MODEL, Source::Arrays(&shape), Keep::First, keys), &guarded(&arrays));
            let sql = returning(&NULLABLE_MODEL, Source::Scratch(Dialect::Postgres), Keep::First, keys);
            at(&sql, &guarded(&scratch));
        }
        at(&upsert_insert_from_scratch(&NULLABLE_MODEL, Keep::Last, Dialect::Postgres), &guarded(&scratch));
        at(&upsert_update(&NULLABLE_MODEL, Source::Arrays(&shape), &set), &guarded(&arrays));
        at(&upsert_update(&NULLABLE_MODEL, Source::Scratch(Dialect::Postgres), &set), &guarded(&scratch));
        // Citus's dialect: the same guards.
        let citus = KeyShape { dialect: Dialect::Citus, ..KeyShape::default() };
        let citus_arrays = on_conflict_guard(&NULLABLE_MODEL, Compared::As(&citus));
        at(
            &returning(&NULLABLE_MODEL, Source::Arrays(&citus), Keep::First, Returned::Positions),
            &guarded(&citus_arrays),
        );
        let citus_scratch = on_conflict_guard(&NULLABLE_MODEL, Compared::AsCitusScratch(scratch_table));
        at(&upsert_update(&NULLABLE_MODEL, Source::Scratch(Dialect::Citus), &set), &guarded(&citus_scratch));
        // On Citus the guards also check the table's kind; on PostgreSQL they cannot.
        let kind = crate::sql::fragments::citus_kind_fits(&NULLABLE_MODEL);
        assert!(citus_arrays.contains(&kind) && citus_scratch.contains(&kind), "{citus_arrays}");
        assert!(!arrays.contains("pg_dist_partition") && !scratch.contains("pg_dist_partition"), "{arrays}");
        // An integer key: only the columns' types and the encoding.
        let integer = [
            returning(&MODEL, Source::Arrays(&shape), Keep::First, Returned::Positions),
            upsert_insert_from_scratch(&MODEL, Keep::Last, Dialect::Postgres),
        ];
        let [arrays, scratch] = integer;
        for sql in [&arrays, &scratch] {
            assert!(!sql.contains("pg_index"), "{sql}");
        }
        // (From the statement itself for the short path's default shape.)
        at(&arrays, &crate::sql::fragments::columns_fit_by_type(&MODEL));
        at(&scratch, &crate::sql::fragments::columns_fit(&MODEL));
    }

    #[test]
    fn upsert_keeps_the_chosen_row_and_updates_only_the_chosen_columns() {
        let author = &COLUMNS[2];
        let set = UpdateSet { columns: vec![author], only_if_changed: true, keep: Keep::Last };
        let sql = upsert_update(&MODEL, Source::Arrays(&KeyShape::default()), &set);
        at(&sql, r#"$5::boolean[]) AS "u"("__bulk_ord", "tweet", "re""tweeter", "author", "__bulk_done")"#);
        at(&sql, r#""u"."__bulk_ord" DESC) AS "d" WHERE NOT "d"."__bulk_done")"#);
        let order = at(
            &sql,
            r#"ORDER BY "s"."tweet", "s"."re""tweeter" ON CONFLICT ("tweet", "re""tweeter") DO UPDATE SET "author" = EXCLUDED."author""#,
        );
        let changed = at(&sql, r#"WHERE ROW("t"."author") IS DISTINCT FROM ROW(EXCLUDED."author") RETURNING 1)"#);
        assert!(order < changed, "{sql}");
        at(&sql, r#"SELECT (SELECT count(*) FROM "__bulk_src"), (SELECT count(*) FROM "__bulk_up")"#);

        let set = UpdateSet { columns: vec![author], only_if_changed: false, keep: Keep::First };
        let sql = upsert_update(&MODEL, Source::Scratch(Dialect::Postgres), &set);
        assert!(!sql.contains("DISTINCT FROM") && !sql.contains("__bulk_done"), "{sql}");
        at(&sql, r#""u"."__bulk_ord" ASC)"#);

        let sql = upsert_insert_from_scratch(&MODEL, Keep::Last, Dialect::Postgres);
        at(&sql, r#"DO NOTHING RETURNING "#);
        at(
            &sql,
            &format!(
                r#""__bulk_del" AS (DELETE FROM pg_temp."{}" AS "x" USING "__bulk_ins" AS "i" WHERE "x"."tweet" = "i"."tweet""#,
                crate::sql::plan(&MODEL).scratch
            ),
        );
        at(&sql, r#"SELECT (SELECT count(*) FROM "__bulk_ins"), (SELECT count(*) FROM "__bulk_src")"#);
    }

    /// Names built to break out of a quoted identifier if quotes were not doubled.
    static EVIL_COLUMNS: [Column; 3] = [
        ColumnSpec::of("key", PgType::Int8).rename(r#"k"; DROP TABLE victim; --"#).build(),
        ColumnSpec::of("nk", PgType::Text).rename(r#"n"k"#).nullable().build(),
        ColumnSpec::of("select", PgType::Text).index().build(),
    ];
    static EVIL_MODEL: Model = ModelSpec::of("Evil", r#"t"; DROP TABLE victim; --"#, &EVIL_COLUMNS, &[0, 1])
        .schema(r#"s"; DROP SCHEMA x; --"#)
        .id(r#"i"d"#)
        .nulls_not_distinct()
        .build();

    /// `sql` with every `"..."` identifier (with `""` escapes) and every
    /// `'...'` literal removed; panics on an unterminated one.
    fn strip_quoted(sql: &str) -> String {
        let mut out = String::new();
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '"' && c != '\'' {
                out.push(c);
                continue;
            }
            loop {
                match chars.next() {
                    Some(q) if q == c && chars.peek() == Some(&c) => {
                        chars.next();
                    }
                    Some(q) if q == c => break,
                    Some(_) => {}
                    None => panic!("unterminated quote in {sql}"),
                }
            }
        }
        out
    }

    #[test]
    fn hostile_names_stay_inside_their_quotes() {
        let evil = UpdateSet { columns: vec![&EVIL_COLUMNS[2]], only_if_changed: true, keep: Keep::Last };
        let statements = [
            returning(&EVIL_MODEL, Source::Arrays(&KeyShape::default()), Keep::First, Returned::Keys { with_id: true }),
            returning(&EVIL_MODEL, Source::Scratch(Dialect::Postgres), Keep::First, Returned::Positions),
            upsert_insert_from_scratch(&EVIL_MODEL, Keep::Last, Dialect::Postgres),
            upsert_update(&EVIL_MODEL, Source::Arrays(&KeyShape::default()), &evil),
            upsert_update(&EVIL_MODEL, Source::Scratch(Dialect::Postgres), &evil),
        ];
        for sql in &statements {
            at(sql, r#""s""; DROP SCHEMA x; --"."t""; DROP TABLE victim; --""#);
            // Remove every quoted identifier and literal: no quote, and no `;`, may remain.
            assert_eq!(strip_quoted(sql).matches(['"', ';', '\'']).count(), 0, "{sql}");
        }
        at(&statements[0], r#""i""d"::bigint AS "__bulk_id""#);
        let ledger = crate::api::Ledger::new(r#"l"; DROP TABLE victim; --"#).in_schema(r#"s"x"#);
        for sql in ledger.migration_statements() {
            assert_eq!(strip_quoted(&sql).matches(['"', ';']).count(), 0, "{sql}");
        }
    }

    #[test]
    fn array_columns_take_three_parameters_before_the_mask() {
        static ARRAY_COLUMNS: [Column; 3] = [
            ColumnSpec::of("key", PgType::Int8).build(),
            ColumnSpec::of("tags", PgType::Array(&PgType::Text)).nullable().build(),
            ColumnSpec::of("note", PgType::Text).build(),
        ];
        static ARRAY_MODEL: Model = ModelSpec::of("Tagged", "tagged", &ARRAY_COLUMNS, &[0]).build();
        assert_eq!(
            array_types(&ARRAY_MODEL, true),
            [
                Type::INT8_ARRAY,
                Type::INT8_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
                Type::BOOL_ARRAY
            ]
        );
        let shape = KeyShape::default();
        let set = UpdateSet { columns: vec![&ARRAY_COLUMNS[1]], only_if_changed: true, keep: Keep::Last };
        let sql = upsert_update(&ARRAY_MODEL, Source::Arrays(&shape), &set);
        at(
            &sql,
            r#"FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $6::text[], $7::boolean[]) WITH ORDINALITY AS "u"("__bulk_ord", "key", "tags", "note", "__bulk_done", "__bulk_row")"#,
        );
        at(&sql, r#"FROM (SELECT unnest($4::text[]) AS "v", unnest($5::integer[]) AS "r", "#);
        at(&sql, r#"CASE WHEN "u"."tags" IS NOT NULL THEN COALESCE("__bulk_e1"."v", ARRAY[]::text[]) END AS "tags""#);
        at(&sql, r#""u"."__bulk_done" FROM unnest("#);
        at(&sql, r#"WHERE ROW("t"."tags") IS DISTINCT FROM ROW(EXCLUDED."tags")"#);
        for returned in [Returned::Positions, Returned::Keys { with_id: false }] {
            for keep in [Keep::First, Keep::Last] {
                let sql = returning(&ARRAY_MODEL, Source::Arrays(&shape), keep, returned);
                at(&sql, r#"FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $6::text[]) WITH ORDINALITY"#);
                at(&sql, r#"ORDER BY "u"."__bulk_row") AS "u" ORDER BY "u"."key", "u"."__bulk_ord""#);
                assert!(!sql.contains("$7"), "{sql}");
            }
        }
    }

    #[test]
    fn array_types_list_positions_columns_and_the_mask() {
        assert_eq!(
            array_types(&MODEL, false),
            [Type::INT8_ARRAY, Type::INT8_ARRAY, Type::INT8_ARRAY, Type::TEXT_ARRAY]
        );
        assert_eq!(array_types(&MODEL, true).last(), Some(&Type::BOOL_ARRAY));
    }
}
