//! The plain call's insert, in its two forms, from each source of rows.
//!
//! The plain form (a call's first attempt, from 128 rows) is the same
//! statement whatever the source:
//!
//! ```sql
//! INSERT INTO target (cols)
//! SELECT [DISTINCT ON (s.key)] s.col, ..., CASE WHEN <guard> THEN s.last_col END FROM <batch> AS s
//! WHERE NOT EXISTS (SELECT 1 FROM target AS t WHERE t.key = s.key)
//! ORDER BY s.key[, s.__bulk_ord]
//! ```
//!
//! The anti-join comes before `DISTINCT ON`, so only the rows of keys not
//! stored yet are sorted; the first offered row of each remaining key is
//! inserted, in key order (no deadlock between overlapping batches, no table
//! lock). Without `DISTINCT ON` when no key repeats (the client saw none, or
//! sent the rows in key order, each key once). Without `ON CONFLICT` each
//! row is one plain insert (no speculative insertion, no second index probe,
//! no confirmation record: about a quarter of the insert's cost on the
//! retweeter table). A key another writer stored after the statement's
//! snapshot makes it fail with `unique_violation`, writing nothing; the call
//! then runs the `ON CONFLICT` form on the same rows. The guard
//! ([`key_index_guard`]) keeps the plain form from trusting a unique index
//! that is gone. It sits in the select list, not in the `WHERE`: there, a
//! condition that names no column of the join made PostgreSQL 15 give up
//! the anti-join's index probes (a hash anti-join over the whole target, or
//! bitmap heap scans), so that each call of a COPY batch read the entire
//! table (measured: 52 s against 23 s for 1,000,000 rows into a table of
//! 47,000,000; see `BENCHMARKS.md`, the 100M-row run). In the select list
//! it is evaluated (once: it is uncorrelated) when the first row is
//! projected, before any row is inserted; with no row to insert it is not
//! evaluated, and nothing is written.

use super::KeyShape;
use super::fragments::{
    Arrays, Compared, ORD, arrays, arrays_guarded, cols, counted, key_index_guard, names, not_in_stored, not_stored,
    on_conflict_guard, q, scratch, stored_cte,
};
use crate::model::Model;
use crate::types::PgType;

/// The plain form (see the module's documentation) from `source`, the batch
/// as the relation `alias`; with `dedup`, the first offered row of each key.
/// `compared`: how the statement reads the batch's key (for the guard).
fn plain(model: &Model, source: &str, alias: &str, dedup: bool, compared: Compared<'_>) -> String {
    let key = cols(alias, model.unique_key());
    let (distinct, order) = if dedup {
        (format!("DISTINCT ON ({key}) "), format!("{key}, {alias}.{}", q(ORD)))
    } else {
        (String::new(), key)
    };
    format!(
        "INSERT INTO {target} ({names}) SELECT {distinct}{cols} FROM {source} WHERE {not_stored} ORDER BY {order}",
        target = model.qualified_name(),
        names = names(model.columns()),
        cols = guarded_cols(model, alias, &key_index_guard(model, compared)),
        not_stored = not_stored(model, alias),
    )
}

/// The model's columns of `alias`, the last one as `CASE WHEN <guard> THEN
/// alias.col END` (the value itself, once the guard let the statement go on):
/// see the module's documentation for why the guard goes there.
fn guarded_cols(model: &Model, alias: &str, guard: &str) -> String {
    let columns = model.columns();
    let Some((last, rest)) = columns.split_last() else { return String::new() };
    let guarded = format!("CASE WHEN {guard} THEN {alias}.{} END", q(last.name()));
    if rest.is_empty() { guarded } else { format!("{}, {guarded}", cols(alias, rest)) }
}

/// The model's columns of `alias` in an `ON CONFLICT` form: guarded as in
/// [`guarded_cols`] by [`on_conflict_guard`] when the key needs it. Also
/// the select list of the inserts of the call's variants (see
/// [`variants`](super::variants)).
pub(super) fn on_conflict_cols(model: &Model, alias: &str, compared: Compared<'_>) -> String {
    guarded_cols(model, alias, &on_conflict_guard(model, compared))
}

/// The layout of the plain call's array parameters (both forms): the
/// positions first, unless the client orders the key (`client_ordered`).
pub(super) fn layout(client_ordered: bool) -> Arrays {
    Arrays { positions: !client_ordered, mask: false }
}

