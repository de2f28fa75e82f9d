//! Verifying that the live table matches the model before the first write.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

use crate::error::{Error, SchemaProblem, Step};
use crate::model::Model;
use crate::sql::{Dialect, KeyAs, KeyShape};
use crate::statements;
use crate::types::PgType;

/// Per column of the table: 0 name, 1 type (`format_type`, no modifier),
/// 2 `NOT NULL` (itself or through its domains), 3 has a default (its
/// own, its domain's, an identity or generated column), 4 type name;
/// 5 `TEMPORARY` open to the role, 6 the role, 7 the database; 8 the
/// type's schema, 9 type with modifier, 10 type modifier, 11-12 schema and
/// name of the column's collation when not its base type's default; 13
/// table OID, 14 type OID, 15 `TEMPORARY` open to `PUBLIC`, 16 backend
/// PID, 17 `INSERT`/`UPDATE` rules; 18-20 the base type's name, schema
/// and modifier ([`base_type`]: a domain's, over any domains), 21 the type
/// as [`SchemaProblem::KeyRounded`] names it, 22 `attidentity`, 23
/// `attgenerated`, 24 whether the type is a domain (4 and 8 its name and
/// schema), 25 the labels of the base type when it is an enum (else NULL),
/// 26 whether the session has the relation `$2` (the model's scratch table,
/// `pg_temp.` and its quoted name), 27 the session's `client_encoding`, 28
/// whether the table's name, as a type name, finds another type than the
/// table's row type (see `KeyShape::catalog_guard`).
static COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull OR b.not_null,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' OR t.typdefaultbin IS NOT NULL), t.typname::text,
       has_database_privilege(current_database(), 'TEMPORARY'), current_user::text, current_database()::text,
       tn.nspname::text, format_type(a.atttypid, a.atttypmod), a.atttypmod,
       CASE WHEN a.attcollation <> b.typcollation THEN cn.nspname::text END,
       CASE WHEN a.attcollation <> b.typcollation THEN co.collname::text END,
       a.attrelid, a.atttypid, has_database_privilege('public', current_database(), 'TEMPORARY'),
       pg_backend_pid(),
       ARRAY(SELECT r.rulename::text FROM pg_rewrite r
              WHERE r.ev_class = a.attrelid AND r.ev_type IN ('2', '3') ORDER BY r.rulename),
       b.typname, b.typschema, b.typmod,
       CASE WHEN t.typtype = 'd' THEN format_type(a.atttypid, a.atttypmod) || ' (a domain over ' || b.format || ')'
            ELSE b.format END,
       a.attidentity::text, a.attgenerated::text, t.typtype = 'd',
       (SELECT ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = et.oid ORDER BY e.enumsortorder)
          FROM pg_type et JOIN pg_namespace en ON en.oid = et.typnamespace
         WHERE et.typname = b.typname AND en.nspname = b.typschema AND et.typtype = 'e'),
       to_regclass($2) IS NOT NULL, current_setting('client_encoding'),
       to_regtype($1) IS DISTINCT FROM (SELECT r.reltype FROM pg_class r WHERE r.oid = a.attrelid)
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
  CROSS JOIN LATERAL {base}
  LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum",
        base = base_type("a.atttypid", "a.atttypmod", "b"),
    )
});

/// A subquery, for `CROSS JOIN LATERAL`, of the base type of the type
/// `typid` with the modifier `typmod` (SQL expressions, such as
/// `a.atttypid` and `a.atttypmod` of a `pg_attribute` row), as the relation
/// `alias` of one row: `typname` and `typschema` (text), `typmod`,
/// `typcollation` (the base type's default collation), `not_null` and
/// `format` (`format_type` of the base type and its modifier). For a type
/// that is no domain, that type itself (`not_null` false). A domain is
/// followed to its base type through any domains it is over: the
/// modifier is the innermost domain's (a domain's column has none, a
/// domain over a domain neither: `CREATE DOMAIN d AS varchar(3)` keeps the
/// `3` in `d`), and `not_null` is true when any of them is `NOT NULL`. A
/// key column of a domain compares, rounds and cuts its values as its base
/// type does, under the column's collation. Shared by the schema check
/// ([`COLUMNS`]) and the guards that see whether a key column still
/// compares as the call's statements expect (`fragments::column_compares`).
pub(crate) fn base_type(typid: &str, typmod: &str, alias: &str) -> String {
    format!(
        "(WITH RECURSIVE chain(oid, typmod, not_null, depth) AS (
             SELECT {typid}, {typmod}, false, 0
           UNION ALL
             SELECT d.typbasetype, d.typtypmod, c.not_null OR d.typnotnull, c.depth + 1
               FROM chain AS c JOIN pg_catalog.pg_type AS d ON d.oid = c.oid
              WHERE d.typtype = 'd')
         SELECT bt.typname::text, bn.nspname::text, c.typmod, bt.typcollation, c.not_null,
                pg_catalog.format_type(c.oid, c.typmod)
           FROM chain AS c JOIN pg_catalog.pg_type AS bt ON bt.oid = c.oid
           JOIN pg_catalog.pg_namespace AS bn ON bn.oid = bt.typnamespace
          ORDER BY c.depth DESC LIMIT 1) AS {alias}(typname, typschema, typmod, typcollation, not_null, format)"
    )
}

