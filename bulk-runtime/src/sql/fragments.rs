//! The pieces every statement is assembled from: column lists, the key's
//! equality, the anti-join, the batch as a relation (array parameters or
//! the scratch table), literals and the guards of the insert's two forms.
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

/// The CTE of [`stored_cte`].
pub(crate) const STORED: &str = "__bulk_stored";

/// Citus's anti-join, as a CTE (`"__bulk_stored"`): the keys of the batch
/// `batch` (a relation aliased `"b"`: the `"__bulk_src"` CTE, or the
/// session's scratch table) that the target holds, `MATERIALIZED`, as the
/// batch spells them (so that [`not_in_stored`] finds each row of such a
/// key by its own value, whatever collation the coordinator compares
/// them under, where the join compared them as the table does). Citus
/// refuses a batch correlated with a distributed table (see
/// `notes/citus.md`, §0), but runs this join on each shard, next to its
/// rows, with the batch's keys as an intermediate result (a subquery, so
/// that a coordinator-local scratch table is read on the coordinator whatever
/// `citus.local_table_join_policy` says); the insert then keeps out the rows
/// whose key it found ([`not_in_stored`]), on the coordinator. Only after
/// an `ON CONFLICT` form alone failed on a row the table refused (see
/// `Form::Filtered`): it sends every key of the batch to every shard.
pub(crate) fn stored_cte(model: &Model, batch: &str) -> String {
    format!(
        "{stored} AS MATERIALIZED (SELECT {b_key} FROM {target} AS \"t\" JOIN (SELECT {b_key} FROM {batch}) AS \"b\" ON {on})",
        stored = q(STORED),
        target = model.qualified_name(),
        b_key = cols("\"b\"", model.unique_key()),
        on = key_match(model, "\"t\"", "\"b\""),
    )
}

/// The row `alias` has none of the keys [`stored_cte`] found stored.
pub(crate) fn not_in_stored(model: &Model, alias: &str) -> String {
    format!("NOT EXISTS (SELECT 1 FROM {} AS \"x\" WHERE {})", q(STORED), key_match(model, "\"x\"", alias))
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
    arrays_with(model, alias, layout, shape, None)
}

/// [`arrays`], with the [`rules_guard`] of the target as one more array
/// of `unnest` (an empty one, read as the column [`RULES`], which the
/// statement does not use): the plain form's source on the short path.
/// A `DO INSTEAD` rule replaces the statement, the guard in its select list
/// too, but its action reads the statement's rows, so `unnest` runs, and
/// with it the guard. One more `unnest` argument leaves the estimate of
/// the batch's rows as it was (the largest of its arrays').
pub(crate) fn arrays_guarded(model: &Model, alias: &str, layout: Arrays, shape: &KeyShape) -> String {
    arrays_with(model, alias, layout, shape, Some(&rules_guard(model)))
}

/// The column of the [`rules_guard`]'s empty array in [`arrays_guarded`].
const RULES: &str = "__bulk_rules";

/// An empty `integer[]` unless the table the target's name resolves to has
/// an `INSERT` or `UPDATE` rule (created since the session checked the
/// table, which refuses such a table): then a division by zero (SQLSTATE
/// 22012, the plain form's guard's refusal, see [`key_index_guard`]).
/// Uncorrelated: evaluated once, as `unnest` starts, under the insert's lock.
pub(crate) fn rules_guard(model: &Model) -> String {
    let table = format!("{}::pg_catalog.regclass", literal(&model.qualified_name()));
    format!("CASE WHEN 1 / (NOT {})::pg_catalog.int4 = 1 THEN '{{}}'::pg_catalog.int4[] END", insert_rules(&table))
}

/// Whether the table `relation` (an OID expression) has an `INSERT` or
/// `UPDATE` rule (`ev_type` 3 or 2), which the schema check refuses.
pub(crate) fn insert_rules(relation: &str) -> String {
    format!("EXISTS ({})", insert_rule_names(relation))
}

/// The names of the `INSERT` and `UPDATE` rules of the table `relation`
/// (an OID expression): see [`insert_rules`].
pub(crate) fn insert_rule_names(relation: &str) -> String {
    format!(
        "SELECT r.rulename::text FROM pg_catalog.pg_rewrite AS r WHERE r.ev_class = {relation} AND r.ev_type IN ('2', '3')"
    )
}

