//! The SQL of each model, built once per process ([`plan`]): the scratch
//! table, the COPY, and the plain call's statements in their two forms.

use tokio_postgres::types::Type;

use super::fragments::{self, ORD};
use super::insert;
use super::shape::KeyShape;
use crate::model::{Column, Model, quote_ident};
use crate::types::{PgType, fixed_width};

/// The SQL text and wire types of one model's protocol.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Name of the session-local scratch table (only `[a-z0-9_]`).
    pub scratch: String,
    /// `CREATE TEMP TABLE IF NOT EXISTS ... ON COMMIT DELETE ROWS`.
    pub create_scratch: String,
    /// `GRANT ALL ON TABLE pg_temp.<scratch> TO PUBLIC`, run after
    /// `create_scratch`: the session's calls keep working after `SET ROLE`.
    pub grant_scratch: String,
    /// `COPY pg_temp.scratch (...) FROM STDIN (FORMAT binary)`.
    pub copy: String,
    /// The names of the COPY's columns: the ordinal, then the model's.
    pub copy_columns: Vec<&'static str>,
    /// Wire types of the COPY columns: the ordinal, then the model's columns.
    pub copy_types: Vec<Type>,
    /// The staging table's column names ([`Model::staging_columns`]).
    pub stage_columns: Vec<&'static str>,
    /// The anti-join insert without `ON CONFLICT`: a call's first attempt
    /// (see [`insert_plain_sql`]).
    pub insert_plain: String,
    /// The same for a batch in which no key repeats: no `DISTINCT ON`.
    pub insert_plain_distinct_keys: String,
    /// Per column of the model, whether it is part of the unique key.
    pub key_columns: Vec<bool>,
    /// The names of the key's text columns: the ones that may compare
    /// otherwise than the model's types (see [`KeyShape`]).
    pub text_key: Vec<&'static str>,
    /// Per column of [`text_key`](Self::text_key), whether the model
    /// declares it nullable (a nullable `varchar` key is read as `varchar`).
    pub text_key_nullable: Vec<bool>,
    /// The names of the model's enum columns, and their types' names as the
    /// model declares them (resolved through the `search_path`, as the
    /// scratch table's were when it was made).
    pub enum_columns: (Vec<&'static str>, Vec<&'static str>),
    /// The anti-join insert with `ON CONFLICT (key) DO NOTHING`: the
    /// attempt that cannot fail on a key another writer stored meanwhile.
    pub insert: String,
    /// The COPY path's insert in Citus's dialect; see [`insert::scratch_citus`].
    pub insert_citus: String,
    /// The same, for a batch without a repeated key (no `DISTINCT ON`).
    pub insert_citus_distinct_keys: String,
    /// The COPY path's insert in Citus's dialect behind Citus's anti-join,
    /// after the `ON CONFLICT` form alone failed on a row the table refused
    /// (see `Form::Filtered`); see [`insert::scratch_citus`].
    pub insert_citus_filtered: String,
    /// The same, for a batch without a repeated key (no `DISTINCT ON`).
    pub insert_citus_filtered_distinct_keys: String,
    /// `COPY` into the target's Citus staging table (see
    /// [`Model::citus_staging_sql`](crate::Model::citus_staging_sql)).
    pub copy_stage: String,
    /// The plain call's insert from the staging table; see [`insert::staged_citus`].
    pub insert_staged: String,
    /// The same, for a batch without a repeated key (no `DISTINCT ON`).
    pub insert_staged_distinct_keys: String,
    /// The plain form of the insert from the staging table (the anti-join,
    /// no `ON CONFLICT`): a call's first attempt; see [`insert::staged_citus`].
    pub insert_staged_plain: String,
    /// The same, for a batch without a repeated key (no `DISTINCT ON`).
    pub insert_staged_plain_distinct_keys: String,
    /// The insert from the staging table with the anti-join and `ON
    /// CONFLICT`, after the `ON CONFLICT` form failed on a row the table
    /// refused (perhaps of a stored key); see [`insert::staged_citus`].
    pub insert_staged_filtered: String,
    /// The same, for a batch without a repeated key (no `DISTINCT ON`).
    pub insert_staged_filtered_distinct_keys: String,
    /// `SELECT` of [`key_index_guard`](super::fragments::key_index_guard),
    /// run after the plain insert from the staging table, in its savepoint:
    /// fails (`division_by_zero`) unless the target has the unique index
    /// the plain insert relies on. Run after the insert, it reads the
    /// catalog once the insert's lock on the target is held (and held to
    /// the end of the transaction), so an index it finds was there while
    /// the insert ran: building one takes a lock that waits for the insert.
    pub staged_guard: String,
    /// Follows every insert from the staging table: the error
    /// [`STAGE_CHANGED`](fragments::STAGE_CHANGED) if the target now has a
    /// column that would make Citus run that insert through the
    /// coordinator (see [`fragments::stage_guard`]).
    pub stage_guard: String,
    /// Follows the plain call's multi-row `VALUES` statements on Citus:
    /// whether the target has a `BEFORE INSERT` row trigger, or an error
    /// if the target changed since the check (see [`fragments::values_guard`]).
    pub values_guard: String,
    /// Deletes the call's rows from the staging table (in the call's own
    /// transaction, which is the only one that sees them).
    pub clear_stage: String,
    /// The staging table's name, qualified as the target's, quoted, as a
    /// text value for `to_regclass($1)`.
    pub stage_regclass: String,
    /// Empties the scratch table (used inside a caller's transaction, where
    /// `ON COMMIT DELETE ROWS` would only act at the caller's commit).
    pub clear: String,
    /// The target's qualified name, quoted, as a text value for `to_regclass($1)`.
    pub target_regclass: String,
    /// `pg_temp.<scratch>`, as a text value for `to_regclass`: whether this
    /// backend session has the scratch table (and has checked the model).
    pub scratch_regclass: String,
    /// The one-statement path for small batches, first attempt: the plain
    /// insert, reading `unnest` of one array per column instead of the
    /// scratch table; see [`insert::arrays_plain`].
    pub small_insert_plain: String,
    /// The one-statement path with `ON CONFLICT (key) DO NOTHING`; see [`insert::arrays_on_conflict`].
    pub small_insert: String,
    /// Parameter types of `small_insert` and `small_insert_plain`: the
    /// ordinal array (unless `client_ordered`), then one array per column
    /// (three per array column: see [`fragments::arrays`]).
    pub small_types: Vec<Type>,
    /// Whether the short-batch path orders the rows on the client (every key
    /// column's binary form sorts like PostgreSQL's `ORDER BY`) and drops
    /// repeated keys there, so its statements need no ordinal.
    pub client_ordered: bool,
    /// For a client-ordered key of fixed-width columns: where each key
    /// column's sort form goes in a row's key form.
    pub key_form: Option<KeyForm>,
    /// For a model whose new connections may make their first call without
    /// the schema check (see `call::first`): `small_insert` returning every
    /// model column.
    pub first_insert: Option<String>,
    /// The same for `small_insert_plain`.
    pub first_insert_plain: Option<String>,
}