const UNIQUE_INDEXES: &str = "\
SELECT ic.relname::text,
       ARRAY(SELECT coalesce(a.attname::text, '(expression)')
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.n <= i.indnkeyatts
              ORDER BY k.n),
       i.indpred IS NOT NULL, i.indexprs IS NOT NULL, i.indnullsnotdistinct, i.indisvalid, i.indimmediate,
       coalesce((SELECT bool_and(c.coll = a.attcollation)
                   FROM unnest(i.indcollation::oid[]) WITH ORDINALITY AS c(coll, n)
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = (i.indkey::int2[])[c.n - 1]
                  WHERE c.n <= i.indnkeyatts), true)
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE i.indrelid = to_regclass($1) AND i.indisunique
 ORDER BY ic.relname";

/// What the target is to Citus, in one statement that also runs without
/// Citus (`pg_dist_partition` exists only with the extension, so it is
/// named inside `query_to_xml`'s text; see `notes/citus.md`, §4): `local`
/// (plain PostgreSQL, or a Citus coordinator's own table), `distributed`
/// (hash) with its distribution column, `reference`, `single_shard`,
/// `citus_local`, `append_distributed`, `range_distributed`, `unsupported`
/// (a method of a later Citus), or `missing`; then
/// whether the staging table `$2` (see [`Model::citus_staging_sql`]) is
/// usable: hash-distributed by a column of the same name as the target's,
/// co-located with it, with the columns `$3` of the types `$4`, and open
/// to the role for `SELECT`, `INSERT` and `DELETE`, with `USAGE` of the
/// sequence of the model's id column `$5` (NULL without one); and no other
/// column of the target left to a default that Citus would not settle on
/// the coordinator (a sequence, a volatile function: Citus would then pull
/// the insert's rows to the coordinator, and its command tag would count
/// the rows attempted; a `CURRENT_TIMESTAMP`-style keyword, which each
/// worker would evaluate) or to an identity or generated column
/// ([`pushable_defaults`]).
static CITUS_KIND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
SELECT CASE WHEN c.oid IS NULL THEN 'missing'
            WHEN m.partmethod IS NULL AND pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL
              THEN 'citus_coordinator_local'
            WHEN m.partmethod IS NULL THEN 'local'
            WHEN m.partmethod = 'h' THEN 'distributed'
            WHEN m.partmethod = 'n' AND m.repmodel = 't' THEN 'reference'
            WHEN m.partmethod = 'n' AND m.colocationid <> 0 THEN 'single_shard'
            WHEN m.partmethod = 'n' THEN 'citus_local'
            WHEN m.partmethod = 'a' THEN 'append_distributed'
            WHEN m.partmethod = 'r' THEN 'range_distributed'
            ELSE 'unsupported' END,
       (SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = c.oid AND a.attnum = m.distattnum),
       coalesce(m.partmethod = 'h' AND m.staged
         AND ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = s.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) = $3::text[]
         AND ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = s.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) = $4::oid[]
         AND {open}, false)
  FROM (SELECT pg_catalog.to_regclass($1) AS oid) AS c
  CROSS JOIN (SELECT pg_catalog.to_regclass($2) AS oid) AS s
  LEFT JOIN LATERAL (
    SELECT (pg_catalog.xpath('/row/partmethod/text()', r))[1]::text AS partmethod,
           (pg_catalog.xpath('/row/staged/text()', r))[1]::text::bool AS staged,
           (pg_catalog.xpath('/row/repmodel/text()', r))[1]::text AS repmodel,
           (pg_catalog.xpath('/row/colocationid/text()', r))[1]::text::int4 AS colocationid,
           (pg_catalog.xpath('/row/attnum/text()', r))[1]::text::int2 AS distattnum
      FROM pg_catalog.unnest(pg_catalog.xpath('/table/row', pg_catalog.query_to_xml(
             CASE WHEN pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL
                  THEN 'SELECT 1 WHERE false'
                  ELSE pg_catalog.format(
                    'SELECT p.partmethod, p.repmodel, p.colocationid, a.attnum,
                            (SELECT q.partmethod = ''h'' AND q.colocationid = p.colocationid
                                    AND pg_catalog.column_to_column_name(q.logicalrelid, q.partkey)
                                      = pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
                               FROM pg_catalog.pg_dist_partition AS q
                              WHERE q.logicalrelid = %s::pg_catalog.oid) AS staged
                       FROM pg_catalog.pg_dist_partition AS p
                       LEFT JOIN pg_catalog.pg_attribute AS a ON a.attrelid = p.logicalrelid AND p.partkey IS NOT NULL
                        AND a.attname = pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
                      WHERE p.logicalrelid = %s::pg_catalog.oid', coalesce(s.oid::int8, 0), coalesce(c.oid::int8, 0)) END,
             false, false, ''))) AS r
  ) AS m ON true",
        open = staging_open("c.oid", "$1", "s.oid", "$3", "$5")
    )
});