/// The enabled `BEFORE INSERT` row triggers (as `g.tgname`) of the table
/// `relation` (an OID expression) and of its partitions at every level
/// (`pg_partition_tree`, which returns nothing for a table that is neither
/// partitioned nor a partition): a trigger defined on a partition alone
/// fires for the rows routed there. A trigger on a partitioned table is
/// cloned, under its name, onto each partition.
pub(crate) fn before_insert_row_triggers(relation: &str) -> String {
    format!(
        "SELECT g.tgname FROM pg_catalog.pg_trigger AS g \
         WHERE (g.tgrelid = {relation} OR g.tgrelid IN (SELECT relid FROM pg_catalog.pg_partition_tree({relation}))) \
         AND NOT g.tgisinternal AND g.tgenabled <> 'D' AND g.tgtype::int & 7 = 7"
    )
}

fn arrays_with(model: &Model, alias: &str, layout: Arrays, shape: &KeyShape, guard: Option<&str>) -> String {
    let mut params = Params::new(model, layout);
    if let Some(guard) = guard {
        params.arrays.push(guard.to_owned());
        params.names.push(q(RULES));
    }
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
/// SQL, after the CTEs `ctes`: `WITH ctes, "__bulk_ins" AS (insert RETURNING 1)
/// SELECT count(*) FROM "__bulk_ins"`. Citus's dialect: there the command tag of an
/// `INSERT ... SELECT` is the number of rows attempted, `RETURNING` gives
/// exactly the rows the shards inserted.
pub(crate) fn counted(ctes: &[String], insert: &str) -> String {
    let mut with: Vec<String> = ctes.to_vec();
    with.push(format!("\"__bulk_ins\" AS ({insert} RETURNING 1)"));
    format!("WITH {} SELECT count(*) FROM \"__bulk_ins\"", with.join(", "))
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

/// How the statements of a call expect the target's key to compare: what
/// the guards ([`key_index_guard`], [`on_conflict_guard`]) check besides the
/// unique index, for a key with a text column (only a text key compares
/// otherwise than the model's types: see [`KeyShape`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Compared<'a> {
    /// Not checked: the guard of the Citus staging table's insert (a staged
    /// table's key compares as the model's types), as it always was.
    Unchecked,
    /// As `shape` says: the short path's statement reads the batch through it.
    As(&'a KeyShape),
    /// As the key columns of the session's scratch table `scratch` do: the
    /// COPY path's statements read the batch from there, whose key columns
    /// took the table's type and collation when the connection checked it.
    AsScratch(&'a str),
    /// As [`Compared::AsScratch`], in a statement of Citus's dialect (its
    /// guard also checks the table's kind: [`citus_kind_fits`]).
    AsCitusScratch(&'a str),
}

impl Compared<'_> {
    /// Whether the guarded statement is of Citus's dialect: its guard also
    /// checks the table's kind ([`citus_kind_fits`]).
    fn citus(self) -> bool {
        match self {
            Compared::As(shape) => shape.dialect.is_citus(),
            Compared::AsCitusScratch(_) => true,
            Compared::Unchecked | Compared::AsScratch(_) => false,
        }
    }
}

/// The message of the error the `ON CONFLICT` forms' guard raises (SQLSTATE
/// 22P02, see [`on_conflict_guard`]): the driver then checks the table again.
pub(crate) const KEY_INDEX_CHANGED: &str = "bulk_runtime: the table or the session changed since the check (the key's unique index, how the table compares the key, a column's type, client_encoding, or on Citus the kind of table or an insert rule)";

/// The message of the error the guard after an insert from a Citus staging
/// table raises (SQLSTATE 22P02, see [`stage_guard`]): the target changed,
/// after the call checked it, so that Citus may have run the insert through
/// the coordinator, where its command tag counts the rows attempted. The
/// call fails with nothing written, and may be retried: the driver checks
/// the table again, and the retry keeps to the session's scratch table.
pub(crate) const STAGE_CHANGED: &str = "bulk_runtime: the distributed table changed during the call \
     (a column left to a volatile or per-worker default, an identity or a generated column, \
     or the table no longer co-located with its staging table); \
     nothing was written, and a retry counts exactly";

/// The statement that follows each insert from the staging table of the
/// model's target: true, or the error [`STAGE_CHANGED`] unless no column of
/// the target outside the staging table's `names` is left to a default that
/// Citus would not settle on the coordinator, or is an identity or a generated column (see
/// [`schema::pushable_defaults`](crate::schema::pushable_defaults)), and the
/// target is still hash-distributed by the staging table's distribution
/// column, in its co-location group (else Citus ran the insert through the
/// coordinator: `update_distributed_table_colocation` does not wait for
/// the call's COPY), and the model's columns still fit the target
/// ([`columns_fit`]: the staging table's values would be converted). The check before the COPY found all this, but the
/// table may have changed before the insert locked it. Under `READ COMMITTED` (the only isolation that
/// copies into the staging table) this statement's snapshot is taken while
/// the insert's lock is held, so it reads the catalog the insert was
/// planned with.
pub(crate) fn stage_guard(model: &Model, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| literal(n)).collect();
    let target = format!("pg_catalog.to_regclass({})", literal(&model.qualified_name()));
    let stage = format!("pg_catalog.to_regclass({})", literal(&model.staging_qualified_name()));
    format!(
        "SELECT CASE WHEN pg_catalog.current_setting('transaction_isolation') = 'read committed' AND {} AND {} \
         AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition AS p \
                       JOIN pg_catalog.pg_dist_partition AS q ON q.logicalrelid = {stage} \
                      WHERE p.logicalrelid = {target} AND p.partmethod = 'h' AND q.partmethod = 'h' \
                        AND q.colocationid = p.colocationid \
                        AND pg_catalog.column_to_column_name(q.logicalrelid, q.partkey) \
                          = pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)) \
         THEN true ELSE pg_catalog.concat({})::int4 = 0 END",
        crate::schema::pushable_defaults(&target, &format!("ARRAY[{}]", names.join(", "))),
        columns_fit(model),
        literal(STAGE_CHANGED)
    )
}

/// A condition (Citus only: it reads `pg_dist_partition`) that holds
/// unless the model's target is a Citus table of a kind the schema check
/// refuses: single-shard (also of a distributed schema), Citus-local,
/// append- or range-distributed. A hash-distributed or reference table
/// passes, as does a table Citus does not manage (the statements the
/// connection prepared for a distributed table write it exactly, as on
/// plain PostgreSQL). A connection's statements stay prepared for the
/// table its check found; a `search_path` that now leads to a same-named
/// table of such a kind, or the table made one since, would otherwise be
/// written.
pub(crate) fn citus_kind_fits(model: &Model) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition AS p \
         WHERE p.logicalrelid = pg_catalog.to_regclass({}) AND NOT (p.partmethod = 'h' OR p.repmodel = 't'))",
        literal(&model.qualified_name())
    )
}