/// The COPY path's plain form, from the scratch table; with `repeats`, the
/// batch may hold a key twice.
pub(crate) fn scratch_plain(model: &Model, scratch_table: &str, repeats: bool) -> String {
    plain(model, &scratch(scratch_table, "\"s\""), "\"s\"", repeats, Compared::AsScratch(scratch_table))
}

/// The short path's plain form, from the array parameters: for a key the
/// client orders (`client_ordered`), the rows arrive in key order with each
/// key once, so no positions and no `DISTINCT ON`; the `ORDER BY` then costs
/// one pass over rows already in order, and keeps the insert in key order
/// whatever join the planner picks.
pub(crate) fn arrays_plain(model: &Model, client_ordered: bool, shape: &KeyShape) -> String {
    let source = arrays_guarded(model, "u", layout(client_ordered), shape);
    plain(model, &source, "u", !client_ordered, Compared::As(shape))
}

/// The COPY path's `ON CONFLICT` form:
///
/// ```sql
/// INSERT INTO target (cols)
/// SELECT s.cols FROM (
///     SELECT DISTINCT ON (key) cols FROM pg_temp.scratch ORDER BY key, __bulk_ord
/// ) AS s
/// WHERE NOT EXISTS (SELECT 1 FROM target AS t WHERE t.key = s.key)
/// ORDER BY s.key
/// ON CONFLICT (key) DO NOTHING
/// ```
///
/// For a nullable or text key, the last column is guarded as in the plain
/// form, by [`on_conflict_guard`]: `ON CONFLICT` takes an index the call
/// cannot rely on.
pub(crate) fn scratch_on_conflict(model: &Model, scratch_table: &str) -> String {
    let key = names(model.unique_key());
    format!(
        "INSERT INTO {target} ({names}) SELECT {cols} FROM (SELECT DISTINCT ON ({key}) {names} FROM pg_temp.{scratch} \
         ORDER BY {key}, {ord}) AS \"s\" WHERE {not_stored} ORDER BY {s_key} ON CONFLICT ({key}) DO NOTHING",
        target = model.qualified_name(),
        names = names(model.columns()),
        cols = on_conflict_cols(model, "\"s\"", Compared::AsScratch(scratch_table)),
        scratch = q(scratch_table),
        ord = q(ORD),
        not_stored = not_stored(model, "\"s\""),
        s_key = cols("\"s\"", model.unique_key()),
    )
}

/// The short path's insert after its `ON CONFLICT` form failed on a row
/// the table refused (see `Form::Filtered`): the anti-join before `ON
/// CONFLICT`, so that the rows of keys already stored never reach the
/// table, its row triggers, its `CHECK` constraints or its columns' type
/// modifiers, as in the plain form and the COPY path's `ON CONFLICT` form:
///
/// ```sql
/// INSERT INTO target (cols)
/// SELECT DISTINCT ON (u.key) u.cols FROM unnest(...) AS u(__bulk_ord, cols)
/// WHERE NOT EXISTS (SELECT 1 FROM target AS t WHERE t.key = u.key)
/// ORDER BY u.key, u.__bulk_ord
/// ON CONFLICT (key) DO NOTHING
/// ```
///
/// A key another writer stored after the statement's snapshot meets `ON
/// CONFLICT` (its row reaches the table then, as in the COPY path's form).
/// Guarded as [`arrays_on_conflict`] is. Without `DISTINCT ON` and
/// positions for a key the client orders (`client_ordered`).
pub(crate) fn arrays_filtered(model: &Model, client_ordered: bool, shape: &KeyShape) -> String {
    let key = cols("u", model.unique_key());
    let (distinct, order) = if client_ordered {
        (String::new(), key)
    } else {
        (format!("DISTINCT ON ({key}) "), format!("{key}, u.{}", q(ORD)))
    };
    format!(
        "INSERT INTO {target} ({names}) SELECT {distinct}{cols} FROM {source} WHERE {not_stored} ORDER BY {order} \
         ON CONFLICT ({key_names}) DO NOTHING",
        target = model.qualified_name(),
        names = names(model.columns()),
        cols = on_conflict_cols(model, "u", Compared::As(shape)),
        source = arrays(model, "u", layout(client_ordered), shape),
        not_stored = not_stored(model, "u"),
        key_names = names(model.unique_key()),
    )
}