/// SQL true when the staging table `stage` (an OID expression) is open to
/// the current role as a call needs it, for the target `target` (an OID
/// expression; `target_name` its name as text): `SELECT`, `INSERT` and
/// `DELETE` on the staging table (each: `has_table_privilege` with a list
/// is true for any one of them); in the target's own schema (not a
/// staging table of another schema that a `search_path` finds for an
/// unqualified model); no column of the target outside the staging
/// table's `names` (a `text[]`) left to a default that Citus would not settle on the coordinator
/// ([`pushable_defaults`]); and, for the id column `id` (a `text`, NULL
/// without one), not `GENERATED ALWAYS` (the insert from the staging table
/// names its value), `USAGE` of its sequence, and the staging table's id
/// column defaulting to that very sequence (not to the sequence of a table
/// dropped and made again beside it, or of another schema's table: the
/// rows would get ids the target's sequence hands out again). Shared by the schema
/// check's [`CITUS_KIND`] and the query before each COPY
/// ([`BEFORE_COPY`](crate::sql::variants::BEFORE_COPY)).
pub(crate) fn staging_open(target: &str, target_name: &str, stage: &str, names: &str, id: &str) -> String {
    format!(
        "pg_catalog.has_table_privilege({stage}, 'SELECT') AND pg_catalog.has_table_privilege({stage}, 'INSERT')
         AND pg_catalog.has_table_privilege({stage}, 'DELETE')
         AND (SELECT stage_ns.relnamespace FROM pg_catalog.pg_class AS stage_ns WHERE stage_ns.oid = {stage})
           = (SELECT target_ns.relnamespace FROM pg_catalog.pg_class AS target_ns WHERE target_ns.oid = {target})
         AND {pushable}
         AND CASE WHEN {id}::text IS NULL THEN true
                  WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                                    WHERE a.attrelid = {target} AND a.attname = {id}::text AND NOT a.attisdropped
                                      AND a.attidentity <> 'a') THEN false
                  ELSE coalesce(pg_catalog.has_sequence_privilege(
                         pg_catalog.pg_get_serial_sequence({target_name}, {id}::text), 'USAGE')
                       AND EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef AS stage_def
                                     JOIN pg_catalog.pg_attribute AS stage_att
                                       ON stage_att.attrelid = stage_def.adrelid AND stage_att.attnum = stage_def.adnum
                                     JOIN pg_catalog.pg_depend AS dep
                                       ON dep.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                                      AND dep.objid = stage_def.oid
                                      AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                    WHERE stage_def.adrelid = {stage} AND stage_att.attname = {id}::text
                                      AND dep.refobjid IN (
                                          SELECT owned.objid FROM pg_catalog.pg_depend AS owned
                                            JOIN pg_catalog.pg_attribute AS target_att
                                              ON target_att.attrelid = owned.refobjid
                                             AND target_att.attnum = owned.refobjsubid
                                           WHERE owned.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                             AND owned.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                             AND owned.refobjid = {target} AND target_att.attname = {id}::text
                                             AND owned.deptype IN ('a', 'i'))),
                       false) END",
        pushable = pushable_defaults(target, names),
    )
}

/// SQL true when no column of the target `target` (an OID expression)
/// outside `names` (a `text[]`: the columns an insert from the staging
/// table names) is an identity or a generated column, or is left to a
/// default (its own, or its domain's) that Citus would not turn into a
/// constant on the coordinator ([`settled_on_the_coordinator`]). Citus would
/// pull the insert's rows through the coordinator, where the command tag of
/// an `ON CONFLICT` insert counts the rows attempted, or have each worker
/// evaluate the default on its own. Part of [`staging_open`], and of the
/// guard that follows each insert from the staging table
/// (`Plan::stage_guard`).
pub(crate) fn pushable_defaults(target: &str, names: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                           LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                          WHERE a.attrelid = {target} AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attname::text <> ALL ({names}::text[])
                            AND (a.attidentity <> '' OR a.attgenerated <> ''
                                 OR NOT {own}
                                 OR (d.adbin IS NULL AND EXISTS (
                                       SELECT 1 FROM pg_catalog.pg_type AS t
                                        WHERE t.oid = a.atttypid AND t.typtype = 'd'
                                          AND NOT {domain}))))",
        own = settled_on_the_coordinator("d.adbin"),
        domain = settled_on_the_coordinator("t.typdefaultbin"),
    )
}

/// SQL true when the default expression `tree` (a `pg_node_tree`, NULL for
/// none) is one that Citus evaluates on the coordinator, once per
/// statement, when it pushes an `INSERT ... SELECT` down to the shards (as
/// PostgreSQL gives every row of a statement the same `now()`): no volatile
/// function or operator (Citus would pull the rows through the coordinator,
/// as for `nextval` or `clock_timestamp()`), no `CURRENT_TIMESTAMP`-style
/// keyword (a `SQLValueFunction`, which Citus leaves in the shard queries:
/// each worker would give its own transaction's time or role), and no
/// coercion through a type's text form (its I/O functions' volatility is
/// not in the tree). Stable and immutable functions such as `now()` pass.
/// Read from the tree's text form, which names each function and
/// operator's function by OID (`:funcid`, `:opfuncid`, ...).
fn settled_on_the_coordinator(tree: &str) -> String {
    format!(
        "({tree} IS NULL
          OR (NOT pg_catalog.textregexeq({tree}::text, '[{{](SQLVALUEFUNCTION|NEXTVALUEEXPR|COERCEVIAIO) ')
              AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.regexp_matches({tree}::text, ':(funcid|opfuncid|hashfuncid|negfuncid) ([0-9]+)', 'g') AS f(m)
                  JOIN pg_catalog.pg_proc AS p ON p.oid = f.m[2]::pg_catalog.oid
                 WHERE p.provolatile = 'v')))"
    )
}

const RESOLVE_TYPES: &str = "SELECT format_type(to_regtype(t), NULL) FROM unnest($1::text[]) AS t";

/// Checks the live table against the model; returns every difference at
/// once, or how its key compares.
pub(crate) async fn verify(tx: &Client, model: &'static Model) -> Result<KeyShape, Error> {
    let (problems, shape, live) =
        check(tx, model).await.map_err(|source| Error::database(model, Step::SchemaCheck, source))?;
    if problems.is_empty() {
        statements::checked_dialect(tx, model, shape.dialect);
        let watched = crate::wire::limits::watched_columns(model, |name| {
            let row = live.iter().find(|r| r.get::<_, &str>(0) == name)?;
            Some((row.get(18), row.get(20)))
        });
        statements::set_watched(tx, model, &watched);
        statements::set_catalog_guard(tx, model, shape.catalog_guard);
        passed(model, &live, &shape);
        Ok(shape)
    } else {
        // A first call must not rely on an earlier pass of this table (or,
        // when the name finds no table, of any).
        forget(model, live.first().map(|row| row.get::<_, u32>(13)));
        Err(Error::SchemaMismatch { table: model.qualified_name(), model: model.struct_name(), problems })
    }
}