/// The statement that follows the plain call's multi-row `VALUES`
/// statements on Citus, in their transaction: whether the target (or one of
/// its partitions) has a `BEFORE INSERT` row trigger, or the error
/// [`KEY_INDEX_CHANGED`] unless the model's columns still fit the target
/// ([`columns_fit`]), the target is not a Citus table of a kind the
/// schema check refuses (single-shard, Citus-local, append- or
/// range-distributed: only hash-distributed and reference tables, and
/// tables Citus does not manage, pass), and it has no `INSERT` or `UPDATE`
/// rule ([`insert_rules`]: a `DO INSTEAD NOTHING` rule turns the
/// statements into none, `INSERT 0 0`, with the batch unread).
///
/// Citus takes no subquery in a multi-row `VALUES` insert, so this guard
/// cannot ride inside it, as the other statements' guards do; it runs
/// right after, while the insert's lock on the table is held, so under
/// `READ COMMITTED` it reads the catalog the insert was planned with (a
/// column's type change or a kind change takes a lock that waits for the
/// insert), and a `search_path` cannot have changed in between. A refusal
/// rolls the call back: nothing is written, and the driver checks the
/// table again.
pub(crate) fn values_guard(model: &Model) -> String {
    let target = format!("pg_catalog.to_regclass({})", literal(&model.qualified_name()));
    format!(
        "SELECT CASE WHEN {} AND {} AND NOT {} THEN EXISTS ({}) ELSE pg_catalog.concat({})::int4 = 0 END",
        columns_fit(model),
        citus_kind_fits(model),
        insert_rules(&target),
        before_insert_row_triggers(&target),
        literal(KEY_INDEX_CHANGED)
    )
}