/// The short path's `ON CONFLICT` form (batches under
/// [`PLAIN_FROM`](crate::call::PLAIN_FROM) rows, and the attempt after a
/// conflict):
///
/// ```sql
/// INSERT INTO target (cols)
/// SELECT DISTINCT ON (u.key) u.cols FROM unnest($1::bigint[], $2::type[], ...) AS u(__bulk_ord, cols)
/// ORDER BY u.key, u.__bulk_ord
/// ON CONFLICT (key) DO NOTHING
/// ```
///
/// Rows go in in key order, the first offered row of each key only (its
/// repeats never reach the table, its triggers or its checks: a trigger that
/// drops the first row must not let a repeat in); keys
/// already stored are skipped by `ON CONFLICT`'s own probe of the unique
/// index (no anti-join to plan). For a key the client orders
/// (`client_ordered`), the rows arrive in key order, each key once: no
/// positions, no sort. The guarantees are the COPY path's: first offered
/// wins, exact counts from the command tag, key order against deadlocks, no
/// table lock. For a nullable or text key, the last column is guarded as in
/// the plain form, by [`on_conflict_guard`].
pub(crate) fn arrays_on_conflict(model: &Model, client_ordered: bool, shape: &KeyShape) -> String {
    let (distinct, order) = if client_ordered {
        (String::new(), String::new())
    } else {
        let key = cols("u", model.unique_key());
        (format!("DISTINCT ON ({key}) "), format!(" ORDER BY {key}, u.{}", q(ORD)))
    };
    format!(
        "INSERT INTO {target} ({names}) SELECT {distinct}{cols} FROM {source}{order} ON CONFLICT ({key}) DO NOTHING",
        target = model.qualified_name(),
        names = names(model.columns()),
        cols = on_conflict_cols(model, "u", Compared::As(shape)),
        source = arrays(model, "u", layout(client_ordered), shape),
        key = names(model.unique_key()),
    )
}

/// The short path's insert in Citus's dialect (see `notes/citus.md`, §0):
/// no anti-join, `ON CONFLICT` over one row per key, counted from
/// `RETURNING` (Citus's command tag counts attempted rows):
///
/// ```sql
/// WITH "__bulk_src" AS (SELECT DISTINCT ON (u.key) u.__bulk_ord, u.cols FROM unnest(...) AS u(...)
///                ORDER BY u.key, u.__bulk_ord),
///      "__bulk_ins" AS (INSERT INTO target (cols) SELECT s.cols FROM "__bulk_src" AS s ORDER BY s.key
///                ON CONFLICT (key) DO NOTHING RETURNING 1)
/// SELECT count(*) FROM "__bulk_ins"
/// ```
///
/// For a key the client orders (`client_ordered`: in key order, each key
/// once), straight from the arrays, without `src`. For a nullable or text
/// key, the last column is guarded as in the plain form, by
/// [`on_conflict_guard`] (a NULLS DISTINCT index in place of the key, or a
/// `search_path` that now leads to a same-named table whose key compares
/// otherwise, would let `DISTINCT ON` and `ON CONFLICT` keep the wrong rows):
/// the guard's catalog query reads the coordinator's catalog, where Citus
/// keeps the distributed table's indexes.
///
/// `filtered` (after this statement failed on a row the table refused, see
/// `Form::Filtered`): the rows of keys the target holds are kept out of the
/// insert by Citus's anti-join ([`stored_cte`]), so that they never reach
/// the table's triggers, checks and type modifiers, as on plain PostgreSQL.
pub(crate) fn arrays_citus(model: &Model, client_ordered: bool, shape: &KeyShape, filtered: bool) -> String {
    let layout = Arrays { positions: !client_ordered, mask: false };
    let source = arrays(model, "u", layout, shape);
    let target = model.qualified_name();
    let (names, key) = (names(model.columns()), names(model.unique_key()));
    if client_ordered && !filtered {
        let insert = format!(
            "INSERT INTO {target} ({names}) SELECT {cols} FROM {source} ON CONFLICT ({key}) DO NOTHING",
            cols = on_conflict_cols(model, "u", Compared::As(shape)),
        );
        return counted(&[], &insert);
    }
    let u_key = cols("u", model.unique_key());
    let u_cols = cols("u", model.columns());
    let src = if client_ordered {
        format!("\"__bulk_src\" AS (SELECT {u_cols} FROM {source})")
    } else {
        format!(
            "\"__bulk_src\" AS (SELECT DISTINCT ON ({u_key}) u.{ord}, {u_cols} FROM {source} ORDER BY {u_key}, u.{ord})",
            ord = q(ORD),
        )
    };
    let (stored, filter) = citus_filter(model, "\"__bulk_src\" AS \"b\"", filtered);
    let insert = format!(
        "INSERT INTO {target} ({names}) SELECT {s_cols} FROM \"__bulk_src\" AS \"s\"{filter} ORDER BY {s_key} \
         ON CONFLICT ({key}) DO NOTHING",
        s_cols = on_conflict_cols(model, "\"s\"", Compared::As(shape)),
        s_key = cols("\"s\"", model.unique_key()),
    );
    counted(&[Some(src), stored].into_iter().flatten().collect::<Vec<_>>(), &insert)
}