/// The schemas of the `search_path` (as set, with `$user` read as the
/// role) without `USAGE` for the role, in which a relation has the table's
/// name; and the role.
const UNUSABLE_SCHEMAS: &str = "\
SELECT n.nspname::text, current_user::text
  FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relname = $1 AND NOT pg_catalog.has_schema_privilege(n.oid, 'USAGE')
   AND n.nspname = ANY (SELECT CASE WHEN e IN ('$user', '\"$user\"') THEN current_user::text
                                    WHEN e ~ '^([A-Za-z_][A-Za-z0-9_$]*|\"([^\"]|\"\")+\")$'
                                      THEN (pg_catalog.parse_ident(e))[1] END
                          FROM pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.current_setting('search_path'), ',')) AS p,
                               pg_catalog.btrim(p) AS e)
 LIMIT 1";

/// Why the model's table name finds no table: [`SchemaProblem::TableMissing`],
/// or for a model without a schema, [`SchemaProblem::SchemaNotUsable`] when
/// a schema of the `search_path` the role may not use has such a table.
async fn table_missing(tx: &Client, model: &'static Model) -> Result<SchemaProblem, tokio_postgres::Error> {
    if model.schema().is_some() {
        return Ok(SchemaProblem::TableMissing);
    }
    let row = tx.query_typed(UNUSABLE_SCHEMAS, &[(&model.table(), Type::TEXT)]).await?;
    Ok(match row.first() {
        Some(row) => SchemaProblem::SchemaNotUsable { schema: row.get(0), role: row.get(1) },
        None => SchemaProblem::TableMissing,
    })
}

/// Every difference between the live table and the model.
///
/// # Errors
/// A database error from the catalog queries.
pub(crate) async fn problems(tx: &Client, model: &'static Model) -> Result<Vec<SchemaProblem>, tokio_postgres::Error> {
    Ok(check(tx, model).await?.0)
}

/// What a passed schema check of a model found, for a new connection's
/// first call (see `call::first`): the table's OID and each model column's
/// type OID and type modifier, in the model's order. A table (a relation
/// OID) cannot become another kind of relation, so an insert whose result
/// names this table and these types writes where the check looked and as
/// it saw; what else the check verified, the insert itself enforces or the
/// model leaves out (see `Plan::first_insert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Passed {
    /// The table's OID.
    pub table: u32,
    /// Per model column: type OID, type modifier.
    pub columns: Vec<(u32, i32)>,
    /// When the check passed.
    at: Instant,
}

/// How long a passed check stands for new connections' first calls: after
/// that the next new connection checks again (and renews it). What a first
/// call cannot see of a table changed since (a column made a domain over
/// its type, a required column a trigger fills, `TEMPORARY` revoked) is
/// thus found by a check within this time, as well as by the connection's
/// own next call.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_secs(60);

/// At most this many passed checks are kept per model (tables of one name
/// in several schemas or databases).
const PASSED_PER_MODEL: usize = 8;

/// Per model address, the passed checks, most recent last; `None` for a
/// model whose first calls were refused `RETURNING` (see [`refuse_first_calls`]).
static PASSED: Mutex<Option<HashMap<usize, Option<Vec<Passed>>>>> = Mutex::new(None);

fn model_key(model: &'static Model) -> usize {
    std::ptr::from_ref(model) as usize
}

/// The passed checks of `model` that a first call may rely on now.
pub(crate) fn passed_checks(model: &'static Model) -> Vec<Passed> {
    let guard = PASSED.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(Some(list)) = guard.as_ref().and_then(|m| m.get(&model_key(model))) else { return Vec::new() };
    list.iter().filter(|p| p.at.elapsed() < TRUSTED_FOR).cloned().collect()
}

/// Forgets the passed check of `model` on `table` (all of them with `None`).
pub(crate) fn forget(model: &'static Model, table: Option<u32>) {
    let mut guard = PASSED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(Some(list)) = guard.as_mut().and_then(|m| m.get_mut(&model_key(model))) {
        list.retain(|p| table.is_some_and(|t| p.table != t));
    }
}

/// No first call of `model` goes without the check again in this process:
/// the server refused one its `RETURNING` (a role without `SELECT` on a
/// column, or row security without a `SELECT` policy), which the call's
/// usual statements do not need.
pub(crate) fn refuse_first_calls(model: &'static Model) {
    let mut guard = PASSED.lock().unwrap_or_else(PoisonError::into_inner);
    guard.get_or_insert_with(HashMap::new).insert(model_key(model), None);
}