/// How the column `name` (an SQL text expression) of the relation `rel` (an
/// OID expression) compares, as a `text[]` of seven: the schema and name of
/// its type when that is `citext`, `bpchar` or `name` (which the schema
/// check refuses: it cuts values at 63 bytes; a column altered to it since
/// the check must not compare as `text`) (or `varchar`, for a key
/// field the model declares nullable: `nullable`, an SQL boolean
/// expression; or for a `varchar(n)`), the schema and name of its collation
/// when that is not its type's default (NULL otherwise), the type modifier
/// of a `varchar(n)`, and the schema and name of its domain, for a key
/// field the model declares nullable ([`KeyAs::domain`](super::KeyAs));
/// NULL when there is no such column. A domain's column is otherwise read
/// as its base type with the domain's modifier (see
/// [`schema::base_type`](crate::schema::base_type)). The same seven the
/// schema check's `key_as` reads, so equal arrays mean equal
/// [`KeyAs`](super::KeyAs).
pub(crate) fn column_compares(rel: &str, name: &str, nullable: &str) -> String {
    let varchar = format!("(b.typname = 'varchar' AND ({nullable} OR b.typmod >= 0))");
    let domain = format!("({nullable} AND t.typtype = 'd')");
    format!(
        "(SELECT ARRAY[CASE WHEN b.typname = 'citext' THEN b.typschema \
         WHEN b.typname IN ('bpchar', 'name') OR {varchar} THEN 'pg_catalog' END, \
         CASE WHEN b.typname IN ('citext', 'bpchar', 'name') OR {varchar} THEN b.typname END, \
         CASE WHEN a.attcollation <> b.typcollation THEN cn.nspname::text END, \
         CASE WHEN a.attcollation <> b.typcollation THEN co.collname::text END, \
         CASE WHEN b.typname = 'varchar' AND b.typmod >= 0 THEN b.typmod::text END, \
         CASE WHEN {domain} THEN tn.nspname::text END, \
         CASE WHEN {domain} THEN t.typname::text END] \
         FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid \
         JOIN pg_catalog.pg_namespace AS tn ON tn.oid = t.typnamespace CROSS JOIN LATERAL {base} \
         LEFT JOIN pg_catalog.pg_collation AS co ON co.oid = a.attcollation \
         LEFT JOIN pg_catalog.pg_namespace AS cn ON cn.oid = co.collnamespace \
         WHERE a.attrelid = {rel} AND a.attname = {name} AND NOT a.attisdropped)",
        base = crate::schema::base_type("a.atttypid", "a.atttypmod", "b"),
    )
}

/// The seven of [`column_compares`] for a key column read as `k` says.
fn compares_literal(k: Option<&super::KeyAs>) -> String {
    let (ty, collation, domain) =
        k.map_or((None, None, None), |k| (k.ty.as_ref(), k.collation.as_ref(), k.domain.as_ref()));
    let pair = |p: Option<&(String, String)>| match p {
        Some((schema, name)) => format!("{}, {}", literal(schema), literal(name)),
        None => "NULL, NULL".to_owned(),
    };
    let typmod = match k.and_then(|k| k.typmod) {
        Some(typmod) => literal(&typmod.to_string()),
        None => "NULL".to_owned(),
    };
    format!("ARRAY[{}, {}, {typmod}, {}]::pg_catalog.text[]", pair(ty), pair(collation), pair(domain))
}

/// Whether the guards check how the key compares: the key has a text
/// column (see [`Compared`]).
fn text_key(model: &Model) -> bool {
    model.unique_key().any(|c| c.pg_type() == PgType::Text)
}