/// The plan of `model`, built once per process.
pub(crate) fn plan(model: &'static Model) -> &'static Plan {
    model.cached(|| Plan::new(model))
}

impl Plan {
    pub(crate) fn new(model: &Model) -> Plan {
        let scratch = scratch_name(model);
        let plain = KeyShape::default();
        // Open to every role: after `SET ROLE` the session's calls still use
        // it (a temporary table is only ever visible to its own session).
        let create_scratch = scratch_table_ddl(model, &scratch, &plain);
        let grant_scratch = format!("GRANT ALL ON TABLE pg_temp.{} TO PUBLIC", quote_ident(&scratch));

        let copy_columns: Vec<&'static str> =
            std::iter::once(ORD).chain(model.columns().iter().map(Column::name)).collect();
        let copy_cols: Vec<String> = copy_columns.iter().map(|c| quote_ident(c)).collect();
        let copy =
            format!("COPY pg_temp.{} ({}) FROM STDIN (FORMAT binary)", quote_ident(&scratch), copy_cols.join(", "));
        let stage = model.staging_qualified_name();
        let copy_stage = format!("COPY {stage} ({}) FROM STDIN (FORMAT binary)", copy_cols.join(", "));
        let mut copy_types = vec![Type::INT8];
        copy_types.extend(model.columns().iter().map(|c| c.pg_type().wire_type()));

        let key_columns = model.columns().iter().map(|c| model.unique_key().any(|k| std::ptr::eq(k, c))).collect();
        let client_ordered = model.unique_key().all(|c| c.pg_type().client_orderable());
        let small_types = fragments::array_types(model, insert::layout(client_ordered));
        Plan {
            insert_plain: insert::scratch_plain(model, &scratch, true),
            insert_plain_distinct_keys: insert::scratch_plain(model, &scratch, false),
            insert: insert::scratch_on_conflict(model, &scratch),
            insert_citus: insert::scratch_citus(model, &scratch, true, false),
            insert_citus_distinct_keys: insert::scratch_citus(model, &scratch, false, false),
            insert_citus_filtered: insert::scratch_citus(model, &scratch, true, true),
            insert_citus_filtered_distinct_keys: insert::scratch_citus(model, &scratch, false, true),
            clear: format!("DELETE FROM pg_temp.{}", quote_ident(&scratch)),
            insert_staged: insert::staged_citus(model, true, false, true),
            insert_staged_distinct_keys: insert::staged_citus(model, false, false, true),
            insert_staged_plain: insert::staged_citus(model, true, true, false),
            insert_staged_plain_distinct_keys: insert::staged_citus(model, false, true, false),
            insert_staged_filtered: insert::staged_citus(model, true, true, true),
            insert_staged_filtered_distinct_keys: insert::staged_citus(model, false, true, true),
            staged_guard: format!("SELECT {}", fragments::key_index_guard(model, fragments::Compared::Unchecked)),
            stage_guard: fragments::stage_guard(
                model,
                &model.staging_columns().into_iter().map(|(name, _)| name).collect::<Vec<_>>(),
            ),
            values_guard: fragments::values_guard(model),
            clear_stage: format!("DELETE FROM {stage}"),
            stage_regclass: stage,
            copy_stage,
            scratch_regclass: format!("pg_temp.{scratch}"),
            target_regclass: model.qualified_name(),
            small_insert_plain: insert::arrays_plain(model, client_ordered, &plain),
            small_insert: insert::arrays_on_conflict(model, client_ordered, &plain),
            key_form: if client_ordered { KeyForm::of(model) } else { None },
            first_insert: first_call_eligible(model, client_ordered)
                .then(|| insert::returning_all(model, &insert::arrays_on_conflict(model, client_ordered, &plain))),
            first_insert_plain: first_call_eligible(model, client_ordered)
                .then(|| insert::returning_all(model, &insert::arrays_plain(model, client_ordered, &plain))),
            scratch,
            create_scratch,
            grant_scratch,
            copy,
            copy_columns,
            copy_types,
            stage_columns: model.staging_columns().into_iter().map(|(name, _)| name).collect(),
            key_columns,
            text_key: model.unique_key().filter(|c| c.pg_type() == PgType::Text).map(Column::name).collect(),
            text_key_nullable: model
                .unique_key()
                .filter(|c| c.pg_type() == PgType::Text)
                .map(Column::nullable)
                .collect(),
            enum_columns: model
                .columns()
                .iter()
                .filter_map(|c| match c.pg_type() {
                    PgType::Enum(name) => Some((c.name(), name)),
                    _ => None,
                })
                .unzip(),
            small_types,
            client_ordered,
        }
    }
}

/// Whether a new connection's first call of `model` may go without the
/// schema check (see `call::first`): its key is ordered and deduplicated on
/// the client (no text, so no collation), no column is nullable (the check
/// would refuse a nullable field on a `NOT NULL` column, which an insert
/// without NULLs cannot see) and none is an array.
fn first_call_eligible(model: &Model, client_ordered: bool) -> bool {
    let columns = model.columns();
    client_ordered
        && !columns.is_empty()
        && !columns.iter().any(|c| c.nullable() || matches!(c.pg_type(), crate::types::PgType::Array(_)))
}

/// The layout of a key of fixed-width columns whose bytes, each column in
/// its sort form (see [`write_sort_form`](crate::types::write_sort_form)),
/// one after the other, compare as the key does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyForm {
    /// The key's columns, in key order.
    pub columns: Vec<KeyFormColumn>,
    /// The length of a key's form.
    pub width: usize,
}

impl KeyForm {
    /// The form of `model`'s key, if every key column has a fixed width.
    fn of(model: &Model) -> Option<KeyForm> {
        KeyForm::for_key(model.columns(), model.unique_key())
    }

    /// The form of the key `key` (columns of `all`, in key order), if every
    /// key column has a fixed width.
    pub(crate) fn for_key<'c>(all: &[Column], key: impl IntoIterator<Item = &'c Column>) -> Option<KeyForm> {
        let mut at = 0;
        let mut columns = Vec::new();
        for k in key {
            let column = all.iter().position(|c| std::ptr::eq(c, k))?;
            let width = fixed_width(k.pg_type())? + usize::from(k.nullable());
            columns.push(KeyFormColumn { column, ty: k.pg_type(), nullable: k.nullable(), at, width });
            at += width;
        }
        Some(KeyForm { columns, width: at })
    }

    /// Whether a key's form fits in a `u128` (two `bigint`s, say).
    pub fn packs(&self) -> bool {
        self.width <= 16
    }
}

/// One column of a [`KeyForm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyFormColumn {
    /// The column's position in the model.
    pub column: usize,
    /// Its type, of a fixed width.
    pub ty: PgType,
    /// Whether it is nullable (its form starts with a NULL flag).
    pub nullable: bool,
    /// Where its form starts in the key's form.
    pub at: usize,
    /// The length of its form: the type's width, plus one for the flag.
    pub width: usize,
}

/// `__bulk_` and a hash of everything the scratch table's shape and the schema
/// check depend on, so two models (or two versions of one model) never share a
/// scratch table: its existence tells the call that *this* model was checked.
fn scratch_name(model: &Model) -> String {
    format!("__bulk_{:016x}", model.layout_hash())
}

/// `CREATE TEMP TABLE` of the scratch table `scratch`: the position, then
/// the model's columns with their wire types, no constraint, emptied at
/// each commit. For a table whose key compares otherwise than the model's
/// types, the key columns take the table's type and collation (see
/// [`KeyShape`]), so that the COPY path deduplicates and matches keys as
/// the table's unique index does.
fn scratch_table_ddl(model: &Model, scratch: &str, shape: &KeyShape) -> String {
    let mut cols = vec![format!("{} bigint", quote_ident(ORD))];
    for c in model.columns() {
        let ty = match model.unique_key().position(|k| std::ptr::eq(k, c)) {
            Some(i) => shape.column_type(i, c.pg_type().sql_name()),
            None => c.pg_type().sql_name().to_owned(),
        };
        cols.push(format!("{} {ty}", quote_ident(c.name())));
    }
    format!("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS", quote_ident(scratch), cols.join(", "))
}

/// [`Plan::create_scratch`] for a table whose key compares as `shape` says.
pub(crate) fn scratch_ddl(model: &'static Model, shape: &KeyShape) -> String {
    scratch_table_ddl(model, &plan(model).scratch, shape)
}