/// With `filtered`, the CTE ([`stored_cte`] of `batch`) and the `WHERE`
/// clause ([`not_in_stored`] of `"s"`) of an insert in Citus's dialect that
/// keeps out the rows of stored keys; without, neither.
fn citus_filter(model: &Model, batch: &str, filtered: bool) -> (Option<String>, String) {
    match filtered {
        true => (Some(stored_cte(model, batch)), format!(" WHERE {}", not_in_stored(model, "\"s\""))),
        false => (None, String::new()),
    }
}

/// The COPY path's insert in Citus's dialect, from the scratch table: the
/// first offered row of each key, `ON CONFLICT`, counted from `RETURNING`.
///
/// ```sql
/// WITH "__bulk_ins" AS (INSERT INTO target (cols)
///                SELECT DISTINCT ON (s.key) s.cols FROM pg_temp.scratch AS s ORDER BY s.key, s.__bulk_ord
///                ON CONFLICT (key) DO NOTHING RETURNING 1)
/// SELECT count(*) FROM "__bulk_ins"
/// ```
///
/// Without `repeats` (the client saw no key twice), without `DISTINCT ON`
/// and its sort: the coordinator only reads the scratch table and hands
/// each shard its rows (Citus locks the shards of a multi-shard write in
/// shard order, so the rows' order does not matter against deadlocks; see
/// `notes/citus.md`, §3). For a nullable or text key, the last column is
/// guarded by [`on_conflict_guard`], as in [`arrays_citus`]; `filtered` as
/// there.
pub(crate) fn scratch_citus(model: &Model, scratch_table: &str, repeats: bool, filtered: bool) -> String {
    let s_key = cols("\"s\"", model.unique_key());
    let (distinct, order) = if repeats {
        (format!("DISTINCT ON ({s_key}) "), format!(" ORDER BY {s_key}, \"s\".{}", q(ORD)))
    } else {
        (String::new(), String::new())
    };
    let (stored, filter) = citus_filter(model, &scratch(scratch_table, "\"b\""), filtered);
    let insert = format!(
        "INSERT INTO {target} ({names}) SELECT {distinct}{s_cols} FROM {source}{filter}{order} \
         ON CONFLICT ({key}) DO NOTHING",
        target = model.qualified_name(),
        names = names(model.columns()),
        s_cols = on_conflict_cols(model, "\"s\"", Compared::AsCitusScratch(scratch_table)),
        source = scratch(scratch_table, "\"s\""),
        key = names(model.unique_key()),
    );
    counted(stored.as_slice(), &insert)
}