/// The conditions on the row `i` of `pg_index` under which that index
/// refuses a repeated key as the call needs: on the table the target's name
/// resolves to *now*, unique, valid, ready, checked immediately, not
/// partial, on exactly the key's columns (NULLs not distinct when the key
/// is nullable); for a text key (`compared`), under the columns' own
/// collations, and the key columns compare as the statement expects.
fn index_fits(model: &Model, compared: Compared<'_>) -> String {
    let k = model.unique_key().len();
    let names: Vec<String> = model.unique_key().map(|c| literal(c.name())).collect();
    let nulls = if model.unique_key().any(Column::nullable) { " AND i.indnullsnotdistinct" } else { "" };
    let mut fits = format!(
        "i.indrelid = {target}::pg_catalog.regclass AND i.indisunique AND i.indisvalid AND i.indisready \
         AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = {k}{nulls} \
         AND (SELECT count(*) FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = i.indrelid \
         AND a.attnum = ANY ((i.indkey::pg_catalog.int2[])[0:{last}]) \
         AND a.attname = ANY (ARRAY[{names}]::pg_catalog.name[])) = {k}",
        target = literal(&model.qualified_name()),
        last = k - 1,
        names = names.join(", "),
    );
    if matches!(compared, Compared::Unchecked) || !text_key(model) {
        return fits;
    }
    // Each key column under its own collation (ON CONFLICT's inference
    // takes an index under any collation).
    let _ = write!(
        fits,
        " AND NOT EXISTS (SELECT 1 FROM pg_catalog.generate_series(0, {last}) AS n(n) \
         JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[n.n] \
         WHERE a.attcollation <> i.indcollation[n.n])",
        last = k - 1,
    );
    // Each text key column compares as the statement reads the batch.
    for (j, c) in model.unique_key().enumerate() {
        if c.pg_type() != PgType::Text {
            continue;
        }
        let nullable = if c.nullable() { "true" } else { "false" };
        let now = column_compares("i.indrelid", &literal(c.name()), nullable);
        let expected = match compared {
            Compared::As(shape) => compares_literal(shape.keys.get(j).and_then(Option::as_ref)),
            Compared::AsScratch(table) | Compared::AsCitusScratch(table) => column_compares(
                &format!("{}::pg_catalog.regclass", literal(&format!("pg_temp.{}", q(table)))),
                &literal(c.name()),
                nullable,
            ),
            Compared::Unchecked => unreachable!("returned above"),
        };
        let _ = write!(fits, " AND {now} = {expected}");
    }
    fits
}

/// The guard of the insert's plain form: a condition that divides by zero
/// (SQLSTATE 22012) unless the table the target's name resolves to *now*
/// has a unique index that refuses a repeated key: unique, valid, ready,
/// checked immediately, not partial, on exactly the key's columns (NULLs
/// not distinct when the key is nullable); for a text key, also under the
/// columns' own collations, with the key columns comparing as the
/// statement reads the batch (`compared`; see [`index_fits`]).
///
/// The plain form relies on that index to refuse a key another writer
/// stored meanwhile; without it (an index dropped since the session checked
/// the table, or a `search_path` that now leads to another table of the same
/// name) the insert would store duplicates. Uncorrelated, the condition is
/// evaluated once (in the select list: see `insert`'s module documentation),
/// before any row is inserted, after the insert has locked
/// the table (so the index cannot be dropped until the call ends); the call
/// answers 22012 with the `ON CONFLICT` form, whose own guard
/// ([`on_conflict_guard`]) or PostgreSQL (42P10) refuses to run without
/// such an index, and the schema check then explains what changed.
/// Under `REPEATABLE READ` or `SERIALIZABLE` the guard always refuses (the
/// catalog the statement reads may be older than its lock), so such calls
/// take the `ON CONFLICT` form.
///
/// It also refuses a table whose columns no longer fit the model, or a
/// session that no longer sends text as UTF-8 ([`columns_fit`]), and a
/// table with an `INSERT` or `UPDATE` rule (created since
/// the session checked the table, which refuses such a table): a `DO ALSO`
/// rule's action would run the statement's anti-join again after it, when
/// every key it inserted is stored, and get none of its rows. PostgreSQL
/// runs the original statement (and so the guard) before a `DO ALSO`
/// action; the `ON CONFLICT` form that follows is refused by PostgreSQL on
/// such a table (0A000), which the schema check then explains. (A
/// `DO INSTEAD` rule replaces the statement, guard included: the short
/// path's source carries a guard of its own, see [`arrays_guarded`], and
/// the COPY path finds one before each call, see `variants::BEFORE_COPY`.)
pub(crate) fn key_index_guard(model: &Model, compared: Compared<'_>) -> String {
    // Only under READ COMMITTED: there the statement's snapshot is taken
    // after its lock, while under REPEATABLE READ or SERIALIZABLE it is the
    // transaction's first, which may still show an index dropped since.
    format!(
        "1 / (SELECT count(*)::int4 FROM pg_catalog.pg_index AS i \
         WHERE pg_catalog.current_setting('transaction_isolation') = 'read committed' \
         AND {} AND NOT {} AND {}) >= 0",
        index_fits(model, compared),
        insert_rules("i.indrelid"),
        columns_fit(model),
    )
}