/// Keeps what a passed check of `model` found (rows of [`COLUMNS`]), when a
/// first call may rely on it: a model with a `first_insert`, a plain
/// PostgreSQL table (on Citus the insert's `RowDescription` cannot tell a
/// distributed table), keys compared byte for byte, `TEMPORARY` open to
/// every role (the check tells a role without it, which the short insert
/// does not need), and every column of a built-in type (whose description
/// tokio-postgres reads without a query).
fn passed(model: &'static Model, live: &[Row], shape: &KeyShape) {
    if crate::sql::plan(model).first_insert.is_none() || !shape.is_default() {
        return;
    }
    let Some(first) = live.first() else { return };
    if !first.get::<_, bool>(15) {
        return;
    }
    let mut columns = Vec::with_capacity(model.columns().len());
    for column in model.columns() {
        let Some(row) = live.iter().find(|r| r.get::<_, &str>(0) == column.name()) else { return };
        let (oid, typmod): (u32, i32) = (row.get(14), row.get(10));
        if Type::from_oid(oid).is_none() {
            return;
        }
        columns.push((oid, typmod));
    }
    let entry = Passed { table: first.get(13), columns, at: Instant::now() };
    let mut guard = PASSED.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= 4096 {
        map.clear();
    }
    let Some(list) = map.entry(model_key(model)).or_insert_with(|| Some(Vec::new())) else { return };
    list.retain(|p| p.table != entry.table);
    if list.len() >= PASSED_PER_MODEL {
        list.remove(0);
    }
    list.push(entry);
}

/// How a key column of type `typname` (in schema `typschema`; a domain's
/// base type, with its modifier `typmod`) with the column collation
/// `collation` (when not that type's default), of the domain `domain` if
/// any, is read, for
/// a key field of the model's `ty`: only text keys can differ (`citext` has
/// its own equality, `char(n)` ignores trailing spaces; a collation may hold
/// different strings equal).
fn key_as(
    ty: PgType,
    nullable: bool,
    (typschema, typname, typmod): (&str, &str, i32),
    collation: Option<(String, String)>,
    domain: Option<(String, String)>,
) -> Option<KeyAs> {
    if ty != PgType::Text {
        return None;
    }
    // A `varchar(n)` column stores a value with trailing spaces beyond `n`
    // cut: "abc " and "abc" are one stored key of a `varchar(3)`. The
    // batch's values are read as the column stores them (see
    // `KeyAs::typmod`), so that repeats are found under the stored form.
    let limited = typname == "varchar" && typmod >= 0;
    let ty = match typname {
        "citext" => Some((typschema.to_owned(), typname.to_owned())),
        "bpchar" => Some(("pg_catalog".to_owned(), "bpchar".to_owned())),
        // A nullable key compares as `ARRAY[k]` (see `key_match`), and
        // `varchar[]` has no `=` with `text[]`: the batch's values are read
        // as `varchar` (with its length, when it has one).
        "varchar" if nullable || limited => Some(("pg_catalog".to_owned(), "varchar".to_owned())),
        _ => None,
    };
    let typmod = limited.then_some(typmod);
    // A nullable key compares as `ARRAY[k]`, and the array of a domain has
    // no `=` with the array of its base type: the batch's values are read
    // as the domain.
    let domain = domain.filter(|_| nullable);
    (ty.is_some() || collation.is_some() || domain.is_some()).then_some(KeyAs { ty, collation, typmod, domain })
}

/// Whether a key column whose base type is `typname` stores every value of
/// the model's `ty` as a key of its own: two values the model tells apart
/// stay apart (a `bigint` in `numeric`, a `real` in `double precision`,
/// `text` in `varchar`, `char` or `citext`, whose own comparisons the calls
/// follow). Not so a `bigint` in `double precision`, a `double precision`
/// in `numeric` (a float's nearest decimal), a `timestamp` in `date` or
/// `timestamptz` (a local time in a daylight-saving fold), text in `name`
/// (cut at 63 bytes) or any type that reads values through text (`inet`).
fn keeps_keys(ty: PgType, typschema: &str, typname: &str) -> bool {
    let builtin = typschema == "pg_catalog";
    match ty {
        PgType::Int2 => builtin && matches!(typname, "int2" | "int4" | "int8" | "numeric"),
        PgType::Int4 => builtin && matches!(typname, "int4" | "int8" | "numeric"),
        PgType::Int8 => builtin && matches!(typname, "int8" | "numeric"),
        PgType::Float4 => builtin && matches!(typname, "float4" | "float8"),
        PgType::Float8 => builtin && typname == "float8",
        PgType::Bool => builtin && typname == "bool",
        PgType::Text => (builtin && matches!(typname, "text" | "varchar" | "bpchar")) || typname == "citext",
        PgType::Bytea => builtin && typname == "bytea",
        PgType::Date => builtin && typname == "date",
        PgType::Timestamp => builtin && typname == "timestamp",
        PgType::Timestamptz => builtin && typname == "timestamptz",
        PgType::Uuid => builtin && typname == "uuid",
        PgType::Jsonb => builtin && typname == "jsonb",
        PgType::Numeric => builtin && typname == "numeric",
        PgType::Time => builtin && typname == "time",
        PgType::Inet => builtin && typname == "inet",
        // The enum's own labels: the type check matched its name.
        PgType::Enum(_) => true,
        PgType::Array(_) => false,
    }
}

/// The date-time types whose precision modifier (0 to 5 fractional
/// digits) rounds what they store.
const ROUNDING_TIMES: [&str; 5] = ["timestamp", "timestamptz", "time", "timetz", "interval"];

/// Whether a key column's type modifier makes PostgreSQL round the values it
/// stores for a key field of the model's `ty` (two offered keys could
/// become one stored key).
fn rounds(ty: PgType, typname: &str, typmod: i32) -> bool {
    match typname {
        _ if ROUNDING_TIMES.contains(&typname) => (0..6).contains(&typmod),
        // numeric(p, s) rounds a decimal to s digits; for integers, only a
        // negative scale rounds.
        "numeric" if ty == PgType::Numeric => typmod >= 4,
        "numeric" => typmod >= 4 && ((typmod - 4) & 0x7ff) > 1023,
        _ => false,
    }
}