/// The COPY path's insert on Citus from the target's co-located staging
/// table ([`Model::citus_staging_sql`](crate::Model::citus_staging_sql)):
/// the first offered row of each key, in key order, counted from the
/// command tag. In the `ON CONFLICT` form:
///
/// ```sql
/// INSERT INTO target (id, cols)
/// SELECT DISTINCT ON (s.key) s.id, s.cols FROM schema.stage AS s ORDER BY s.key, s.__bulk_ord
/// ON CONFLICT (key) DO NOTHING
/// ```
///
/// In the plain form (`plain`, a call's first attempt), the anti-join
/// instead of `ON CONFLICT`: `... FROM schema.stage AS s WHERE NOT EXISTS
/// (SELECT 1 FROM target AS t WHERE t.key = s.key) ORDER BY ...`, one plain
/// insert per new row (no speculative insertion); a key another writer
/// stored meanwhile fails it with `unique_violation`, and the call runs the
/// `ON CONFLICT` form. With both (`anti_join` and `on_conflict`: after the
/// `ON CONFLICT` form failed on a row the table refused), the rows
/// of stored keys never reach the table, its triggers or its checks. The
/// anti-join joins on the key, which holds the
/// distribution column, so it stays on each shard. Its guard is a statement
/// of its own ([`Plan::staged_guard`](super::Plan::staged_guard)), run after
/// it: a catalog query inside a distributed statement would not stay on
/// the shards.
///
/// The staging table is distributed by the target's distribution column
/// and co-located with it, so Citus pushes the whole statement down: each
/// shard inserts from its own staging shard, and the command tag is the sum
/// of the shards' own tags (the rows inserted, exact). Without `repeats`,
/// no `DISTINCT ON`; the rows still go in key order, against deadlocks
/// between writers of overlapping keys on a shard, and in the `ON CONFLICT`
/// form in offered order within a key: the client found no repeat by the
/// keys' bytes, but two keys of other bytes may be one key to the table
/// (`0.0` and `-0.0` of a `float8`, jsonb `1` and `1.0`), and then the
/// first offered must be inserted first (the plain form fails on them with
/// `unique_violation`, and this form follows). The staging table holds
/// only the call's own rows (the rows of other sessions' calls are never
/// committed, so never seen).
pub(crate) fn staged_citus(model: &Model, repeats: bool, anti_join: bool, on_conflict: bool) -> String {
    let s_key = cols("\"s\"", model.unique_key());
    let distinct = if repeats { format!("DISTINCT ON ({s_key}) ") } else { String::new() };
    let plain = anti_join && !on_conflict;
    // Offered order within a key, but for the plain form of distinct keys
    // (which inserts no key twice, or fails).
    let order = if plain && !repeats { s_key.clone() } else { format!("{s_key}, \"s\".{}", q(ORD)) };
    // The surrogate id, drawn from the target's sequence as the rows were
    // copied: with every value named, Citus runs the insert on the shards.
    let (id, s_id) = match model.id_column() {
        Some(id) => (format!("{}, ", q(id)), format!("\"s\".{}, ", q(id))),
        None => (String::new(), String::new()),
    };
    let filter = if anti_join { format!(" WHERE {}", not_stored(model, "\"s\"")) } else { String::new() };
    let on_conflict =
        if on_conflict { format!(" ON CONFLICT ({}) DO NOTHING", names(model.unique_key())) } else { String::new() };
    format!(
        "INSERT INTO {target} ({id}{names}) SELECT {distinct}{s_id}{s_cols} FROM {stage} AS \"s\"{filter} \
         ORDER BY {order}{on_conflict}",
        target = model.qualified_name(),
        names = names(model.columns()),
        s_cols = cols("\"s\"", model.columns()),
        stage = model.staging_qualified_name(),
    )
}

/// The short path's insert of `rows` rows on Citus for a key the client
/// orders: one multi-row `VALUES` list, one parameter per value (rows in
/// key order, each key once, as the client sends them), counted from the
/// command tag:
///
/// ```sql
/// INSERT INTO target (cols) VALUES ($1, $2, $3), ($4, $5, $6), ...
/// ON CONFLICT (key) DO NOTHING
/// ```
///
/// Citus routes each row to its shard and runs one `INSERT ... VALUES` per
/// shard, in parallel, with no intermediate result; the command tag is the
/// sum of the shards' own tags: the rows they inserted (unlike an
/// `INSERT ... SELECT`'s, which counts the rows attempted). A key column
/// that the table compares otherwise (`shape`) is cast as it says.
pub(crate) fn values_on_conflict(model: &Model, rows: usize, shape: &KeyShape) -> String {
    let columns = model.columns();
    let key: Vec<Option<usize>> = columns.iter().map(|c| model.unique_key().position(|k| std::ptr::eq(k, c))).collect();
    let mut sql = format!("INSERT INTO {} ({}) VALUES ", model.qualified_name(), names(columns));
    sql.reserve(rows * columns.len() * 8 + 64);
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for (c, k) in key.iter().enumerate() {
            n += 1;
            let param = format!("${n}");
            if c > 0 {
                sql.push_str(", ");
            }
            match (k, columns[c].pg_type()) {
                (Some(k), _) if !shape.is_plain() => sql.push_str(&shape.read(*k, &param)),
                // An enum's value goes as its label's text, which PostgreSQL
                // assigns to an enum column only through an explicit cast.
                (_, PgType::Enum(name)) => sql.push_str(&format!("{param}::{name}")),
                _ => sql.push_str(&param),
            }
        }
        sql.push(')');
    }
    sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", names(model.unique_key())));
    sql
}

/// `insert` (one of this module's `INSERT`s) returning every model column,
/// in the model's order: the server's description of the result then names
/// the table and each column's type and type modifier (see `call::first`).
pub(crate) fn returning_all(model: &Model, insert: &str) -> String {
    format!("{insert} RETURNING {}", names(model.columns()))
}