/// The guard of the insert's `ON CONFLICT` forms: a condition that raises
/// an error whose message holds [`KEY_INDEX_CHANGED`] (SQLSTATE 22P02)
/// unless the model's columns still fit the table ([`columns_fit`]) and,
/// for a key that is nullable or has a text column, the target has the
/// unique index and key that [`key_index_guard`] looks for.
///
/// `ON CONFLICT (key)` itself refuses a table without a valid, immediate,
/// non-partial unique index on exactly the key's columns, but it takes a
/// NULLS DISTINCT index, and one under another collation than the
/// columns', as its arbiter; and a statement built for a key that compared
/// otherwise (a `search_path` that now leads to a same-named table whose
/// key column has another collation) would keep the wrong row of a key.
/// The driver answers the error with the schema check, which either finds
/// the table's new shape (the call runs again with statements built for
/// it) or explains what changed; nothing was written.
///
/// Under `REPEATABLE READ` or `SERIALIZABLE` the statement reads the
/// catalog as of the transaction's snapshot, which may be older than its
/// lock: there the index it finds must also still exist (`pg_get_indexdef`
/// reads the current catalog). An index's columns, collations and NULLs
/// treatment never change, and changing a key column's type or collation
/// rebuilds its indexes under new OIDs, so an index that still exists is
/// as the snapshot shows it; `ON CONFLICT` checks that it is still valid.
pub(crate) fn on_conflict_guard(model: &Model, compared: Compared<'_>) -> String {
    let index = if !model.unique_key().any(Column::nullable) && !text_key(model) {
        String::new()
    } else {
        format!(
            " AND EXISTS (SELECT 1 FROM pg_catalog.pg_index AS i WHERE {} \
             AND (pg_catalog.current_setting('transaction_isolation') = 'read committed' \
             OR pg_catalog.pg_get_indexdef(i.indexrelid) IS NOT NULL))",
            index_fits(model, compared)
        )
    };
    let kind = if compared.citus() { format!(" AND {}", citus_kind_fits(model)) } else { String::new() };
    let columns = match compared {
        Compared::As(shape) if !shape.dialect.is_citus() && !shape.catalog_guard => columns_fit_by_type(model),
        _ => columns_fit(model),
    };
    let guard = format!(
        "CASE WHEN {columns}{index}{kind} THEN true ELSE pg_catalog.concat({})::int4 = 0 END",
        literal(KEY_INDEX_CHANGED)
    );
    // In plain PostgreSQL's dialect, as a scalar subquery: uncorrelated, it
    // is evaluated once per statement (an InitPlan, when the first row is
    // projected), where the bare condition was evaluated for every row
    // (`current_setting` and each column's `pg_typeof` again: measured,
    // 40 µs more than no guard for 120 rows, 6 µs as a subquery). Citus's
    // statements keep the bare condition, as verified on the cluster.
    if compared.citus() { guard } else { format!("(SELECT {guard})") }
}

/// [`columns_fit`] without reading the catalog, for a statement of plain
/// PostgreSQL's dialect on a table whose columns' types are built-in types
/// the check accepts ([`type_oids`]; for a key column, one that cannot
/// round: no `numeric`, date-time or interval type): each column's type
/// is one of those, and the session reads text as UTF-8. A table whose
/// columns are of other types (a `citext` column, a domain, a `numeric`
/// key) gets [`columns_fit`] instead: its check sets
/// `KeyShape::catalog_guard`. For a model with a column of a type this
/// cannot check (an enum), this is [`columns_fit`] itself.
///
/// A column's type is read from the statement itself: the type of the
/// column of a NULL of the table's row type (no privilege needed, no row
/// read), as the statement was last parsed. PostgreSQL parses a prepared
/// statement again when its target changes (a column altered, dropped or
/// added) or the `search_path` does, so the type is the live column's as
/// of the insert's lock on the table: the statement's own catalog
/// snapshot, or a fresher one. A type now outside the list fails the
/// guard, and the call checks the table again. The row type is found by
/// the table's name as a type name, which finds the table's own unless a
/// type of that name comes first on the `search_path` (an enum or domain
/// named like the table, in a schema before the table's): the check
/// finds that too (`catalog_guard`; a statement prepared before is
/// refused as it is parsed again, 42809, and the call checks again).
/// Measured: 9 µs against 54 µs for [`columns_fit`] (server time of the
/// guard of a 10-row call of three `bigint` columns, prepared; see
/// `BENCHMARKS.md`).
///
/// Not for Citus, where the guard keeps to the catalog as it always did.
pub(crate) fn columns_fit_by_type(model: &Model) -> String {
    let mut tests = Vec::new();
    for c in model.columns() {
        let oids = type_oids(model, c);
        if oids.is_empty() {
            return columns_fit(model);
        }
        let list: Vec<String> = oids.iter().map(u32::to_string).collect();
        tests.push(format!(
            "pg_catalog.pg_typeof((NULL::{}).{})::pg_catalog.oid IN ({})",
            model.qualified_name(),
            quote_ident(c.name()),
            list.join(", ")
        ));
    }
    format!("(pg_catalog.current_setting('client_encoding') IN ('UTF8', 'SQL_ASCII') AND {})", tests.join(" AND "))
}