/// [`rounds`] as an SQL condition on the type name `typname` and modifier
/// `typmod` (SQL expressions) of a key field of the model's `ty`, for the
/// statements' guards (`fragments::columns_fit`): a key column altered
/// since the check to round its values must be refused as the check
/// refuses it. `None` for a field whose column cannot be of a type that
/// rounds, unless an `sql_type` (`declared`) names its column's type.
pub(crate) fn rounds_sql(ty: PgType, declared: bool, typname: &str, typmod: &str) -> Option<String> {
    let names: Vec<String> = ROUNDING_TIMES.iter().map(|name| format!("'{name}'")).collect();
    let times = format!("({typname} IN ({}) AND {typmod} BETWEEN 0 AND 5)", names.join(", "));
    let numeric = match ty {
        PgType::Numeric => format!("({typname} = 'numeric' AND {typmod} >= 4)"),
        _ => format!("({typname} = 'numeric' AND {typmod} >= 4 AND (({typmod} - 4) & 2047) > 1023)"),
    };
    match ty {
        _ if declared => Some(format!("({times} OR {numeric})")),
        PgType::Timestamp | PgType::Timestamptz | PgType::Time => Some(times),
        PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Numeric => Some(numeric),
        _ => None,
    }
}

/// `sql_type` without its modifiers (`varchar(40)` as `varchar`,
/// `timestamp(3) with time zone` as `timestamp with time zone`): the check
/// compares type names without them, and `to_regtype` raises an error
/// (rather than returning NULL) on a modifier the type does not take
/// (`int(11)`, `text(5)`), which would fail the whole check.
pub(crate) fn without_modifiers(sql_type: &str) -> String {
    let mut out = String::with_capacity(sql_type.len());
    let mut depth = 0usize;
    for c in sql_type.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The live table's differences from the model, how its key compares, and
/// its columns (rows of [`COLUMNS`]).
async fn check(
    tx: &Client,
    model: &'static Model,
) -> Result<(Vec<SchemaProblem>, KeyShape, Vec<Row>), tokio_postgres::Error> {
    let plan = crate::sql::plan(model);
    let name = plan.target_regclass.as_str();
    // The staging table's columns (the position, the id, then the model's), of the COPY's types.
    let stage_names: &Vec<&str> = &plan.stage_columns;
    let mut stage_types: Vec<u32> = plan.copy_types.iter().map(Type::oid).collect();
    if model.id_column().is_some() {
        stage_types.insert(1, Type::INT8.oid());
    }
    let id = model.id_column();
    let scratch = format!("pg_temp.{}", crate::model::quote_ident(&plan.scratch));
    let overrides: Vec<String> = model.columns().iter().filter_map(|c| c.sql_type()).map(without_modifiers).collect();
    // The catalog queries go out together: one round trip.
    let (live, resolved, indexes, citus) = futures_util::future::try_join4(
        tx.query_typed(COLUMNS.as_str(), &[(&name, Type::TEXT), (&scratch, Type::TEXT)]),
        async {
            if overrides.is_empty() {
                return Ok(Vec::new());
            }
            let rows = tx.query_typed(RESOLVE_TYPES, &[(&overrides, Type::TEXT_ARRAY)]).await?;
            Ok(rows.iter().map(|r| r.get::<_, Option<String>>(0)).collect::<Vec<_>>())
        },
        tx.query_typed(UNIQUE_INDEXES, &[(&name, Type::TEXT)]),
        tx.query_typed(
            CITUS_KIND.as_str(),
            &[
                (&name as &(dyn ToSql + Sync), Type::TEXT),
                (&plan.stage_regclass, Type::TEXT),
                (stage_names, Type::TEXT_ARRAY),
                (&stage_types, Type::OID_ARRAY),
                (&id, Type::TEXT),
            ],
        ),
    )
    .await?;
    if live.is_empty() {
        return Ok((vec![table_missing(tx, model).await?], KeyShape::default(), live));
    }
    statements::backend_seen(tx, live[0].get(16));
    let mut problems = Vec::new();
    // (A session that has the model's scratch table already, opened to
    // every role, keeps using it after a `SET ROLE` to a role without the
    // privilege.)
    if !live[0].get::<_, bool>(5) && !live[0].get::<_, bool>(26) {
        problems.push(SchemaProblem::TemporaryTablesNotAllowed { role: live[0].get(6), database: live[0].get(7) });
    }
    // (The calls send text as UTF-8, which a session that reads it in
    // another encoding would store converted: `Ã©` for `é`.)
    let encoding: String = live[0].get(27);
    if encoding != "UTF8" && encoding != "SQL_ASCII" {
        problems.push(SchemaProblem::ClientEncoding { found: encoding });
    }
    let rules: Vec<String> = live[0].get(17);
    if !rules.is_empty() {
        problems.push(SchemaProblem::InsertRules { rules });
    }
    column_problems(model, &live, resolved, &mut problems);
    let mut shape = key_shape(model, &live, &mut problems);
    problems.extend(index_problem(model, &indexes));
    shape.dialect = citus_dialect(model, citus.first(), &mut problems);
    let staged = citus.first().is_some_and(|row| row.get::<_, bool>(2));
    if shape.dialect == Dialect::Citus && staged && shape.is_plain() {
        // (A key compared otherwise than the model's types keeps to the
        // session's scratch table, whose key columns take the table's.)
        shape.dialect = Dialect::CitusStaged;
    }
    Ok((problems, shape, live))
}

/// The dialect of a table whose Citus placement is `row` (a row of
/// [`CITUS_KIND`]), with what Citus cannot do with it.
fn citus_dialect(model: &Model, row: Option<&Row>, problems: &mut Vec<SchemaProblem>) -> Dialect {
    let Some(row) = row else { return Dialect::Postgres };
    let (kind, column): (&str, Option<String>) = (row.get(0), row.get(1));
    match kind {
        // A local table of a database with Citus: the same SQL as on a
        // distributed table, so that a connection that checked it keeps
        // exact counts (and its statements keep working) after the table
        // is distributed, made a reference table, or a `search_path`
        // switch leads to a distributed table of the same name: plain
        // PostgreSQL's statements would count the rows Citus attempted
        // (their command tag) or be refused (0A000).
        "reference" | "citus_coordinator_local" => Dialect::Citus,
        "distributed" => {
            let column = column.unwrap_or_default();
            if !model.unique_key().any(|c| c.name() == column) {
                let key = model.unique_key().map(|c| c.name().to_owned()).collect();
                problems.push(SchemaProblem::DistributionColumnNotInKey { column, key });
            }
            Dialect::Citus
        }
        "single_shard" | "citus_local" | "append_distributed" | "range_distributed" | "unsupported" => {
            problems.push(SchemaProblem::CitusTableUnsupported { kind: kind.to_owned() });
            Dialect::Citus
        }
        _ => Dialect::Postgres,
    }
}

/// The model's columns against the live ones (rows of [`COLUMNS`]);
/// `resolved` are the model's `sql_type` overrides as the server names them.
fn column_problems(model: &Model, live: &[Row], resolved: Vec<Option<String>>, problems: &mut Vec<SchemaProblem>) {
    let mut overrides = resolved.into_iter();
    for column in model.columns() {
        let resolved = column.sql_type().and_then(|_| overrides.next().flatten());
        let mut accepted: Vec<String> =
            column.pg_type().compatible_sql_names().iter().map(|s| (*s).to_owned()).collect();
        if let Some(r) = resolved
            && !accepted.contains(&r)
        {
            accepted.insert(0, r);
        }
        let expected = accepted.join(" or ");
        let Some(row) = live.iter().find(|r| r.get::<_, &str>(0) == column.name()) else {
            problems.push(SchemaProblem::ColumnMissing { column: column.name().to_owned(), expected });
            continue;
        };
        let ty: String = row.get(1);
        // `format_type` qualifies a type whose schema is not on the
        // search_path (`public.citext` for an extension installed in
        // `public` while the path is the application's schema): such a type
        // is still the one its name says.
        let unqualified: String = row.get(4);
        let fits = accepted.contains(&ty) || (ty.contains('.') && accepted.contains(&unqualified));
        if !fits {
            problems.push(SchemaProblem::ColumnType { column: column.name().to_owned(), expected, found: ty });
        }
        if column.nullable() && row.get::<_, bool>(2) {
            problems.push(SchemaProblem::ColumnNotNull { column: column.name().to_owned() });
        }
        // An enum type without a label of the model's enum refuses a row of
        // it as it receives the row: on the COPY path every offered row, on
        // the short path only the rows it sends (not a repeat of a key the
        // client left out). Refused here, before any row is sent.
        if let (true, Some(live_labels)) = (fits, row.get::<_, Option<Vec<String>>>(25)) {
            let missing: Vec<String> = column
                .enum_labels()
                .iter()
                .filter(|l| !live_labels.iter().any(|live| live == *l))
                .map(|l| (*l).to_owned())
                .collect();
            if !missing.is_empty() {
                problems.push(SchemaProblem::EnumLabelsMissing {
                    column: column.name().to_owned(),
                    found: row.get(21),
                    labels: missing,
                });
            }
        }
        // An identity column `GENERATED BY DEFAULT` ('d') takes given values.
        let (identity, generated): (&str, &str) = (row.get(22), row.get(23));
        if identity == "a" || !generated.is_empty() {
            problems
                .push(SchemaProblem::ColumnGenerated { column: column.name().to_owned(), identity: identity == "a" });
        }
    }
    for row in live {
        let name: &str = row.get(0);
        let (not_null, has_default): (bool, bool) = (row.get(2), row.get(3));
        if not_null && !has_default && !model.columns().iter().any(|c| c.name() == name) {
            problems.push(SchemaProblem::RequiredColumnNotInModel { column: name.to_owned() });
        }
    }
}

/// Whether the statements' guards must read the columns' types from the
/// catalog (see `KeyShape::catalog_guard`): for a model whose columns the
/// guard can check from the statement (`fragments::columns_fit_by_type`),
/// when a live column's type is not one it knows, or the table's name
/// finds another type than its row type.
fn catalog_guard(model: &Model, live: &[Row]) -> bool {
    let oids: Vec<Vec<u32>> = model.columns().iter().map(|c| crate::sql::type_oids(model, c)).collect();
    if oids.iter().any(Vec::is_empty) {
        return false;
    }
    live.first().is_some_and(|r| r.get::<_, bool>(28))
        || model.columns().iter().zip(&oids).any(|(c, oids)| {
            live.iter().find(|r| r.get::<_, &str>(0) == c.name()).is_some_and(|r| !oids.contains(&r.get::<_, u32>(14)))
        })
}

/// How the live key columns compare (and whether one rounds its values).
fn key_shape(model: &Model, live: &[Row], problems: &mut Vec<SchemaProblem>) -> KeyShape {
    let mut shape = KeyShape { catalog_guard: catalog_guard(model, live), ..KeyShape::default() };
    for column in model.unique_key() {
        let Some(row) = live.iter().find(|r| r.get::<_, &str>(0) == column.name()) else {
            shape.keys.push(None);
            continue;
        };
        // A domain's base type (see `base_type`).
        let (typname, typschema, typmod): (&str, &str, i32) = (row.get(18), row.get(19), row.get(20));
        if rounds(column.pg_type(), typname, typmod) {
            problems.push(SchemaProblem::KeyRounded { column: column.name().to_owned(), found: row.get(21) });
        } else if column.sql_type().is_some() && !keeps_keys(column.pg_type(), typschema, typname) {
            // Only an `sql_type` override gets a key column of another
            // family past the type check (the built-in lists only widen).
            problems.push(SchemaProblem::KeyConverted {
                column: column.name().to_owned(),
                model: column.pg_type().sql_name().to_owned(),
                found: row.get(21),
            });
        }
        let collation = row.get::<_, Option<String>>(11).zip(row.get::<_, Option<String>>(12));
        let domain = row.get::<_, bool>(24).then(|| (row.get::<_, String>(8), row.get::<_, String>(4)));
        shape.keys.push(key_as(column.pg_type(), column.nullable(), (typschema, typname, typmod), collation, domain));
    }
    shape
}

/// [`SchemaProblem::UniqueKeyMissing`] unless one of the table's unique
/// indexes (rows of [`UNIQUE_INDEXES`]) refuses a repeated key as the call
/// needs, with the reasons the others on the key's columns do not; then
/// [`SchemaProblem::DeferrableKeyConstraint`] if another is deferrable.
fn index_problem(model: &Model, indexes: &[Row]) -> Option<SchemaProblem> {
    let mut sorted_key: Vec<String> = model.unique_key().map(|c| c.name().to_owned()).collect();
    sorted_key.sort();
    let sorted_key = &sorted_key;
    let key_nullable = model.unique_key().any(|c| c.nullable());
    let mut rejected = Vec::new();
    let mut usable = false;
    for row in indexes {
        let mut cols: Vec<String> = row.get(1);
        cols.sort();
        match index_unfit(row, cols == *sorted_key, key_nullable) {
            Some(why) => {
                let index: String = row.get(0);
                rejected.push(format!("unique index \"{index}\" on ({}) {why}", cols.join(", ")));
            }
            None => usable |= cols == *sorted_key,
        }
    }
    let key = model.unique_key().map(|c| c.name().to_owned()).collect();
    if !usable {
        return Some(SchemaProblem::UniqueKeyMissing { key, rejected });
    }
    // `ON CONFLICT (key)` infers every unique index on exactly the key's
    // columns, and refuses the statement when one of them is deferrable.
    let deferrable = indexes.iter().find(|row| {
        let mut cols: Vec<String> = row.get(1);
        cols.sort();
        let (expressions, immediate): (bool, bool) = (row.get(3), row.get(6));
        cols == *sorted_key && !expressions && !immediate
    })?;
    Some(SchemaProblem::DeferrableKeyConstraint { index: deferrable.get(0), key })
}

/// Why a unique index (a row of [`UNIQUE_INDEXES`]) cannot serve the key;
/// `None` when it can, or when it is on other columns (`same_columns` false).
fn index_unfit(row: &Row, same_columns: bool, key_nullable: bool) -> Option<&'static str> {
    let (partial, expressions, nulls_not_distinct, valid, immediate): (bool, bool, bool, bool, bool) =
        (row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
    let same_collations: bool = row.get(7);
    if expressions {
        Some("is on an expression")
    } else if !same_columns {
        None
    } else if partial {
        Some("is partial (has a WHERE clause)")
    } else if !valid {
        Some("is invalid (a failed concurrent build)")
    } else if !immediate {
        // ON CONFLICT cannot use it, and a deferred check would only
        // refuse a stored key at COMMIT, after the call's counts.
        Some("is deferrable (its constraint must be checked immediately)")
    } else if !same_collations {
        // The call compares keys as their columns do.
        Some("compares a column under another collation than the column's own")
    } else if key_nullable && !nulls_not_distinct {
        Some("treats NULLs as distinct, but the model declares nulls_not_distinct")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_types_lose_their_modifiers_before_to_regtype() {
        assert_eq!(without_modifiers("varchar(40)"), "varchar");
        assert_eq!(without_modifiers("timestamp(3) with time zone"), "timestamp with time zone");
        assert_eq!(without_modifiers("numeric(10, 2)[]"), "numeric[]");
        assert_eq!(without_modifiers("int(11)"), "int");
        assert_eq!(without_modifiers("interval day(3) to second"), "interval day to second");
        assert_eq!(without_modifiers("geometry(Point, 4326)"), "geometry");
        assert_eq!(without_modifiers("citext"), "citext");
    }

    #[test]
    fn key_columns_keep_values_apart_only_in_their_own_family() {
        assert!(keeps_keys(PgType::Int4, "pg_catalog", "int8"));
        assert!(keeps_keys(PgType::Int8, "pg_catalog", "numeric"));
        assert!(!keeps_keys(PgType::Int8, "pg_catalog", "float8"));
        assert!(!keeps_keys(PgType::Float8, "pg_catalog", "numeric"));
        assert!(!keeps_keys(PgType::Timestamp, "pg_catalog", "date"));
        assert!(!keeps_keys(PgType::Timestamp, "pg_catalog", "timestamptz"));
        assert!(keeps_keys(PgType::Text, "public", "citext"));
        assert!(!keeps_keys(PgType::Text, "pg_catalog", "name"));
        assert!(!keeps_keys(PgType::Int8, "public", "int8"), "a type of that name outside pg_catalog");
    }
}