/// Fixtures shared by the SQL unit tests of this module and of `variants`.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::model::{Column, ColumnSpec, Model, ModelSpec};
    use crate::types::PgType;

    /// A model with a schema, and table and column names that need quoting.
    pub(crate) static COLUMNS: [Column; 3] = [
        ColumnSpec::of("tweet", PgType::Int8).build(),
        ColumnSpec::of("retweeter", PgType::Int8).rename(r#"re"tweeter"#).index().build(),
        ColumnSpec::of("author", PgType::Text).nullable().sql_type("varchar(40)").build(),
    ];
    pub(crate) static MODEL: Model =
        ModelSpec::of("Retweet", r#"re"tweet"#, &COLUMNS, &[0, 1]).schema("my schema").id("id").build();

    /// The byte offset of `needle` in `hay`, failing the test when absent.
    pub(crate) fn at(hay: &str, needle: &str) -> usize {
        hay.find(needle).unwrap_or_else(|| panic!("`{needle}` not found in:\n{hay}"))
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{COLUMNS, MODEL, at};
    use super::*;
    use crate::model::{CitusTable, Column, ColumnSpec, ModelSpec};
    use crate::sql::fragments::{Arrays, Compared, array_types, arrays, key_index_guard, literal, rules_guard};
    use crate::types::PgType;

    /// A `nulls_not_distinct` model whose key has a nullable column, no schema, no id.
    static NULLABLE_COLUMNS: [Column; 3] = [
        ColumnSpec::of("owner", PgType::Int4).build(),
        ColumnSpec::of("label", PgType::Text).nullable().build(),
        ColumnSpec::of("note", PgType::Bytea).build(),
    ];
    static NULLABLE_MODEL: Model = ModelSpec::of("Tag", "tag", &NULLABLE_COLUMNS, &[1, 0]).nulls_not_distinct().build();

    /// Names built to break out of a quoted identifier if quotes were not doubled.
    static EVIL_COLUMNS: [Column; 2] = [
        ColumnSpec::of("key", PgType::Int8).rename(r#"k"; DROP TABLE victim; --"#).build(),
        ColumnSpec::of("select", PgType::Text).index().build(),
    ];
    static EVIL_MODEL: Model = ModelSpec::of("Evil", r#"t"; DROP TABLE victim; --"#, &EVIL_COLUMNS, &[0])
        .schema(r#"s"; DROP SCHEMA x; --"#)
        .id("order")
        .build();

    #[test]
    fn insert_keeps_the_first_row_per_key_and_skips_stored_keys() {
        let plan = Plan::new(&MODEL);
        let sql = plan.insert.as_str();
        let insert = at(sql, r#"INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT "#);
        assert_eq!(insert, 0, "{sql}");
        let distinct = at(sql, r#"SELECT DISTINCT ON ("tweet", "re""tweeter") "tweet", "re""tweeter", "author" FROM "#);
        let scratch = at(sql, &format!(r#"FROM pg_temp."{}""#, plan.scratch));
        let inner_order = at(sql, r#"ORDER BY "tweet", "re""tweeter", "__bulk_ord")"#);
        let not_exists = at(sql, r#"NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "#);
        at(sql, r#""t"."tweet" = "s"."tweet""#);
        at(sql, r#""t"."re""tweeter" = "s"."re""tweeter""#);
        let outer_order = at(sql, r#"ORDER BY "s"."tweet", "s"."re""tweeter""#);
        let conflict = at(sql, r#"ON CONFLICT ("tweet", "re""tweeter") DO NOTHING"#);
        assert!(distinct < scratch && scratch < inner_order, "{sql}");
        assert!(inner_order < not_exists && not_exists < outer_order && outer_order < conflict, "{sql}");
        assert!(sql.ends_with("DO NOTHING"), "{sql}");
        assert!(!sql.contains("IS NULL"), "a non-null key needs no NULL matching: {sql}");
        assert!(!sql.to_uppercase().contains("LOCK"), "{sql}");
        assert!(!sql.contains('$'), "no parameters: {sql}");
    }

    #[test]
    fn the_citus_dialect_inserts_on_conflict_one_row_per_key_counted_from_returning() {
        use crate::sql::{Dialect, arrays_citus};
        let plan = Plan::new(&MODEL);
        let sql = plan.insert_citus.as_str();
        assert!(sql.starts_with(r#"WITH "__bulk_ins" AS (INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT DISTINCT ON ("s"."tweet", "s"."re""tweeter") "s"."tweet", "s"."re""tweeter", CASE WHEN "#), "{sql}");
        at(
            sql,
            &format!(
                r#"CASE WHEN {} THEN "s"."author" END FROM pg_temp."#,
                crate::sql::fragments::on_conflict_guard(&MODEL, Compared::AsCitusScratch(&plan.scratch))
            ),
        );
        at(
            sql,
            r#"ORDER BY "s"."tweet", "s"."re""tweeter", "s"."__bulk_ord" ON CONFLICT ("tweet", "re""tweeter") DO NOTHING RETURNING 1) SELECT count(*) FROM "__bulk_ins""#,
        );
        let shape = KeyShape { dialect: Dialect::Citus, ..KeyShape::default() };
        let sql = arrays_citus(&MODEL, false, &shape, false);
        assert!(sql.starts_with(r#"WITH "__bulk_src" AS (SELECT DISTINCT ON (u."tweet", u."re""tweeter") u."__bulk_ord", u."tweet", u."re""tweeter", u."author" FROM unnest($1::bigint[]"#), "{sql}");
        at(
            &sql,
            &format!(
                r#"ORDER BY u."tweet", u."re""tweeter", u."__bulk_ord"), "__bulk_ins" AS (INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT "s"."tweet", "s"."re""tweeter", CASE WHEN {} THEN "s"."author" END FROM "__bulk_src" AS "s" ORDER BY "s"."tweet", "s"."re""tweeter" ON CONFLICT ("tweet", "re""tweeter") DO NOTHING RETURNING 1) SELECT count(*) FROM "__bulk_ins""#,
                crate::sql::fragments::on_conflict_guard(&MODEL, Compared::As(&shape))
            ),
        );
        let sql = arrays_citus(&MODEL, true, &shape, false);
        assert!(sql.starts_with(r#"WITH "__bulk_ins" AS (INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT u."tweet", u."re""tweeter", CASE WHEN "#), "{sql}");
        at(&sql, r#"THEN u."author" END FROM unnest($1::bigint[], $2::bigint[], $3::text[])"#);
        let sql = plan.insert_citus_distinct_keys.as_str();
        assert!(sql.starts_with(r#"WITH "__bulk_ins" AS (INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT "s"."tweet", "s"."re""tweeter", CASE WHEN "#), "{sql}");
        at(
            sql,
            &format!(
                r#"CASE WHEN {} THEN "s"."author" END FROM pg_temp."#,
                crate::sql::fragments::on_conflict_guard(&MODEL, Compared::AsCitusScratch(&plan.scratch))
            ),
        );
        assert!(
            sql.ends_with(
                r#"AS "s" ON CONFLICT ("tweet", "re""tweeter") DO NOTHING RETURNING 1) SELECT count(*) FROM "__bulk_ins""#
            ),
            "{sql}"
        );
        let values = crate::sql::values_on_conflict(&MODEL, 2, &shape);
        assert_eq!(
            values,
            r#"INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") VALUES ($1, $2, $3), ($4, $5, $6) ON CONFLICT ("tweet", "re""tweeter") DO NOTHING"#
        );
        for sql in [
            plan.insert_citus.clone(),
            plan.insert_citus_distinct_keys.clone(),
            arrays_citus(&MODEL, false, &shape, false),
            arrays_citus(&MODEL, true, &shape, false),
            values,
        ] {
            // (The guard's `NOT EXISTS` reads Citus's metadata, not the table.)
            assert!(
                !sql.contains("WHERE NOT EXISTS") && !sql.contains("pg_index"),
                "no anti-join, no key guard: {sql}"
            );
        }
    }

    #[test]
    fn the_citus_dialect_filters_stored_keys_through_a_materialized_join_not_a_correlated_subquery() {
        use crate::api::Keep;
        use crate::sql::variants::{Returned, Source, returning, returning_filtered};
        use crate::sql::{Dialect, arrays_citus};
        let plan = Plan::new(&MODEL);
        let shape = KeyShape { dialect: Dialect::Citus, ..KeyShape::default() };
        let stored = r#""__bulk_stored" AS MATERIALIZED (SELECT "b"."tweet", "b"."re""tweeter" FROM "my schema"."re""tweet" AS "t" JOIN (SELECT "b"."tweet", "b"."re""tweeter" FROM "#;
        let on = r#") AS "b" ON "t"."tweet" = "b"."tweet" AND "t"."re""tweeter" = "b"."re""tweeter")"#;
        let filter = r#" WHERE NOT EXISTS (SELECT 1 FROM "__bulk_stored" AS "x" WHERE "x"."tweet" = "s"."tweet" AND "x"."re""tweeter" = "s"."re""tweeter")"#;
        let from_src = format!(r#"{stored}"__bulk_src" AS "b"{on}"#);
        let from_scratch = format!(r#"{stored}pg_temp.{} AS "b"{on}"#, quote_ident(&plan.scratch));
        let positions = Returned::Positions;
        for (sql, cte) in [
            (plan.insert_citus_filtered.clone(), &from_scratch),
            (plan.insert_citus_filtered_distinct_keys.clone(), &from_scratch),
            (arrays_citus(&MODEL, false, &shape, true), &from_src),
            (arrays_citus(&MODEL, true, &shape, true), &from_src),
            (returning_filtered(&MODEL, Source::Arrays(&shape), positions), &from_src),
            (returning_filtered(&MODEL, Source::Scratch(Dialect::Citus), positions), &from_src),
        ] {
            at(&sql, cte);
            at(&sql, filter);
            // The target is read only in the CTE, never correlated with the batch.
            assert_eq!(sql.matches(r#"FROM "my schema"."re""tweet""#).count(), 1, "{sql}");
        }
        // Without a refused row, no filter; on plain PostgreSQL, the anti-join.
        for sql in [
            plan.insert_citus.clone(),
            arrays_citus(&MODEL, false, &shape, false),
            returning(&MODEL, Source::Arrays(&shape), Keep::First, positions),
        ] {
            assert!(!sql.contains("__bulk_stored"), "{sql}");
        }
        let postgres = returning_filtered(&MODEL, Source::Arrays(&KeyShape::default()), positions);
        assert_eq!(postgres, returning(&MODEL, Source::Arrays(&KeyShape::default()), Keep::First, positions));
    }

    #[test]
    fn the_guard_after_citus_values_statements_checks_columns_kind_rules_and_reads_triggers() {
        use crate::sql::fragments::{KEY_INDEX_CHANGED, citus_kind_fits, columns_fit};
        let guard = Plan::new(&MODEL).values_guard;
        let kind = citus_kind_fits(&MODEL);
        at(&kind, r#"p.logicalrelid = pg_catalog.to_regclass(E'"my schema"."re""tweet"')"#);
        at(&kind, "AND NOT (p.partmethod = 'h' OR p.repmodel = 't'))");
        // The check first; the triggers only when it passes; the error otherwise.
        let rules = crate::sql::fragments::insert_rules(r#"pg_catalog.to_regclass(E'"my schema"."re""tweet"')"#);
        let checked =
            at(&guard, &format!("SELECT CASE WHEN {} AND {kind} AND NOT {rules} THEN EXISTS (", columns_fit(&MODEL)));
        let triggers = at(&guard, "g.tgtype::int & 7 = 7");
        let refused = at(&guard, &format!("ELSE pg_catalog.concat({})::int4 = 0 END", literal(KEY_INDEX_CHANGED)));
        assert!(checked < triggers && triggers < refused, "{guard}");
        at(&guard, "pg_catalog.pg_partition_tree(");
    }

    /// A model with an enum column outside its key.
    static ENUM_COLUMNS: [Column; 2] =
        [ColumnSpec::of("id", PgType::Int4).build(), ColumnSpec::of("mood", PgType::Enum("app.mood")).build()];
    static ENUM_MODEL: Model = ModelSpec::of("Feeling", "feeling", &ENUM_COLUMNS, &[0]).build();

    #[test]
    fn a_values_statement_casts_an_enum_s_label_to_its_type() {
        // The label goes as text, which PostgreSQL assigns to an enum
        // column only through an explicit cast (42804 without it).
        let values = crate::sql::values_on_conflict(&ENUM_MODEL, 2, &KeyShape::default());
        assert_eq!(
            values,
            r#"INSERT INTO "feeling" ("id", "mood") VALUES ($1, $2::app.mood), ($3, $4::app.mood) ON CONFLICT ("id") DO NOTHING"#
        );
    }

    #[test]
    fn the_plain_forms_rely_on_a_unique_index_they_check_and_the_on_conflict_forms_need_none() {
        let guard = key_index_guard(&MODEL, Compared::Unchecked);
        at(&guard, r#"i.indrelid = E'"my schema"."re""tweet"'::pg_catalog.regclass"#);
        at(&guard, "i.indisunique AND i.indisvalid AND i.indisready AND i.indimmediate");
        at(&guard, "i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2 AND");
        at(&guard, "(i.indkey::pg_catalog.int2[])[0:1]");
        at(&guard, r#"ARRAY[E'tweet', E're"tweeter']::pg_catalog.name[])) = 2 AND NOT EXISTS"#);
        // No `INSERT` or `UPDATE` rule on the table (created since the check).
        at(&guard, "pg_catalog.pg_rewrite AS r WHERE r.ev_class = i.indrelid AND r.ev_type IN ('2', '3')) AND ");
        assert!(guard.ends_with(&format!("AND {}) >= 0", crate::sql::fragments::columns_fit(&MODEL))), "{guard}");
        assert!(guard.starts_with("1 / (SELECT count(*)::int4 "), "{guard}");
        assert!(!guard.contains("indnullsnotdistinct"), "a key without NULLs: {guard}");
        at(&key_index_guard(&NULLABLE_MODEL, Compared::Unchecked), "AND i.indnullsnotdistinct");
        // Backslashes and quotes stay inside the escape string.
        assert_eq!(literal(r"a'b\c"), r"E'a''b\\c'");
        let plan = Plan::new(&MODEL);
        for plain in [&plan.insert_plain, &plan.insert_plain_distinct_keys, &plan.small_insert_plain] {
            at(plain, &guard);
        }
        for on_conflict in [&plan.insert, &plan.small_insert] {
            assert!(!on_conflict.contains("pg_index"), "{on_conflict}");
        }
    }

    #[test]
    fn the_on_conflict_forms_of_a_nullable_or_text_key_check_what_on_conflict_takes_blindly() {
        use crate::sql::KeyAs;
        use crate::sql::fragments::{KEY_INDEX_CHANGED, columns_fit, on_conflict_guard};
        // An integer key: ON CONFLICT's own inference is enough; only the
        // columns' types are checked.
        let integer = on_conflict_guard(&MODEL, Compared::As(&KeyShape::default()));
        assert!(!integer.contains("pg_index"), "{integer}");
        // Evaluated once per statement, not per row: a scalar subquery
        // (but in Citus's dialect).
        assert!(integer.starts_with("(SELECT CASE WHEN ") && integer.ends_with(" END)"), "{integer}");
        let plan = Plan::new(&MODEL);
        let citus = on_conflict_guard(&MODEL, Compared::AsCitusScratch(&plan.scratch));
        assert!(citus.starts_with("CASE WHEN "), "{citus}");
        // ... from the statement itself, for a table of built-in types
        // (the check's default); from the catalog for another table, and
        // from the scratch table.
        at(&integer, &crate::sql::fragments::columns_fit_by_type(&MODEL));
        assert!(!integer.contains("pg_attribute"), "{integer}");
        at(&integer, r#"pg_typeof((NULL::"my schema"."re""tweet")."re""tweeter")::pg_catalog.oid IN (20) AND "#);
        at(&integer, r#"pg_typeof((NULL::"my schema"."re""tweet")."author")::pg_catalog.oid IN (25, 1042, 1043))"#);
        let catalog = KeyShape { catalog_guard: true, ..KeyShape::default() };
        at(&on_conflict_guard(&MODEL, Compared::As(&catalog)), &columns_fit(&MODEL));
        let plan = Plan::new(&MODEL);
        at(&on_conflict_guard(&MODEL, Compared::AsScratch(&plan.scratch)), &columns_fit(&MODEL));
        let plan = Plan::new(&NULLABLE_MODEL);
        let guard = on_conflict_guard(&NULLABLE_MODEL, Compared::As(&KeyShape::default()));
        at(&guard, "AND i.indnullsnotdistinct");
        at(&guard, "a.attcollation <> i.indcollation[n.n]");
        // The text key column compares as the statement reads it: by default as text.
        at(&guard, "= ARRAY[NULL, NULL, NULL, NULL, NULL, NULL, NULL]::pg_catalog.text[]");
        at(&guard, "OR pg_catalog.pg_get_indexdef(i.indexrelid) IS NOT NULL))");
        at(&guard, &format!("ELSE pg_catalog.concat({})::int4 = 0 END", literal(KEY_INDEX_CHANGED)));
        at(&plan.small_insert, &format!(r#"u."label", CASE WHEN {guard} THEN u."note" END FROM"#));
        // From the scratch table: as its key columns compare.
        let scratch = on_conflict_guard(&NULLABLE_MODEL, Compared::AsScratch(&plan.scratch));
        at(&scratch, &format!(r#"WHERE a.attrelid = E'pg_temp."{}"'::pg_catalog.regclass"#, plan.scratch));
        at(&plan.insert, &format!(r#""s"."label", CASE WHEN {scratch} THEN "s"."note" END FROM"#));
        at(&plan.insert_plain, &key_index_guard(&NULLABLE_MODEL, Compared::AsScratch(&plan.scratch)));
        // A shape: its type and collation, as literals.
        let keys = vec![
            Some(KeyAs { ty: None, collation: Some(("public".into(), "ci".into())), typmod: None, domain: None }),
            None,
        ];
        let shape = KeyShape { keys, ..KeyShape::default() };
        let on_conflict = insert::arrays_on_conflict(&NULLABLE_MODEL, false, &shape);
        at(&on_conflict, "= ARRAY[NULL, NULL, E'public', E'ci', NULL, NULL, NULL]::pg_catalog.text[]");
        let plain = insert::arrays_plain(&NULLABLE_MODEL, false, &shape);
        at(&plain, "= ARRAY[NULL, NULL, E'public', E'ci', NULL, NULL, NULL]::pg_catalog.text[]");
        // The Citus staging table's guard is as it was.
        assert!(!key_index_guard(&NULLABLE_MODEL, Compared::Unchecked).contains("indcollation"));
    }

    #[test]
    fn a_varchar_key_is_read_with_its_length_as_an_assignment_stores_it() {
        use crate::sql::KeyAs;
        use crate::sql::fragments::on_conflict_guard;
        // `label` is `varchar(3)`: type modifier 7.
        let varchar = Some(("pg_catalog".into(), "varchar".into()));
        let keys = vec![Some(KeyAs { ty: varchar, collation: None, typmod: Some(7), domain: None }), None];
        let shape = KeyShape { keys, ..KeyShape::default() };
        let read = r#""pg_catalog"."varchar"(CAST(u."label" AS "pg_catalog"."varchar"), 7, false)"#;
        assert_eq!(shape.read(0, r#"u."label""#), read);
        assert_eq!(shape.column_type(0, "text"), r#""pg_catalog"."varchar"(3)"#);
        at(&scratch_ddl(&NULLABLE_MODEL, &shape), r#""label" "pg_catalog"."varchar"(3)"#);
        for sql in [
            insert::arrays_plain(&NULLABLE_MODEL, false, &shape),
            insert::arrays_on_conflict(&NULLABLE_MODEL, false, &shape),
        ] {
            at(&sql, &format!(r#"{read} AS "label""#));
            // The guards expect the key read at that length.
            at(&sql, "= ARRAY[E'pg_catalog', E'varchar', NULL, NULL, E'7', NULL, NULL]::pg_catalog.text[]");
        }
        let guard = on_conflict_guard(&NULLABLE_MODEL, Compared::As(&shape));
        // (Of the column's base type: a domain's holds the length.)
        at(&guard, "CASE WHEN b.typname = 'varchar' AND b.typmod >= 0 THEN b.typmod::text END, ");
        at(&guard, "SELECT d.typbasetype, d.typtypmod");
    }

    #[test]
    fn a_nullable_key_of_a_domain_is_read_as_the_domain() {
        use crate::sql::KeyAs;
        use crate::sql::fragments::on_conflict_guard;
        // `label` is of the domain `app.tag_label` over `varchar(50)`.
        let keys = vec![
            Some(KeyAs {
                ty: Some(("pg_catalog".into(), "varchar".into())),
                collation: None,
                typmod: Some(54),
                domain: Some(("app".into(), "tag_label".into())),
            }),
            None,
        ];
        let shape = KeyShape { keys, ..KeyShape::default() };
        let read = r#"CAST("pg_catalog"."varchar"(CAST(u."label" AS "pg_catalog"."varchar"), 54, false) AS "app"."tag_label")"#;
        assert_eq!(shape.read(0, r#"u."label""#), read);
        // The scratch table's column: the domain, which holds the length.
        assert_eq!(shape.column_type(0, "text"), r#""app"."tag_label""#);
        let guard = on_conflict_guard(&NULLABLE_MODEL, Compared::As(&shape));
        at(&guard, "= ARRAY[E'pg_catalog', E'varchar', NULL, NULL, E'54', E'app', E'tag_label']::pg_catalog.text[]");
    }

    #[test]
    fn a_key_compared_as_the_table_compares_it_reads_the_batch_through_casts() {
        use crate::sql::KeyAs;
        // `label` (the first key column) is citext under a case-insensitive collation.
        let keys = vec![
            Some(KeyAs {
                ty: Some(("ext".into(), "citext".into())),
                collation: Some(("public".into(), r#"c"i"#.into())),
                typmod: None,
                domain: None,
            }),
            None,
        ];
        let shape = KeyShape { keys, ..KeyShape::default() };
        let layout = Arrays { positions: true, mask: false };
        let source = arrays(&NULLABLE_MODEL, "u", layout, &shape);
        assert_eq!(
            source,
            r#"(SELECT u."__bulk_ord", u."owner" AS "owner", CAST(u."label" AS "ext"."citext") COLLATE "public"."c""i" AS "label", u."note" FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::bytea[]) AS u("__bulk_ord", "owner", "label", "note")) AS u"#
        );
        assert_eq!(
            arrays(&NULLABLE_MODEL, "u", layout, &KeyShape::default()),
            r#"unnest($1::bigint[], $2::integer[], $3::text[], $4::bytea[]) AS u("__bulk_ord", "owner", "label", "note")"#
        );
        let cast = r#"CAST(u."label" AS "ext"."citext") COLLATE "public"."c""i" AS "label""#;
        let plain = insert::arrays_plain(&NULLABLE_MODEL, false, &shape);
        assert!(at(&plain, cast) < at(&plain, r#") AS u WHERE NOT EXISTS"#), "{plain}");
        let on_conflict = insert::arrays_on_conflict(&NULLABLE_MODEL, false, &shape);
        assert!(at(&on_conflict, cast) < at(&on_conflict, r#") AS u ORDER BY"#), "{on_conflict}");
        let ddl = scratch_ddl(&NULLABLE_MODEL, &shape);
        at(
            &ddl,
            r#""owner" integer, "label" "ext"."citext" COLLATE "public"."c""i", "note" bytea) ON COMMIT DELETE ROWS"#,
        );
    }

    #[test]
    fn plain_insert_skips_stored_keys_first_then_keeps_the_first_row_per_key() {
        let plan = Plan::new(&MODEL);
        let sql = plan.insert_plain.as_str();
        let insert = at(sql, r#"INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT "#);
        assert_eq!(insert, 0, "{sql}");
        let distinct = at(sql, r#"SELECT DISTINCT ON ("s"."tweet", "s"."re""tweeter") "s"."tweet", "#);
        let scratch = at(sql, &format!(r#"FROM pg_temp."{}" AS "s""#, plan.scratch));
        let not_exists = at(sql, r#"WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "#);
        at(sql, r#""t"."tweet" = "s"."tweet" AND "t"."re""tweeter" = "s"."re""tweeter""#);
        let order = at(sql, r#"ORDER BY "s"."tweet", "s"."re""tweeter", "s"."__bulk_ord""#);
        assert!(distinct < scratch && scratch < not_exists && not_exists < order, "{sql}");
        assert!(sql.ends_with(r#""s"."__bulk_ord""#), "{sql}");
        assert!(!sql.contains("ON CONFLICT") && !sql.to_uppercase().contains("LOCK"), "{sql}");
        assert!(!sql.contains('$'), "no parameters: {sql}");
        // The guard in the select list (in the WHERE it would cost the
        // anti-join its index probes), around the last column.
        let guard = at(
            sql,
            &format!(
                r#""s"."re""tweeter", CASE WHEN {} THEN "s"."author" END FROM"#,
                key_index_guard(&MODEL, Compared::Unchecked)
            ),
        );
        assert!(distinct < guard && guard < scratch, "{sql}");
        assert!(!sql[not_exists..].contains("pg_index"), "{sql}");
        // The ON CONFLICT form reads the same scratch table.
        assert!(plan.insert.contains(&format!(r#"pg_temp."{}""#, plan.scratch)), "{}", plan.insert);

        // Without repeated keys: no DISTINCT ON, ordered by the key alone.
        let sql = plan.insert_plain_distinct_keys.as_str();
        let select = at(sql, r#"SELECT "s"."tweet", "s"."re""tweeter", CASE WHEN 1 / (SELECT count(*)"#);
        at(sql, r#"THEN "s"."author" END FROM pg_temp."#);
        let not_exists = at(sql, r#"WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "#);
        assert!(select < not_exists, "{sql}");
        at(sql, &key_index_guard(&MODEL, Compared::Unchecked));
        assert!(sql.ends_with(r#"ORDER BY "s"."tweet", "s"."re""tweeter""#), "{sql}");
        assert!(!sql.contains("DISTINCT") && !sql.contains(ORD) && !sql.contains("ON CONFLICT"), "{sql}");
        assert_eq!(plan.key_columns, [true, true, false]);

        let plan = Plan::new(&NULLABLE_MODEL);
        assert_eq!(plan.key_columns, [true, true, false]);
        let sql = plan.insert_plain.as_str();
        at(sql, r#"DISTINCT ON ("s"."label", "s"."owner")"#);
        at(sql, r#""t"."label" = "s"."label" OR ("t"."label" IS NULL AND "s"."label" IS NULL)"#);
        at(sql, r#"ORDER BY "s"."label", "s"."owner", "s"."__bulk_ord""#);
    }

    #[test]
    fn plain_small_batch_statement_skips_stored_keys_in_key_order() {
        // A client-ordered key: the rows arrive in key order, each key once.
        let plan = Plan::new(&MODEL);
        let sql = plan.small_insert_plain.as_str();
        let select = at(sql, r#"("tweet", "re""tweeter", "author") SELECT u."tweet", u."re""tweeter", CASE WHEN 1 / "#);
        // The rules guard as one more, empty, array (see `fragments::arrays_guarded`).
        let arrays = at(
            sql,
            &format!(
                r#"unnest($1::bigint[], $2::bigint[], $3::text[], {}) AS u("tweet", "re""tweeter", "author", "__bulk_rules")"#,
                rules_guard(&MODEL)
            ),
        );
        at(
            &rules_guard(&MODEL),
            r#"r.ev_class = E'"my schema"."re""tweet"'::pg_catalog.regclass AND r.ev_type IN ('2', '3')"#,
        );
        assert!(!plan.small_insert.contains("pg_rewrite"), "only the plain form: {}", plan.small_insert);
        let not_exists = at(
            sql,
            r#"WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "t"."tweet" = u."tweet" AND "t"."re""tweeter" = u."re""tweeter")"#,
        );
        let order = at(sql, r#"ORDER BY u."tweet", u."re""tweeter""#);
        assert!(select < arrays && arrays < not_exists && not_exists < order, "{sql}");
        let guard = at(
            sql,
            &format!(
                r#"u."re""tweeter", CASE WHEN {} THEN u."author" END FROM"#,
                key_index_guard(&MODEL, Compared::Unchecked)
            ),
        );
        assert!(guard < arrays && !sql[not_exists..].contains("pg_index"), "{sql}");
        assert!(sql.ends_with(r#"ORDER BY u."tweet", u."re""tweeter""#), "{sql}");
        assert!(!sql.contains("DISTINCT") && !sql.contains(ORD) && !sql.contains("ON CONFLICT"), "{sql}");

        // A text key: the server keeps the first offered row of each key.
        let plan = Plan::new(&NULLABLE_MODEL);
        let sql = plan.small_insert_plain.as_str();
        let distinct = at(sql, r#"SELECT DISTINCT ON (u."label", u."owner") u."owner", u."label", CASE WHEN "#);
        at(sql, r#" THEN u."note" END FROM "#);
        let arrays = at(sql, r#"unnest($1::bigint[], $2::integer[], $3::text[], $4::bytea[], CASE WHEN 1 / "#);
        let names = at(sql, r#"AS u("__bulk_ord", "owner", "label", "note", "__bulk_rules")"#);
        let stored = at(
            sql,
            r#"("t"."label" = u."label" OR ("t"."label" IS NULL AND u."label" IS NULL)) AND "t"."owner" = u."owner""#,
        );
        let order = at(sql, r#"ORDER BY u."label", u."owner", u."__bulk_ord""#);
        assert!(distinct < arrays && arrays < names && names < stored && stored < order, "{sql}");
        assert!(!sql.contains("ON CONFLICT"), "{sql}");
    }

    #[test]
    fn small_batch_statement_inserts_in_key_then_offered_order() {
        // A text key: PostgreSQL orders it by collation, so the server sorts.
        let plan = Plan::new(&NULLABLE_MODEL);
        assert!(!plan.client_ordered);
        let sql = plan.small_insert.as_str();
        let insert = at(sql, r#"INSERT INTO "tag" ("owner", "label", "note") SELECT "#);
        let arrays = at(sql, "unnest($1::bigint[], $2::integer[], $3::text[], $4::bytea[])");
        let names = at(sql, r#"AS u("__bulk_ord", "owner", "label", "note")"#);
        let order = at(sql, r#"ORDER BY u."label", u."owner", u."__bulk_ord""#);
        let conflict = at(sql, r#"ON CONFLICT ("label", "owner") DO NOTHING"#);
        assert!(insert < arrays && arrays < names && names < order && order < conflict, "{sql}");
        assert!(sql.ends_with("DO NOTHING"), "{sql}");
        assert!(!sql.to_uppercase().contains("LOCK"), "{sql}");
        assert_eq!(plan.small_types, vec![Type::INT8_ARRAY, Type::INT4_ARRAY, Type::TEXT_ARRAY, Type::BYTEA_ARRAY]);
        assert_eq!(plan.scratch_regclass, format!("pg_temp.{}", plan.scratch));

        // An integer key: the client sends the rows in key order already.
        let plan = Plan::new(&MODEL);
        assert!(plan.client_ordered);
        let sql = plan.small_insert.as_str();
        let insert = at(sql, r#"INSERT INTO "my schema"."re""tweet" ("tweet", "re""tweeter", "author") SELECT "#);
        let arrays =
            at(sql, r#"unnest($1::bigint[], $2::bigint[], $3::text[]) AS u("tweet", "re""tweeter", "author")"#);
        assert!(!sql.contains("pg_rewrite"), "the rules guard is the plain form's: {sql}");
        let conflict = at(sql, r#"ON CONFLICT ("tweet", "re""tweeter") DO NOTHING"#);
        assert!(insert < arrays && arrays < conflict, "{sql}");
        assert!(!sql.contains("ORDER BY") && !sql.contains(ORD), "{sql}");
        assert_eq!(plan.small_types, vec![Type::INT8_ARRAY, Type::INT8_ARRAY, Type::TEXT_ARRAY]);
    }

    #[test]
    fn filtered_statement_anti_joins_before_on_conflict() {
        // A text key: the server sorts, and keeps the first offered row.
        let shape = KeyShape::default();
        let sql = insert::arrays_filtered(&NULLABLE_MODEL, false, &shape);
        let distinct = at(&sql, r#"SELECT DISTINCT ON (u."label", u."owner") "#);
        let arrays = at(&sql, "unnest($1::bigint[], $2::integer[], $3::text[], $4::bytea[])");
        let stored = at(&sql, r#"WHERE NOT EXISTS (SELECT 1 FROM "tag" AS "t" WHERE "#);
        let order = at(&sql, r#"ORDER BY u."label", u."owner", u."__bulk_ord""#);
        let conflict = at(&sql, r#"ON CONFLICT ("label", "owner") DO NOTHING"#);
        assert!(distinct < arrays && arrays < stored && stored < order && order < conflict, "{sql}");
        assert!(sql.ends_with("DO NOTHING"), "{sql}");
        // The `ON CONFLICT` form's guard, not the plain form's rules guard.
        let plain = Plan::new(&NULLABLE_MODEL).small_insert;
        let guard = |s: &str| s.split(" FROM ").next().unwrap().to_owned();
        assert_eq!(guard(&sql), guard(&plain), "{sql}");
        assert!(!sql.contains("pg_rewrite"), "{sql}");

        // An integer key the client orders: no positions, no DISTINCT ON.
        let sql = insert::arrays_filtered(&MODEL, true, &shape);
        let arrays =
            at(&sql, r#"unnest($1::bigint[], $2::bigint[], $3::text[]) AS u("tweet", "re""tweeter", "author")"#);
        let stored = at(&sql, "WHERE NOT EXISTS (");
        let order = at(&sql, r#"ORDER BY u."tweet", u."re""tweeter" ON CONFLICT"#);
        assert!(arrays < stored && stored < order, "{sql}");
        assert!(!sql.contains("DISTINCT") && !sql.contains(ORD), "{sql}");
    }

    /// Array columns (one nullable) beside an integer key and a text column.
    static ARRAY_COLUMNS: [Column; 4] = [
        ColumnSpec::of("key", PgType::Int8).build(),
        ColumnSpec::of("tags", PgType::Array(&PgType::Text)).build(),
        ColumnSpec::of("note", PgType::Text).build(),
        ColumnSpec::of("scores", PgType::Array(&PgType::Int4)).nullable().build(),
    ];
    static ARRAY_MODEL: Model = ModelSpec::of("Tagged", "tagged", &ARRAY_COLUMNS, &[0]).build();
    static TEXT_KEYED_ARRAY_MODEL: Model = ModelSpec::of("Tagged", "tagged", &ARRAY_COLUMNS, &[2]).build();

    #[test]
    fn array_columns_travel_as_lengths_elements_and_rows_and_are_rebuilt_per_row() {
        let columns_only = Arrays { positions: false, mask: false };
        assert_eq!(
            array_types(&ARRAY_MODEL, columns_only),
            [
                Type::INT8_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT4_ARRAY,
                Type::INT4_ARRAY,
                Type::INT4_ARRAY
            ]
        );
        let source = arrays(&ARRAY_MODEL, "u", Arrays { positions: true, mask: true }, &KeyShape::default());
        assert_eq!(
            source,
            concat!(
                r#"(SELECT u."__bulk_ord", u."key", "#,
                r#"CASE WHEN u."tags" IS NOT NULL THEN COALESCE("__bulk_e1"."v", ARRAY[]::text[]) END AS "tags", "#,
                r#"u."note", "#,
                r#"CASE WHEN u."scores" IS NOT NULL THEN COALESCE("__bulk_e3"."v", ARRAY[]::integer[]) END AS "scores", "#,
                r#"u."__bulk_done" "#,
                r#"FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $6::text[], $7::integer[], $10::boolean[]) "#,
                r#"WITH ORDINALITY AS u("__bulk_ord", "key", "tags", "note", "scores", "__bulk_done", "__bulk_row") "#,
                r#"FULL JOIN (SELECT "x"."r", array_agg("x"."v" ORDER BY "x"."i") AS "v" "#,
                r#"FROM (SELECT unnest($4::text[]) AS "v", unnest($5::integer[]) AS "r", "#,
                r#"generate_series(1, cardinality($4::text[])) AS "i") AS "x" GROUP BY "x"."r") AS "__bulk_e1" "#,
                r#"ON "__bulk_e1"."r" = u."__bulk_row" "#,
                r#"FULL JOIN (SELECT "x"."r", array_agg("x"."v" ORDER BY "x"."i") AS "v" "#,
                r#"FROM (SELECT unnest($8::integer[]) AS "v", unnest($9::integer[]) AS "r", "#,
                r#"generate_series(1, cardinality($8::integer[])) AS "i") AS "x" GROUP BY "x"."r") AS "__bulk_e3" "#,
                r#"ON "__bulk_e3"."r" = u."__bulk_row" "#,
                r#"ORDER BY u."__bulk_row") AS u"#,
            )
        );
    }

    #[test]
    fn array_columns_reach_both_forms_of_the_short_path() {
        use crate::sql::KeyAs;
        let columns_only = Arrays { positions: false, mask: false };
        // A client-ordered key: no positions, the rows kept in the order sent.
        let plan = Plan::new(&ARRAY_MODEL);
        assert!(plan.client_ordered);
        assert_eq!(plan.small_types, array_types(&ARRAY_MODEL, columns_only));
        at(
            &plan.small_insert,
            &format!(
                r#"INSERT INTO "tagged" ("key", "tags", "note", "scores") SELECT u."key", u."tags", u."note", CASE WHEN {} THEN u."scores" END FROM (SELECT u."key", CASE "#,
                crate::sql::fragments::on_conflict_guard(&ARRAY_MODEL, Compared::As(&KeyShape::default()))
            ),
        );
        at(
            &plan.small_insert_plain,
            r#"INSERT INTO "tagged" ("key", "tags", "note", "scores") SELECT u."key", u."tags", u."note", CASE WHEN 1 / "#,
        );
        at(&plan.small_insert_plain, r#"THEN u."scores" END FROM (SELECT u."key", CASE "#);
        at(
            &plan.small_insert,
            r#"FROM unnest($1::bigint[], $2::integer[], $5::text[], $6::integer[]) WITH ORDINALITY"#,
        );
        let guarded = format!(
            r#"FROM unnest($1::bigint[], $2::integer[], $5::text[], $6::integer[], {}) WITH ORDINALITY"#,
            rules_guard(&ARRAY_MODEL)
        );
        at(&plan.small_insert_plain, &guarded);
        for sql in [&plan.small_insert, &plan.small_insert_plain] {
            at(sql, r#"FROM (SELECT unnest($3::text[]) AS "v", unnest($4::integer[]) AS "r", "#);
            at(sql, r#"FROM (SELECT unnest($7::integer[]) AS "v", unnest($8::integer[]) AS "r", "#);
            assert!(!sql.contains("$9") && !sql.contains(ORD), "{sql}");
        }
        at(&plan.small_insert, r#"ORDER BY u."__bulk_row") AS u ON CONFLICT ("key") DO NOTHING"#);
        at(&plan.small_insert_plain, r#"ORDER BY u."__bulk_row") AS u WHERE NOT EXISTS"#);

        // A text key: positions first, the server sorts, the key read as the table's.
        let plan = Plan::new(&TEXT_KEYED_ARRAY_MODEL);
        assert!(!plan.client_ordered);
        assert_eq!(plan.small_types[0], Type::INT8_ARRAY);
        assert_eq!(plan.small_types[1..], array_types(&TEXT_KEYED_ARRAY_MODEL, columns_only));
        at(&plan.small_insert, r#"FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $6::text[], $7::integer[])"#);
        at(&plan.small_insert, r#"ORDER BY u."note", u."__bulk_ord" ON CONFLICT ("note") DO NOTHING"#);
        let keys = vec![Some(KeyAs {
            ty: Some(("ext".into(), "citext".into())),
            collation: None,
            typmod: None,
            domain: None,
        })];
        let shape = KeyShape { keys, ..KeyShape::default() };
        let plain = insert::arrays_plain(&TEXT_KEYED_ARRAY_MODEL, false, &shape);
        at(&plain, r#"CAST(u."note" AS "ext"."citext") AS "note", CASE WHEN u."scores" IS NOT NULL"#);
        at(&plain, r#"SELECT DISTINCT ON (u."note") u."key", u."tags", u."note", CASE WHEN 1 / "#);
        at(&plain, r#" THEN u."scores" END FROM (SELECT u."__bulk_ord", "#);
        for sql in [&plan.small_insert, &plan.small_insert_plain, &plain] {
            assert_eq!(strip_identifiers(sql).matches(['"', ';']).count(), 0, "{sql}");
        }
    }

    #[test]
    fn nullable_key_columns_match_null_to_null() {
        let plan = Plan::new(&NULLABLE_MODEL);
        let sql = plan.insert.as_str();
        // The key in declaration order (label, owner), not column order.
        at(sql, r#"SELECT DISTINCT ON ("label", "owner") "owner", "label", "note" FROM "#);
        at(sql, r#"ORDER BY "label", "owner", "__bulk_ord""#);
        at(sql, r#"ON CONFLICT ("label", "owner") DO NOTHING"#);
        at(sql, r#"INSERT INTO "tag" ("owner", "label", "note")"#);
        let eq = at(sql, r#""t"."label" = "s"."label" OR ("t"."label" IS NULL AND "s"."label" IS NULL)"#);
        assert!(eq > at(sql, "NOT EXISTS"), "{sql}");
        // The non-null key column is compared plainly.
        at(sql, r#""t"."owner" = "s"."owner""#);
        assert!(!sql.contains(r#""t"."owner" IS NULL"#), "{sql}");
    }

    #[test]
    fn scratch_table_is_temporary_unconstrained_and_emptied_on_commit() {
        let plan = Plan::new(&MODEL);
        assert!(plan.scratch.starts_with("__bulk_"), "{}", plan.scratch);
        assert!(
            plan.scratch.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{}",
            plan.scratch
        );
        let create = plan.create_scratch.as_str();
        assert!(
            create.starts_with(&format!(r#"CREATE TEMPORARY TABLE IF NOT EXISTS "{}" ("#, plan.scratch)),
            "{create}"
        );
        assert!(create.ends_with("ON COMMIT DELETE ROWS"), "{create}");
        // The ordinal, then the columns with their wire types (not the DDL override).
        let ord = at(create, r#""__bulk_ord" bigint"#);
        let tweet = at(create, r#""tweet" bigint"#);
        let retweeter = at(create, r#""re""tweeter" bigint"#);
        let author = at(create, r#""author" text"#);
        assert!(ord < tweet && tweet < retweeter && retweeter < author, "{create}");
        for word in ["NOT NULL", "PRIMARY KEY", "UNIQUE", "REFERENCES", "varchar"] {
            assert!(!create.contains(word), "{word} in {create}");
        }
        assert_eq!(plan.clear, format!(r#"DELETE FROM pg_temp."{}""#, plan.scratch));
    }

    #[test]
    fn copy_lists_the_ordinal_then_every_column() {
        let plan = Plan::new(&MODEL);
        assert_eq!(
            plan.copy,
            format!(
                r#"COPY pg_temp."{}" ("__bulk_ord", "tweet", "re""tweeter", "author") FROM STDIN (FORMAT binary)"#,
                plan.scratch
            )
        );
        assert_eq!(plan.copy_types, [Type::INT8, Type::INT8, Type::INT8, Type::TEXT]);
        let plan = Plan::new(&NULLABLE_MODEL);
        assert_eq!(plan.copy_types, [Type::INT8, Type::INT4, Type::TEXT, Type::BYTEA]);
        assert_eq!(plan.target_regclass, r#""tag""#);
        assert_eq!(Plan::new(&MODEL).target_regclass, r#""my schema"."re""tweet""#);
    }

    #[test]
    fn scratch_names_differ_per_model_and_are_stable() {
        assert_eq!(Plan::new(&MODEL).scratch, Plan::new(&MODEL).scratch);
        assert_ne!(Plan::new(&MODEL).scratch, Plan::new(&NULLABLE_MODEL).scratch);
        // Same table and column names, one column type changed: another scratch table.
        static RETYPED: [Column; 3] = [
            ColumnSpec::of("tweet", PgType::Int4).build(),
            ColumnSpec::of("retweeter", PgType::Int8).rename(r#"re"tweeter"#).index().build(),
            ColumnSpec::of("author", PgType::Text).nullable().sql_type("varchar(40)").build(),
        ];
        static RETYPED_MODEL: Model =
            ModelSpec::of("Retweet", r#"re"tweet"#, &RETYPED, &[0, 1]).schema("my schema").id("id").build();
        assert_ne!(Plan::new(&MODEL).scratch, Plan::new(&RETYPED_MODEL).scratch);
        // Same columns, another key: the schema check must run for it too.
        static REKEYED_MODEL: Model =
            ModelSpec::of("Retweet", r#"re"tweet"#, &COLUMNS, &[0]).schema("my schema").id("id").build();
        assert_ne!(Plan::new(&MODEL).scratch, Plan::new(&REKEYED_MODEL).scratch);
        // Same columns and key, one field now an Option.
        static NULLABLE_TWEET: [Column; 3] = [
            ColumnSpec::of("tweet", PgType::Int8).build(),
            ColumnSpec::of("retweeter", PgType::Int8).rename(r#"re"tweeter"#).nullable().index().build(),
            ColumnSpec::of("author", PgType::Text).nullable().sql_type("varchar(40)").build(),
        ];
        static NULLABLE_TWEET_MODEL: Model = ModelSpec::of("Retweet", r#"re"tweet"#, &NULLABLE_TWEET, &[0, 1])
            .schema("my schema")
            .id("id")
            .nulls_not_distinct()
            .build();
        assert_ne!(Plan::new(&MODEL).scratch, Plan::new(&NULLABLE_TWEET_MODEL).scratch);
    }

    #[test]
    fn hostile_names_stay_inside_their_quotes() {
        let plan = Plan::new(&EVIL_MODEL);
        let table = r#""s""; DROP SCHEMA x; --"."t""; DROP TABLE victim; --""#;
        let key = r#""k""; DROP TABLE victim; --""#;
        at(&plan.insert, &format!("INSERT INTO {table} ({key}, \"select\") SELECT "));
        at(&plan.insert, &format!("NOT EXISTS (SELECT 1 FROM {table} AS \"t\""));
        at(&plan.insert, &format!("ON CONFLICT ({key}) DO NOTHING"));
        at(&plan.copy, &format!("(\"__bulk_ord\", {key}, \"select\")"));
        at(&plan.create_scratch, &format!("{key} bigint"));
        assert_eq!(plan.target_regclass, table);
        at(&plan.small_insert, &format!("INSERT INTO {table} ({key}, \"select\") SELECT "));
        at(&plan.insert_plain, &format!("INSERT INTO {table} ({key}, \"select\") SELECT "));
        at(&plan.insert_plain, &format!("NOT EXISTS (SELECT 1 FROM {table} AS \"t\""));
        at(&plan.small_insert_plain, &format!("NOT EXISTS (SELECT 1 FROM {table} AS \"t\""));
        let statements = [
            &plan.insert,
            &plan.insert_plain,
            &plan.copy,
            &plan.create_scratch,
            &plan.small_insert,
            &plan.small_insert_plain,
        ];
        for sql in statements {
            // Remove every properly quoted identifier: no quote, and no `;`, may remain.
            assert_eq!(strip_identifiers(sql).matches(['"', ';']).count(), 0, "{sql}");
        }
        for sql in EVIL_MODEL.migration_statements() {
            // The indexes' `DO` blocks end their PL/pgSQL statements in `;`
            // at the end of a line; nothing else may be outside the quotes.
            let stripped = strip_identifiers(&sql);
            assert_eq!(stripped.matches('"').count(), 0, "{sql}");
            assert_eq!(stripped.matches(';').count(), stripped.matches(";\n").count(), "{sql}");
        }
    }

    /// `sql` with every `"..."` identifier (with `""` escapes) and every
    /// `E'...'` literal removed; panics on an unterminated one.
    fn strip_identifiers(sql: &str) -> String {
        let mut out = String::new();
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c == 'E' && chars.peek() == Some(&'\'') {
                // An escape string literal: '' and backslash escapes.
                chars.next();
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                        }
                        Some('\\') => {
                            chars.next();
                        }
                        Some('\'') => break,
                        Some(_) => {}
                        None => panic!("unterminated literal in {sql}"),
                    }
                }
                continue;
            }
            if c != '"' {
                out.push(c);
                continue;
            }
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => panic!("unterminated identifier in {sql}"),
                }
            }
        }
        out
    }

    #[test]
    fn migration_creates_schema_table_unique_key_and_indexes() {
        let ddl = MODEL.migration_statements();
        assert_eq!(ddl.len(), 4, "{ddl:#?}");
        assert_eq!(ddl[0], r#"CREATE SCHEMA IF NOT EXISTS "my schema""#);
        let table = &ddl[1];
        assert!(table.starts_with(r#"CREATE TABLE IF NOT EXISTS "my schema"."re""tweet" ("#), "{table}");
        at(table, r#""id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY"#);
        at(table, r#""tweet" bigint NOT NULL"#);
        at(table, r#""re""tweeter" bigint NOT NULL"#);
        // The sql_type override, and nullable: no NOT NULL after it.
        let author = at(table, r#""author" varchar(40)"#);
        assert!(!table[author..].contains("NOT NULL"), "{table}");
        // The indexes: each created only when the table has none that does
        // its job, under a name of its own (quoted once more in EXECUTE's string).
        let unique = &ddl[2];
        assert!(unique.starts_with("DO $bulk$"), "{unique}");
        at(unique, r#"E'CREATE UNIQUE INDEX "#);
        at(unique, r#" ON "my schema"."re""tweet" ("tweet", "re""tweeter")'"#);
        at(unique, "i.indisunique AND i.indimmediate AND i.indexprs IS NULL AND i.indnkeyatts = 2");
        at(unique, "c.coll = a.attcollation");
        assert!(!unique.contains("NULLS NOT DISTINCT") && !unique.contains("indnullsnotdistinct"), "{unique}");
        let index = &ddl[3];
        assert!(index.starts_with("DO $bulk$"), "{index}");
        at(index, r#"E'CREATE INDEX "#);
        at(index, r#" ON "my schema"."re""tweet" ("re""tweeter")'"#);
        let script = MODEL.migration_sql();
        assert_eq!(script.matches("$bulk$;\n").count(), 2, "{script}");
        assert!(script.starts_with(&format!("{};\n{};\n", ddl[0], ddl[1])), "{script}");
    }

    #[test]
    fn migration_without_id_or_schema_and_with_nulls_not_distinct() {
        let ddl = NULLABLE_MODEL.migration_statements();
        assert_eq!(ddl.len(), 2, "{ddl:#?}");
        let table = &ddl[0];
        assert!(table.starts_with(r#"CREATE TABLE IF NOT EXISTS "tag" ("#), "{table}");
        assert!(!table.contains("PRIMARY KEY") && !table.contains("IDENTITY"), "{table}");
        at(table, r#""owner" integer NOT NULL"#);
        at(table, r#""note" bytea NOT NULL"#);
        let label = at(table, r#""label" text"#);
        assert!(!table[label..].starts_with(r#""label" text NOT NULL"#), "{table}");
        let unique = &ddl[1];
        assert!(unique.starts_with("DO $bulk$"), "{unique}");
        at(unique, r#"ON "tag" ("label", "owner") NULLS NOT DISTINCT'"#);
        at(unique, "AND i.indnullsnotdistinct");

        // A custom id name.
        let ddl = EVIL_MODEL.migration_statements();
        at(&ddl[1], r#""order" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY"#);
    }

    #[test]
    fn distributed_migration_keys_on_id_and_column_then_distributes_when_citus_is_there() {
        static DISTRIBUTED: Model = ModelSpec::of("Retweet", r#"re"tweet"#, &COLUMNS, &[0, 1])
            .schema("my schema")
            .id("id")
            .distribute_by(r#"re"tweeter"#)
            .build();
        let ddl = DISTRIBUTED.migration_statements();
        assert_eq!(ddl.len(), 6, "{ddl:#?}");
        // Last, the staging table: made only with Citus, on a hash-distributed
        // table, with its id from the target's sequence, co-located.
        let stage = &ddl[5];
        assert!(stage.starts_with("DO $bulk$") && stage.ends_with("$bulk$"), "{stage}");
        let citus = at(stage, "IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN");
        let hash = at(stage, "partmethod = 'h'");
        assert!(citus < hash, "{stage}");
        at(stage, r#"pg_catalog.pg_get_serial_sequence(E'"my schema"."re""tweet"', E'id')"#);
        let name = DISTRIBUTED.citus_staging_table();
        assert!(name.starts_with("__bulk_stage_") && name.len() < 64, "{name}");
        at(stage, &format!(r#"E'"my schema"."{name}"'"#));
        at(stage, r#"ALTER TABLE %s ALTER COLUMN %I SET DEFAULT pg_catalog.nextval(%L::pg_catalog.regclass)'"#);
        at(stage, r#"colocate_with => E'"my schema"."re""tweet"'"#);
        // The insert from it names the id and orders by the key.
        let insert = &Plan::new(&DISTRIBUTED).insert_staged;
        at(
            insert,
            r#"INSERT INTO "my schema"."re""tweet" ("id", "tweet", "re""tweeter", "author") SELECT DISTINCT ON"#,
        );
        at(insert, r#"ORDER BY "s"."tweet", "s"."re""tweeter", "s"."__bulk_ord" ON CONFLICT"#);
        assert!(!insert.contains("NOT EXISTS"), "{insert}");
        // Its plain form: the anti-join on the key, no ON CONFLICT, and the
        // guard in a statement of its own.
        let plan = Plan::new(&DISTRIBUTED);
        for (plain, distinct) in [(&plan.insert_staged_plain, true), (&plan.insert_staged_plain_distinct_keys, false)] {
            let from = at(plain, r#"FROM "my schema"."__bulk_stage_"#);
            let anti = at(
                plain,
                r#"WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "t"."tweet" = "s"."tweet" AND "t"."re""tweeter" = "s"."re""tweeter")"#,
            );
            let order = at(plain, r#"ORDER BY "s"."tweet", "s"."re""tweeter""#);
            assert!(from < anti && anti < order, "{plain}");
            assert_eq!(plain.contains("DISTINCT ON"), distinct, "{plain}");
            assert!(!plain.contains("ON CONFLICT") && !plain.contains("pg_index"), "{plain}");
        }
        assert!(!plan.insert_staged_distinct_keys.contains("DISTINCT ON"));
        // Its filtered form (after a row the table refused): both, the
        // anti-join before ON CONFLICT, offered order within a key.
        for (filtered, distinct) in
            [(&plan.insert_staged_filtered, true), (&plan.insert_staged_filtered_distinct_keys, false)]
        {
            let anti = at(filtered, r#"WHERE NOT EXISTS (SELECT 1 FROM "my schema"."re""tweet" AS "t" WHERE "#);
            let order = at(filtered, r#"ORDER BY "s"."tweet", "s"."re""tweeter", "s"."__bulk_ord" ON CONFLICT"#);
            assert!(anti < order, "{filtered}");
            assert_eq!(filtered.contains("DISTINCT ON"), distinct, "{filtered}");
            assert!(filtered.ends_with(r#"ON CONFLICT ("tweet", "re""tweeter") DO NOTHING"#), "{filtered}");
        }
        // Keys of other bytes may be one key to the table: the first
        // offered goes in first.
        at(
            &plan.insert_staged_distinct_keys,
            r#"ORDER BY "s"."tweet", "s"."re""tweeter", "s"."__bulk_ord" ON CONFLICT"#,
        );
        assert_eq!(
            plan.staged_guard,
            format!("SELECT {}", fragments::key_index_guard(&DISTRIBUTED, Compared::Unchecked))
        );
        let table = &ddl[1];
        at(table, r#""id" bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY"#);
        at(table, r#"PRIMARY KEY ("id", "re""tweeter")"#);
        assert_eq!(table.matches("PRIMARY KEY").count(), 1, "{table}");
        let citus = &ddl[4];
        assert!(citus.starts_with("DO $bulk$") && citus.ends_with("$bulk$"), "{citus}");
        // The extension is checked before `pg_dist_partition` is named, in an
        // outer `IF`, so that plain PostgreSQL never plans the inner one.
        let extension = at(citus, "IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN");
        let partition = at(citus, r#"IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition"#);
        assert!(extension < partition, "{citus}");
        at(citus, r#"logicalrelid = pg_catalog.to_regclass(E'"my schema"."re""tweet"')"#);
        // The column by its name as is: Citus does not parse identifiers there.
        at(citus, r#"PERFORM pg_catalog.create_distributed_table(E'"my schema"."re""tweet"', E're"tweeter');"#);
        assert_eq!(DISTRIBUTED.citus_table(), CitusTable::Distributed { column: r#"re"tweeter"# });
        assert!(DISTRIBUTED.migration_sql().ends_with("$bulk$;\n"));
    }

    #[test]
    fn reference_migration_keeps_the_id_primary_key_and_a_quote_proof_dollar_tag() {
        static TRICKY_COLUMNS: [Column; 1] = [ColumnSpec::of("key", PgType::Int8).build()];
        static REFERENCE: Model =
            ModelSpec::of("Ref", r#"it's $bulk$ \ here"#, &TRICKY_COLUMNS, &[0]).id("id").reference_table().build();
        let ddl = REFERENCE.migration_statements();
        assert_eq!(ddl.len(), 3, "{ddl:#?}");
        at(&ddl[0], r#""id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY"#);
        let citus = &ddl[2];
        // The tag grows until the body does not contain it.
        assert!(citus.starts_with("DO $bulk_$") && citus.ends_with("$bulk_$"), "{citus}");
        at(citus, r#"PERFORM pg_catalog.create_reference_table(E'"it''s $bulk$ \\ here"');"#);
        assert_eq!(REFERENCE.citus_table(), CitusTable::Reference);
        assert_eq!(MODEL.citus_table(), CitusTable::None);
        assert!(!MODEL.migration_sql().contains("pg_catalog.create_"));
    }

    static FIRST_COLUMNS: [Column; 3] = [
        ColumnSpec::of("tweet", PgType::Int8).build(),
        ColumnSpec::of("retweeter", PgType::Int8).build(),
        ColumnSpec::of("body", PgType::Text).build(),
    ];
    static FIRST_MODEL: Model = ModelSpec::of("Rt", "rt", &FIRST_COLUMNS, &[0, 1]).build();

    /// A new connection's first call returns every model column, in the
    /// model's order, from both forms; a model with a nullable column or a
    /// text key has no such call.
    #[test]
    fn the_first_call_returns_every_column_in_both_forms() {
        let plan = Plan::new(&FIRST_MODEL);
        let returning = r#" RETURNING "tweet", "retweeter", "body""#;
        let on_conflict = plan.first_insert.as_deref().expect("eligible");
        assert_eq!(on_conflict, format!("{}{returning}", plan.small_insert));
        assert!(on_conflict.contains("ON CONFLICT"), "{on_conflict}");
        let plain = plan.first_insert_plain.as_deref().expect("eligible");
        assert_eq!(plain, format!("{}{returning}", plan.small_insert_plain));
        assert!(plain.contains(&key_index_guard(&FIRST_MODEL, Compared::Unchecked)), "{plain}");
        for other in [Plan::new(&MODEL), Plan::new(&NULLABLE_MODEL)] {
            assert!(other.first_insert.is_none() && other.first_insert_plain.is_none());
        }
    }
}