/// The OIDs of the built-in types [`columns_fit_by_type`] accepts for the
/// model's column `c`: those of the check's accepted types
/// (`PgType::compatible_sql_names`, and the model's `sql_type`) that are
/// built-in, without those that can round for a key column; empty when
/// none is.
pub(crate) fn type_oids(model: &Model, c: &Column) -> Vec<u32> {
    let key = model.unique_key().any(|k| std::ptr::eq(k, c));
    let mut oids: Vec<u32> = c.pg_type().compatible_sql_names().iter().filter_map(|n| builtin_oid(n)).collect();
    if let Some(declared) = c.sql_type().and_then(|t| builtin_oid(&crate::schema::without_modifiers(t))) {
        oids.push(declared);
    }
    if key {
        oids.retain(|oid| !ROUNDING_OIDS.contains(oid));
    }
    oids.sort_unstable();
    oids.dedup();
    oids
}

/// The built-in types whose type modifier can make them round a key
/// (`numeric`, and the date-time and interval types: see
/// `schema::rounds`), which [`columns_fit_by_type`] leaves to
/// [`columns_fit`].
const ROUNDING_OIDS: [u32; 6] = [1700, 1114, 1184, 1083, 1266, 1186];

/// The OID of the built-in type of `name` (as `format_type` prints it, or
/// another common spelling), for [`columns_fit_by_type`]; `None` for
/// other types.
fn builtin_oid(name: &str) -> Option<u32> {
    let (scalar, array) = match name.trim().strip_suffix("[]") {
        Some(element) => (element.trim(), true),
        None => (name.trim(), false),
    };
    let ty = match scalar.to_ascii_lowercase().as_str() {
        "smallint" | "int2" => Type::INT2,
        "integer" | "int" | "int4" => Type::INT4,
        "bigint" | "int8" => Type::INT8,
        "numeric" | "decimal" => Type::NUMERIC,
        "real" | "float4" => Type::FLOAT4,
        "double precision" | "float8" => Type::FLOAT8,
        "boolean" | "bool" => Type::BOOL,
        "text" => Type::TEXT,
        "character varying" | "varchar" => Type::VARCHAR,
        "character" | "char" | "bpchar" => Type::BPCHAR,
        "bytea" => Type::BYTEA,
        "date" => Type::DATE,
        "timestamp without time zone" | "timestamp" => Type::TIMESTAMP,
        "timestamp with time zone" | "timestamptz" => Type::TIMESTAMPTZ,
        "time without time zone" | "time" => Type::TIME,
        "uuid" => Type::UUID,
        "jsonb" => Type::JSONB,
        "json" => Type::JSON,
        "inet" => Type::INET,
        _ => return None,
    };
    if !array {
        return Some(ty.oid());
    }
    let array = match ty {
        Type::INT2 => Type::INT2_ARRAY,
        Type::INT4 => Type::INT4_ARRAY,
        Type::INT8 => Type::INT8_ARRAY,
        Type::NUMERIC => Type::NUMERIC_ARRAY,
        Type::FLOAT4 => Type::FLOAT4_ARRAY,
        Type::FLOAT8 => Type::FLOAT8_ARRAY,
        Type::BOOL => Type::BOOL_ARRAY,
        Type::TEXT => Type::TEXT_ARRAY,
        Type::VARCHAR => Type::VARCHAR_ARRAY,
        Type::BPCHAR => Type::BPCHAR_ARRAY,
        Type::BYTEA => Type::BYTEA_ARRAY,
        Type::DATE => Type::DATE_ARRAY,
        Type::TIMESTAMP => Type::TIMESTAMP_ARRAY,
        Type::TIMESTAMPTZ => Type::TIMESTAMPTZ_ARRAY,
        Type::TIME => Type::TIME_ARRAY,
        Type::UUID => Type::UUID_ARRAY,
        Type::JSONB => Type::JSONB_ARRAY,
        Type::JSON => Type::JSON_ARRAY,
        Type::INET => Type::INET_ARRAY,
        _ => return None,
    };
    Some(array.oid())
}

