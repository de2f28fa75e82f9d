//! The SQL of the protocol, built once per model and cached in its [`Model`].
//!
//! Every identifier goes through sea-query's quoting (or [`quote_ident`] for
//! `COPY`, which sea-query does not build); no value is ever part of the text.

use sea_query::{
    Alias, ColumnDef, ColumnType, Cond, Expr, ExprTrait, OnConflict, Order, PostgresQueryBuilder, Query,
    SelectStatement, Table, TableRef,
};
use tokio_postgres::types::Type;

use crate::model::{Model, fnv1a, quote_ident};

/// Name of the scratch table's ordinal column: the position of the row in the
/// batch, so that the first offered row of a key wins deterministically.
pub(crate) const ORD: &str = "__bulk_ord";

/// The SQL text and wire types of one model's protocol.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Name of the session-local scratch table (only `[a-z0-9_]`).
    pub scratch: String,
    /// `CREATE TEMP TABLE IF NOT EXISTS ... ON COMMIT DELETE ROWS`.
    pub create_scratch: String,
    /// `COPY pg_temp.scratch (...) FROM STDIN (FORMAT binary)`.
    pub copy: String,
    /// Wire types of the COPY columns: the ordinal, then the model's columns.
    pub copy_types: Vec<Type>,
    /// The anti-join insert.
    pub insert: String,
    /// Empties the scratch table (used inside a caller's transaction, where
    /// `ON COMMIT DELETE ROWS` would only act at the caller's commit).
    pub clear: String,
    /// The target's qualified name, quoted, as a text value for `to_regclass($1)`.
    pub target_regclass: String,
}

impl Plan {
    pub(crate) fn new(model: &Model) -> Plan {
        let scratch = scratch_name(model);
        let scratch_ref: TableRef = (Alias::new("pg_temp"), Alias::new(scratch.as_str())).into();

        let mut create = Table::create();
        create.table(Alias::new(scratch.as_str())).temporary().if_not_exists();
        create.col(ColumnDef::new_with_type(Alias::new(ORD), ColumnType::BigInteger));
        for c in model.columns() {
            create.col(ColumnDef::new_with_type(Alias::new(c.name()), ColumnType::custom(c.pg_type().sql_name())));
        }
        create.extra("ON COMMIT DELETE ROWS");
        let create_scratch = create.to_string(PostgresQueryBuilder);

        let mut copy_cols = vec![quote_ident(ORD)];
        copy_cols.extend(model.columns().iter().map(|c| quote_ident(c.name())));
        let copy =
            format!("COPY pg_temp.{} ({}) FROM STDIN (FORMAT binary)", quote_ident(&scratch), copy_cols.join(", "));
        let mut copy_types = vec![Type::INT8];
        copy_types.extend(model.columns().iter().map(|c| c.pg_type().wire_type()));

        let insert = insert_sql(model, scratch_ref.clone());
        let clear = Query::delete().from_table(scratch_ref).to_string(PostgresQueryBuilder);

        Plan { scratch, create_scratch, copy, copy_types, insert, clear, target_regclass: model.qualified_name() }
    }
}

/// `__bulk_` and a hash of everything the scratch table's shape depends on, so
/// two models (or two versions of one model) never share a scratch table.
fn scratch_name(model: &Model) -> String {
    let mut parts = vec![model.schema().unwrap_or(""), model.table()];
    for c in model.columns() {
        parts.push(c.name());
        parts.push(c.pg_type().sql_name());
    }
    format!("__bulk_{:016x}", fnv1a(&parts))
}

/// ```sql
/// INSERT INTO target (cols)
/// SELECT s.cols FROM (
///     SELECT DISTINCT ON (key) cols FROM pg_temp.scratch ORDER BY key, __bulk_ord
/// ) AS s
/// WHERE NOT EXISTS (SELECT 1 FROM target AS t WHERE t.key = s.key)
/// ORDER BY s.key
/// ON CONFLICT (key) DO NOTHING
/// ```
fn insert_sql(model: &Model, scratch_ref: TableRef) -> String {
    let cols: Vec<Alias> = model.columns().iter().map(|c| Alias::new(c.name())).collect();
    let key: Vec<Alias> = model.unique_key().map(|c| Alias::new(c.name())).collect();
    let s = Alias::new("s");
    let t = Alias::new("t");

    let mut first_per_key = Query::select();
    first_per_key.columns(cols.clone()).from(scratch_ref).distinct_on(key.clone());
    for k in &key {
        first_per_key.order_by(k.clone(), Order::Asc);
    }
    first_per_key.order_by(Alias::new(ORD), Order::Asc);

    let mut stored = Query::select();
    stored.expr(Expr::cust("1")).from_as(model.table_ref(), t.clone());
    let mut matches = Cond::all();
    for c in model.unique_key() {
        let k = Alias::new(c.name());
        let equal = Expr::col((t.clone(), k.clone())).equals((s.clone(), k.clone()));
        matches = if c.nullable() {
            matches.add(equal.or(Expr::col((t.clone(), k.clone())).is_null().and(Expr::col((s.clone(), k)).is_null())))
        } else {
            matches.add(equal)
        };
    }
    stored.cond_where(matches);

    let mut new_rows: SelectStatement = Query::select();
    new_rows
        .columns(cols.iter().map(|c| (s.clone(), c.clone())))
        .from_subquery(first_per_key, s.clone())
        .and_where(Expr::not_exists(stored));
    for k in &key {
        new_rows.order_by((s.clone(), k.clone()), Order::Asc);
    }

    Query::insert()
        .into_table(model.table_ref())
        .columns(cols)
        .select_from(new_rows)
        .expect("the select lists exactly the inserted columns")
        .on_conflict(OnConflict::columns(key).do_nothing().to_owned())
        .to_string(PostgresQueryBuilder)
}