/// A condition that holds when each of the model's columns still has a
/// type the schema check accepts for it, no key column rounds its values
/// ([`key_kept`]), and the session still reads text as UTF-8
/// (`client_encoding` `UTF8`, or `SQL_ASCII`, which converts nothing).
///
/// The connection's statements were built for the table as its check found
/// it, and PostgreSQL assigns a value to a column of another type through
/// any assignment cast: a `bigint` column altered to `double precision`
/// since the check, or a `search_path` that now leads to a same-named table
/// whose column is `text`, would store every row, converted, without an
/// error; so would a session whose `client_encoding` is now `LATIN1` (the
/// server would read the rows' UTF-8 text as Latin-1). The accepted types
/// are the check's (`PgType::compatible_sql_names`, the model's `sql_type`
/// as `to_regtype` resolves it, a qualified name by its unqualified one).
/// Read from the statement's own catalog snapshot, after the insert locked
/// the table.
pub(crate) fn columns_fit(model: &Model) -> String {
    // Each accepted (column, type) pair as one text, the column's name
    // prefixed by its length (unambiguous whatever the name holds); the
    // live column's type as `format_type` names it, or by its bare name
    // (`typname`, for a type whose schema is not on the search path).
    let name = |c: &Column| format!("{}:{}", c.name().chars().count(), c.name());
    let mut accepted = Vec::new();
    let mut declared = Vec::new();
    for c in model.columns() {
        for ty in c.pg_type().compatible_sql_names().iter() {
            accepted.push(literal(&format!("{}{ty}", name(c))));
        }
        if let Some(t) = c.sql_type() {
            declared.push(format!(
                "{} || pg_catalog.format_type(pg_catalog.to_regtype({}), NULL)",
                literal(&name(c)),
                literal(&crate::schema::without_modifiers(t))
            ));
        }
    }
    accepted.extend(declared);
    let column = "pg_catalog.length(c.attname) || ':' || c.attname";
    format!(
        "pg_catalog.current_setting('client_encoding') IN ('UTF8', 'SQL_ASCII') \
         AND (SELECT count(*) FROM pg_catalog.pg_attribute AS c JOIN pg_catalog.pg_type AS t ON t.oid = c.atttypid \
         WHERE c.attrelid = {}::pg_catalog.regclass AND c.attnum > 0 AND NOT c.attisdropped \
         AND ARRAY[{column} || pg_catalog.format_type(c.atttypid, NULL), {column} || t.typname] \
         && ARRAY[{}]::pg_catalog.text[]{}) = {}",
        literal(&model.qualified_name()),
        accepted.join(", "),
        key_kept(model).map_or_else(String::new, |kept| format!(" AND {kept}")),
        model.columns().len(),
    )
}

/// A condition on a row of `pg_attribute` (`c`) and of `pg_type` (`t`, its
/// type) in [`columns_fit`]'s count that holds unless it is a key column
/// that now rounds the values it stores, as the schema check's `KeyRounded`
/// finds it: `ALTER COLUMN ... TYPE timestamptz(0)` since the check keeps
/// the column's type name, so [`columns_fit`]'s names still match, while
/// two offered keys a second apart would now be one stored key. Such a
/// column is then not counted, and the guard refuses. `None` when no key
/// column can round.
///
/// Read from the column's own type and modifier: a column of a domain is
/// not followed to its base type here. Following the chain (a recursive
/// query, or joins) made every statement that carries the guard cost
/// 0.3–0.4 ms more to plan (measured with `pgbench -M simple`), and a
/// domain cannot change under its column: a column whose domain was
/// replaced by a same-named one over a type that rounds (the column altered
/// away from it and back) passes the guards until the connection checks
/// again (the README says so).
fn key_kept(model: &Model) -> Option<String> {
    let direct: Vec<String> = model
        .unique_key()
        .filter_map(|c| {
            let rounds = crate::schema::rounds_sql(c.pg_type(), c.sql_type().is_some(), "t.typname", "c.atttypmod")?;
            Some(format!("(c.attname = {} AND {rounds})", literal(c.name())))
        })
        .collect();
    (!direct.is_empty()).then(|| format!("({}) IS NOT TRUE", direct.join(" OR ")))
}
