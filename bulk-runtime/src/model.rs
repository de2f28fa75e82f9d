//! What the derive knows about a model: table, columns, unique key.
//!
//! The derive describes each struct by name in a [`ModelSpec`] of
//! [`ColumnSpec`]s, built into a [`Model`]; the runtime turns that into SQL.

use std::any::Any;
use std::fmt::Write as _;
use std::sync::OnceLock;

use sea_query::{Alias, ColumnDef, ColumnType, Index, PostgresQueryBuilder, Table, TableCreateStatement, TableRef};

use crate::contention::Contention;
use crate::types::PgType;

/// What the derive knows about one stored field, by name: the input of
/// [`ColumnSpec::build`]. Reached only through `__private`, for the derive's
/// generated code.
#[derive(Debug, Clone, Copy)]
pub struct ColumnSpec {
    /// The Rust field name.
    pub field: &'static str,
    /// The column name (`#[bulk(rename = "...")]`, else the field name).
    pub name: &'static str,
    /// The PostgreSQL type of the field's Rust type.
    pub pg_type: PgType,
    /// Whether the field is an `Option`.
    pub nullable: bool,
    /// The DDL type from `#[bulk(sql_type = "...")]`.
    pub sql_type: Option<&'static str>,
    /// Whether `#[bulk(index)]` is set.
    pub index: bool,
    /// The labels of a [`BulkType`](crate::BulkType) enum's type (through
    /// an `Option` or a newtype too); empty for any other type.
    pub labels: &'static [&'static str],
}

impl ColumnSpec {
    /// The column.
    pub const fn build(self) -> Column {
        let ColumnSpec { field, name, pg_type, nullable, sql_type, index, labels } = self;
        Column { field, name, pg_type, nullable, sql_type, index, labels }
    }
}

/// What the derive knows about a model struct, by name: the input of
/// [`ModelSpec::build`]. Reached only through `__private`, for the derive's
/// generated code.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// The Rust struct name.
    pub struct_name: &'static str,
    /// `#[bulk(schema = "...")]`.
    pub schema: Option<&'static str>,
    /// The table name.
    pub table: &'static str,
    /// The surrogate identity key's column, `None` for `id = false`.
    pub id: Option<&'static str>,
    /// `#[bulk(nulls_not_distinct)]`.
    pub nulls_not_distinct: bool,
    /// The stored fields, in field order.
    pub columns: &'static [Column],
    /// The unique key: indices into `columns`, in `unique(...)` order.
    pub unique: &'static [usize],
    /// `#[bulk(distribute_by(field))]` or `#[bulk(reference_table)]`.
    pub citus: CitusTable,
}

impl ModelSpec {
    /// The model.
    pub const fn build(self) -> Model {
        let ModelSpec { struct_name, schema, table, id, nulls_not_distinct, columns, unique, citus } = self;
        Model {
            struct_name,
            schema,
            table,
            id,
            nulls_not_distinct,
            columns,
            unique,
            citus,
            plan: OnceLock::new(),
            contention: Contention::new(),
        }
    }
}

/// Short spellings for the unit tests' fixtures, one line per column or
/// model; every flag is named (the derive writes out every field).
#[cfg(test)]
impl ColumnSpec {
    /// A NOT NULL, unindexed column named as its field, its DDL type `pg_type`'s.
    pub(crate) const fn of(field: &'static str, pg_type: PgType) -> Self {
        ColumnSpec { field, name: field, pg_type, nullable: false, sql_type: None, index: false, labels: &[] }
    }

    /// Another column name, as `#[bulk(rename = "...")]`.
    pub(crate) const fn rename(self, name: &'static str) -> Self {
        ColumnSpec { name, ..self }
    }

    /// An `Option` field.
    pub(crate) const fn nullable(self) -> Self {
        ColumnSpec { nullable: true, ..self }
    }

    /// `#[bulk(sql_type = "...")]`.
    pub(crate) const fn sql_type(self, sql_type: &'static str) -> Self {
        ColumnSpec { sql_type: Some(sql_type), ..self }
    }

    /// `#[bulk(index)]`.
    pub(crate) const fn index(self) -> Self {
        ColumnSpec { index: true, ..self }
    }
}

#[cfg(test)]
impl ModelSpec {
    /// `struct_name` stored in `table` on the `search_path`, keyed on
    /// `unique`, without an id column, NULLs distinct.
    pub(crate) const fn of(
        struct_name: &'static str,
        table: &'static str,
        columns: &'static [Column],
        unique: &'static [usize],
    ) -> Self {
        ModelSpec {
            struct_name,
            schema: None,
            table,
            id: None,
            nulls_not_distinct: false,
            columns,
            unique,
            citus: CitusTable::None,
        }
    }

    /// `#[bulk(distribute_by(field))]`, naming the field's column.
    pub(crate) const fn distribute_by(self, column: &'static str) -> Self {
        ModelSpec { citus: CitusTable::Distributed { column }, ..self }
    }

    /// `#[bulk(reference_table)]`.
    pub(crate) const fn reference_table(self) -> Self {
        ModelSpec { citus: CitusTable::Reference, ..self }
    }

    /// `#[bulk(schema = "...")]`.
    pub(crate) const fn schema(self, schema: &'static str) -> Self {
        ModelSpec { schema: Some(schema), ..self }
    }

    /// `#[bulk(id = "...")]`.
    pub(crate) const fn id(self, id: &'static str) -> Self {
        ModelSpec { id: Some(id), ..self }
    }

    /// `#[bulk(nulls_not_distinct)]`.
    pub(crate) const fn nulls_not_distinct(self) -> Self {
        ModelSpec { nulls_not_distinct: true, ..self }
    }
}

/// How a model's table is placed on a Citus cluster: what
/// [`Model::citus_table`] returns, declared with `#[bulk(distribute_by(field))]`
/// or `#[bulk(reference_table)]`.
///
/// It shapes only the DDL of [`Model::migration_sql`]; the calls find out how
/// the live table is placed at the schema check, whatever the model says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CitusTable {
    /// Neither attribute: the DDL creates a plain table (on a Citus
    /// coordinator it stays a local table of the coordinator).
    None,
    /// `#[bulk(distribute_by(field))]`: on Citus the migration makes the table
    /// hash-distributed by `column` (`create_distributed_table`). The column
    /// is part of the unique key, and of the primary key with the surrogate id.
    Distributed {
        /// The distribution column's name in the table.
        column: &'static str,
    },
    /// `#[bulk(reference_table)]`: on Citus the migration makes the table a
    /// reference table, replicated to every node (`create_reference_table`).
    Reference,
}

/// One stored field of a model.
#[derive(Debug)]
pub struct Column {
    field: &'static str,
    name: &'static str,
    pg_type: PgType,
    nullable: bool,
    sql_type: Option<&'static str>,
    index: bool,
    labels: &'static [&'static str],
}

impl Column {
    /// The Rust field name.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The column name in the table.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The PostgreSQL type the field's Rust type maps to (used on the wire).
    pub fn pg_type(&self) -> PgType {
        self.pg_type
    }

    /// Whether the field is an `Option` (the column may hold NULL).
    pub fn nullable(&self) -> bool {
        self.nullable
    }

    /// The explicit DDL type from `#[bulk(sql_type = "...")]`, if any.
    pub fn sql_type(&self) -> Option<&'static str> {
        self.sql_type
    }

    /// Whether `#[bulk(index)]` asks for a plain index on the column.
    pub fn indexed(&self) -> bool {
        self.index
    }

    /// The labels of the field's enum type ([`BulkType`](crate::BulkType)),
    /// which the schema check finds in the column's type; empty for a field
    /// of another type.
    pub fn enum_labels(&self) -> &'static [&'static str] {
        self.labels
    }

    /// The type written in the table DDL.
    pub fn ddl_type(&self) -> &'static str {
        self.sql_type.unwrap_or(self.pg_type.sql_name())
    }
}

/// Everything the derive knows about a model struct.
///
/// Obtain it with [`BulkCreateNew::model`](crate::BulkCreateNew::model).
#[derive(Debug)]
pub struct Model {
    struct_name: &'static str,
    schema: Option<&'static str>,
    table: &'static str,
    id: Option<&'static str>,
    nulls_not_distinct: bool,
    columns: &'static [Column],
    unique: &'static [usize],
    citus: CitusTable,
    /// The runtime's SQL for the model, built on first use (`sql::plan`);
    /// this module does not know its type, so it depends on nothing above it.
    plan: OnceLock<Box<dyn Any + Send + Sync>>,
    /// How often the insert's plain form met a key another writer stored
    /// meanwhile (see [`contention`](crate::contention)).
    contention: Contention,
}

impl Model {
    /// The Rust struct name.
    pub fn struct_name(&self) -> &'static str {
        self.struct_name
    }

    /// The schema from `#[bulk(schema = "...")]`; `None` means the connection's `search_path`.
    pub fn schema(&self) -> Option<&'static str> {
        self.schema
    }

    /// The table name.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// The surrogate `bigint` identity primary key the DDL adds, if any.
    pub fn id_column(&self) -> Option<&'static str> {
        self.id
    }

    /// Whether NULLs in the unique key compare equal (`NULLS NOT DISTINCT`).
    pub fn nulls_not_distinct(&self) -> bool {
        self.nulls_not_distinct
    }

    /// The stored columns, in field order (skipped fields are absent).
    pub fn columns(&self) -> &'static [Column] {
        self.columns
    }

    /// The columns of the unique key, in declaration order.
    pub fn unique_key(&self) -> impl ExactSizeIterator<Item = &'static Column> + Clone {
        let columns = self.columns;
        self.unique.iter().map(move |&i| &columns[i])
    }

    /// How the migration places the table on a Citus cluster
    /// (`#[bulk(distribute_by(field))]`, `#[bulk(reference_table)]`).
    pub fn citus_table(&self) -> CitusTable {
        self.citus
    }

    /// The table name, schema-qualified when a schema is set, quoted for display.
    pub fn qualified_name(&self) -> String {
        self.in_schema(self.table)
    }

    /// `name`, quoted, qualified by the model's schema when it has one.
    fn in_schema(&self, name: &str) -> String {
        match self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(name)),
            None => quote_ident(name),
        }
    }

    pub(crate) fn table_ref(&self) -> TableRef {
        match self.schema {
            Some(s) => (Alias::new(s), Alias::new(self.table)).into(),
            None => Alias::new(self.table).into(),
        }
    }

    /// A hash of what the session-local scratch table and the Citus staging
    /// table hold for this model (its table, columns, types, nullability
    /// and key), so that a table of another layout gets another name.
    pub(crate) fn layout_hash(&self) -> u64 {
        // The first part names the tables' layout and grants, so a session
        // never reuses one made by another version of this crate.
        let mut parts = vec!["v2", self.schema.unwrap_or(""), self.table];
        for c in self.columns {
            parts.push(c.name());
            parts.push(c.pg_type().sql_name());
            parts.push(if c.nullable() { "null" } else { "not null" });
            parts.push(c.sql_type().unwrap_or(""));
        }
        parts.push(if self.nulls_not_distinct { "nulls not distinct" } else { "nulls distinct" });
        parts.extend(self.unique_key().map(|c| c.name()));
        fnv1a(&parts)
    }

    /// The name of the model's Citus staging table (only `[a-z0-9_]`:
    /// `__bulk_stage_` and a hash of the layout), in
    /// the target's schema; see [`Model::citus_staging_sql`].
    pub fn citus_staging_table(&self) -> String {
        format!("{STAGING_PREFIX}{:016x}", self.layout_hash())
    }

    /// [`Model::citus_staging_table`], qualified as the target is and quoted.
    pub(crate) fn staging_qualified_name(&self) -> String {
        self.in_schema(&self.citus_staging_table())
    }

    /// The staging table's columns, as `(name, type)`: the position, the
    /// surrogate id (when the model has one: filled from the target's
    /// sequence as the rows are copied, so that the insert from the staging
    /// table names every value and Citus runs it on the shards), then the
    /// model's columns with their wire types.
    pub(crate) fn staging_columns(&self) -> Vec<(&'static str, &'static str)> {
        let mut cols = vec![(STAGING_ORD, "bigint")];
        cols.extend(self.id.map(|id| (id, "bigint")));
        cols.extend(self.columns.iter().map(|c| (c.name(), c.pg_type().sql_name())));
        cols
    }

    /// A `DO` block that gives a hash-distributed table its staging table,
    /// co-located with it, where the large plain calls copy their rows on
    /// Citus: an unlogged table of the rows' positions and the model's
    /// columns ([`Model::citus_staging_table`], in the target's schema),
    /// distributed by the target's distribution column with
    /// `colocate_with`, so that the insert from it runs on each shard where
    /// its rows are. A model with a surrogate id gets the id column too,
    /// defaulting to the target's id sequence. The block does nothing
    /// without Citus, on a table that is not hash-distributed (or whose id
    /// column has no sequence), on one whose distribution column is not a
    /// model column of the model's type and the type's own collation (a
    /// `numeric` column of an `i64` field: Citus co-locates only tables
    /// whose distribution columns agree), or when the staging table
    /// exists; so it
    /// runs again harmlessly. [`Model::migration_sql`] includes it for a
    /// `distribute_by` model; a table distributed by hand gets it by
    /// running this after `create_distributed_table`.
    ///
    /// A call uses the staging table when it finds it co-located with the
    /// target, of these columns, open to the role (`SELECT`, `INSERT`,
    /// `DELETE`, and `USAGE` of the id sequence), and no other column of
    /// the target is left to a volatile default or to a
    /// `CURRENT_TIMESTAMP`-style keyword (Citus would run the insert through
    /// the coordinator, or leave the keyword to each worker; a stable
    /// default such as `now()` is fine); otherwise the
    /// session's temporary table. Rows
    /// a call copies there are deleted in the call's own transaction: no
    /// other session ever sees them.
    pub fn citus_staging_sql(&self) -> String {
        let table = quote_literal(&self.qualified_name());
        let stage = quote_literal(&self.staging_qualified_name());
        let cols: Vec<String> =
            self.staging_columns().into_iter().map(|(name, ty)| format!("{} {ty}", quote_ident(name))).collect();
        let create = format!("CREATE UNLOGGED TABLE {} ({})", self.staging_qualified_name(), cols.join(", "));
        // The id column defaults to the target's id sequence, found on the server.
        let (sequence, id_default) = match self.id {
            Some(id) => (
                format!("pg_catalog.pg_get_serial_sequence({table}, {})", quote_literal(id)),
                format!(
                    "\x20     EXECUTE pg_catalog.format('ALTER TABLE %s ALTER COLUMN %I SET DEFAULT \
                     pg_catalog.nextval(%L::pg_catalog.regclass)', {stage}, {}, seq);\n",
                    quote_literal(id)
                ),
            ),
            None => ("''".to_owned(), String::new()),
        };
        // The staging table's type of each column that may be the
        // distribution column: Citus co-locates only tables whose
        // distribution columns have one type and collation.
        let types: String = self
            .staging_columns()
            .into_iter()
            .map(|(name, ty)| format!(" WHEN {} THEN {}", quote_literal(name), quote_literal(ty)))
            .collect();
        let body = format!(
            "\nDECLARE\n\
             \x20 dist text;\n\
             \x20 seq text;\n\
             \x20 fits boolean;\n\
             BEGIN\n\
             \x20 IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN\n\
             \x20   SELECT pg_catalog.column_to_column_name(logicalrelid, partkey) INTO dist\n\
             \x20     FROM pg_catalog.pg_dist_partition\n\
             \x20    WHERE logicalrelid = pg_catalog.to_regclass({table}) AND partmethod = 'h';\n\
             \x20   SELECT a.atttypid = pg_catalog.to_regtype(CASE dist{types} END) AND a.attcollation = t.typcollation\n\
             \x20     INTO fits\n\
             \x20     FROM pg_catalog.pg_attribute AS a JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid\n\
             \x20    WHERE a.attrelid = pg_catalog.to_regclass({table}) AND a.attname = dist;\n\
             \x20   IF {id_present} THEN\n\
             \x20     seq := {sequence};\n\
             \x20   END IF;\n\
             \x20   IF dist IS NOT NULL AND fits AND seq IS NOT NULL AND pg_catalog.to_regclass({stage}) IS NULL THEN\n\
             \x20     EXECUTE {create};\n\
             {id_default}\
             \x20     PERFORM pg_catalog.create_distributed_table({stage}, dist, colocate_with => {table});\n\
             \x20   END IF;\n\
             \x20 END IF;\n\
             END\n",
            create = quote_literal(&create),
            // A table without the model's id column (the check accepts it)
            // has no sequence to name: `pg_get_serial_sequence` would fail.
            id_present = match self.id {
                Some(id) => format!(
                    "EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass({table}) \
                     AND attname = {} AND NOT attisdropped)",
                    quote_literal(id)
                ),
                None => "true".to_owned(),
            },
        );
        do_block(&body)
    }

    /// The value cached for the model by `init` on first use: the SQL
    /// plan of [`sql::plan`](crate::sql::plan), the only caller.
    pub(crate) fn cached<P: Any + Send + Sync>(&'static self, init: impl FnOnce() -> P) -> &'static P {
        let any = self.plan.get_or_init(|| Box::new(init()));
        any.downcast_ref().expect("a model caches one type of plan")
    }

    /// The contention counter of the model's inserts.
    pub(crate) fn contention(&self) -> &Contention {
        &self.contention
    }

    /// `CREATE TABLE IF NOT EXISTS` for the model: the columns, NOT NULL for
    /// non-`Option` fields, and the surrogate identity key unless disabled.
    /// The identity column is the primary key, or with `distribute_by` the
    /// primary key is `(id, <distribution column>)`: Citus refuses a primary
    /// key without the distribution column.
    ///
    /// The unique key and the indexes are separate statements
    /// ([`index_statements`](Self::index_statements)).
    fn create_table_statement(&self) -> TableCreateStatement {
        let mut table = Table::create();
        table.table(self.table_ref()).if_not_exists();
        if let Some(id) = self.id {
            let mut def = ColumnDef::new(Alias::new(id));
            def.big_integer().not_null().extra("GENERATED BY DEFAULT AS IDENTITY");
            if !matches!(self.citus, CitusTable::Distributed { .. }) {
                def.primary_key();
            }
            table.col(&mut def);
        }
        for c in self.columns {
            let mut def = ColumnDef::new_with_type(Alias::new(c.name), ColumnType::custom(c.ddl_type()));
            if !c.nullable {
                def.not_null();
            }
            table.col(&mut def);
        }
        if let (Some(id), CitusTable::Distributed { column }) = (self.id, self.citus) {
            table.primary_key(Index::create().col(Alias::new(id)).col(Alias::new(column)));
        }
        table.to_owned()
    }

    /// The unique index on the key (what `ON CONFLICT` needs), then one plain
    /// index per `#[bulk(index)]` column, each a `DO` block that creates the
    /// index only when the table has none that does its job yet, so that the
    /// script runs again, and on a table made by hand, without a second copy.
    ///
    /// Not `CREATE INDEX IF NOT EXISTS`: that looks only at the name, and
    /// names made of table and column names joined by `_` can coincide
    /// (table `order` keyed on `item_id`, table `order_item` keyed on `id`),
    /// so the second table would silently get no index. The index takes
    /// [`index_name`] unless another relation of the table's schema has it,
    /// then a name with a hash of the table and columns.
    ///
    /// Each `CREATE INDEX` runs through `EXECUTE`, whose string is its own:
    /// Citus sends a DDL statement on a distributed table to the workers
    /// with its whole query string, and refuses a string of several commands.
    fn index_statements(&self) -> Vec<String> {
        let table = format!("pg_catalog.to_regclass({})", quote_literal(&self.qualified_name()));
        let key: Vec<&str> = self.unique_key().map(|c| c.name).collect();
        let build = |name: String, unique: bool, cols: &[&str]| {
            let mut index = Index::create();
            index.name(name).table(self.table_ref());
            if unique {
                index.unique();
                if self.nulls_not_distinct {
                    index.nulls_not_distinct();
                }
            }
            for c in cols {
                index.col(Alias::new(*c));
            }
            index.build(PostgresQueryBuilder)
        };
        let block = |unique: bool, cols: &[&str], suffix: &str, equivalent: String| {
            let name = index_name(self.table, cols, suffix);
            let hashed = hashed_index_name(self.table, cols, suffix);
            do_block(&format!(
                "\nDECLARE\n\
                 \x20 t pg_catalog.oid := {table};\n\
                 BEGIN\n\
                 \x20 IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index AS i\n\
                 \x20                 WHERE i.indrelid = t AND i.indisvalid AND i.indpred IS NULL AND {equivalent}) THEN\n\
                 \x20   IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c\n\
                 \x20                   WHERE c.relname = {name_literal} AND c.relnamespace =\n\
                 \x20                         (SELECT r.relnamespace FROM pg_catalog.pg_class AS r WHERE r.oid = t)) THEN\n\
                 \x20     EXECUTE {preferred};\n\
                 \x20   ELSE\n\
                 \x20     EXECUTE {fallback};\n\
                 \x20   END IF;\n\
                 \x20 END IF;\n\
                 END\n",
                name_literal = quote_literal(&name),
                preferred = quote_literal(&build(name.clone(), unique, cols)),
                fallback = quote_literal(&build(hashed, unique, cols)),
            ))
        };
        // A unique index on exactly the key's columns (in any order, as
        // `ON CONFLICT` infers it), on columns, immediate, under the columns'
        // own collations, with the model's NULLS: one the schema check takes.
        let cols: Vec<String> = key.iter().map(|k| quote_literal(k)).collect();
        let mut unique = format!(
            "i.indisunique AND i.indimmediate AND i.indexprs IS NULL AND i.indnkeyatts = {n}\n\
             \x20                   AND (SELECT count(DISTINCT a.attname)\n\
             \x20                          FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)\n\
             \x20                          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = t AND a.attnum = k.attnum\n\
             \x20                         WHERE k.n <= i.indnkeyatts AND a.attname = ANY (ARRAY[{cols}]::pg_catalog.name[])) = {n}\n\
             \x20                   AND {collations}",
            n = key.len(),
            cols = cols.join(", "),
            collations = same_collations(),
        );
        if self.nulls_not_distinct {
            unique.push_str(" AND i.indnullsnotdistinct");
        }
        let mut out = vec![block(true, &key, "key", unique)];
        for c in self.columns.iter().filter(|c| c.index) {
            // A btree index on that column alone, of its default operator
            // class and under its own collation: what the DDL would make.
            let leads = format!(
                "i.indexprs IS NULL AND i.indnkeyatts = 1 AND i.indkey[0] = (SELECT a.attnum FROM pg_catalog.pg_attribute AS a WHERE a.attrelid = t AND a.attname = {})\n\
                 \x20                   AND (SELECT r.relam FROM pg_catalog.pg_class AS r WHERE r.oid = i.indexrelid) = \
                 (SELECT m.oid FROM pg_catalog.pg_am AS m WHERE m.amname = 'btree')\n\
                 \x20                   AND (SELECT o.opcdefault FROM pg_catalog.pg_opclass AS o WHERE o.oid = i.indclass[0]) AND {}",
                quote_literal(c.name),
                same_collations(),
            );
            out.push(block(false, &[c.name], "idx", leads));
        }
        out
    }

    /// The statements of [`migration_sql`](Self::migration_sql), one SQL
    /// string each: the schema, the table, each index as a `DO` block that
    /// creates it unless the table has one that does its job (for the key, a
    /// valid, immediate unique index on exactly its columns under their own
    /// collations, without a predicate or expressions, with the model's
    /// NULLS; for `#[bulk(index)]`, a btree index on that column alone of its
    /// default operator class and collation), then with Citus placement the
    /// Citus calls.
    pub fn migration_statements(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(schema) = self.schema {
            out.push(format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)));
        }
        out.push(self.create_table_statement().build(PostgresQueryBuilder));
        out.extend(self.index_statements());
        out.extend(self.citus_statement());
        if matches!(self.citus, CitusTable::Distributed { .. }) {
            out.push(self.citus_staging_sql());
        }
        out
    }

    /// With `distribute_by` or `reference_table`: a `DO` block that calls
    /// Citus's `create_distributed_table` or `create_reference_table`, only
    /// when the `citus` extension is installed and the table is not yet in
    /// `pg_dist_partition`, so the same script runs on plain PostgreSQL and
    /// runs again on Citus. The two conditions are nested `IF`s: PL/pgSQL
    /// plans the inner one (which names `pg_dist_partition`) only with Citus.
    fn citus_statement(&self) -> Option<String> {
        // The table as a `regclass` literal and Citus's calls, as SQL text.
        let table = quote_literal(&self.qualified_name());
        let call = match self.citus {
            CitusTable::None => return None,
            CitusTable::Distributed { column } => {
                // Citus looks the column up by its name as is (no identifier quoting).
                format!("pg_catalog.create_distributed_table({table}, {})", quote_literal(column))
            }
            CitusTable::Reference => format!("pg_catalog.create_reference_table({table})"),
        };
        let body = format!(
            "\nBEGIN\n\
             \x20 IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN\n\
             \x20   IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition\n\
             \x20                   WHERE logicalrelid = pg_catalog.to_regclass({table})) THEN\n\
             \x20     PERFORM {call};\n\
             \x20   END IF;\n\
             \x20 END IF;\n\
             END\n"
        );
        Some(do_block(&body))
    }

    /// The whole DDL for the model as one SQL script (schema, table, unique
    /// index, indexes, and with `distribute_by` or `reference_table` the
    /// Citus call), each statement ending in `;`. Applying it twice is harmless.
    ///
    /// Each index is created through `EXECUTE` in a `DO` block, only when
    /// the table has no index that does its job (see
    /// [`migration_statements`](Self::migration_statements)); Citus refuses a
    /// `CREATE INDEX` on a distributed table inside a query string of several
    /// commands, and `EXECUTE` keeps the script runnable again, in one piece.
    pub fn migration_sql(&self) -> String {
        script(self.migration_statements())
    }
}

/// A `DO` block of PL/pgSQL `body`, dollar-quoted with a tag the body does
/// not contain.
fn do_block(body: &str) -> String {
    let mut tag = String::from("$bulk$");
    while body.contains(&tag) {
        tag.insert(tag.len() - 1, '_');
    }
    format!("DO {tag}{body}{tag}")
}

/// Whether each key column of the index `i` (a `pg_index` row) is under its
/// column's own collation, as the schema check wants of the key's index.
fn same_collations() -> &'static str {
    "coalesce((SELECT bool_and(c.coll = a.attcollation)\n\
     \x20                              FROM pg_catalog.unnest(i.indcollation::pg_catalog.oid[]) WITH ORDINALITY AS c(coll, n)\n\
     \x20                              JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid\n\
     \x20                               AND a.attnum = (i.indkey::pg_catalog.int2[])[c.n - 1]\n\
     \x20                             WHERE c.n <= i.indnkeyatts), true)"
}

/// Statements as one script, each ending in `;` on its own line.
pub(crate) fn script(statements: Vec<String>) -> String {
    let mut sql = String::new();
    for s in statements {
        let _ = writeln!(sql, "{s};");
    }
    sql
}

/// Quotes an identifier for PostgreSQL: wraps it in double quotes and doubles
/// any double quote inside.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for ch in name.chars() {
        if ch == '"' {
            s.push('"');
        }
        s.push(ch);
    }
    s.push('"');
    s
}

/// Quotes a string as an escape-string literal (`E'...'`), doubling quotes
/// and backslashes, so it reads the same whatever
/// `standard_conforming_strings` is.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// The staging table's column of each row's position in the batch.
pub(crate) const STAGING_ORD: &str = "__bulk_ord";

/// How the name of every Citus staging table begins
/// ([`Model::citus_staging_table`]).
pub(crate) const STAGING_PREFIX: &str = "__bulk_stage_";

/// FNV-1a: a stable hash for generated names (not for security).
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// An index name made only of `[a-z0-9_]`, at most 63 bytes: the table and
/// columns joined by `_` (which two tables can share: see
/// [`hashed_index_name`]). sea-query writes index names without escaping, so
/// the name must never contain a quote: anything outside the safe set is
/// replaced and a hash of the real names is appended.
pub(crate) fn index_name(table: &str, columns: &[&str], suffix: &str) -> String {
    let (raw, clean, parts) = joined(table, columns);
    let plain = clean == raw && clean.len() + suffix.len() < 63;
    if plain { format!("{clean}_{suffix}") } else { hashed(&clean, &parts, suffix) }
}

/// [`index_name`] with the hash always appended: the name an index takes
/// when another relation has its plain name.
pub(crate) fn hashed_index_name(table: &str, columns: &[&str], suffix: &str) -> String {
    let (_, clean, parts) = joined(table, columns);
    hashed(&clean, &parts, suffix)
}

/// The table and columns joined by `_`, as they are and with anything
/// outside `[a-z0-9_]` replaced; and as a list.
fn joined<'a>(table: &'a str, columns: &[&'a str]) -> (String, String, Vec<&'a str>) {
    let mut parts = vec![table];
    parts.extend_from_slice(columns);
    let raw = parts.join("_");
    let clean =
        raw.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '_' }).collect();
    (raw, clean, parts)
}

fn hashed(clean: &str, parts: &[&str], suffix: &str) -> String {
    let hash = format!("{:08x}", fnv1a(parts) as u32);
    let room = 63 - suffix.len() - hash.len() - 2;
    let head: String = clean.chars().take(room).collect();
    format!("{head}_{hash}_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_ident("select"), r#""select""#);
    }

    #[test]
    fn index_names_are_safe_and_bounded() {
        assert_eq!(index_name("retweeter", &["tweet", "retweeter"], "key"), "retweeter_tweet_retweeter_key");
        let n = index_name(r#"my "table"; drop"#, &["a b"], "idx");
        assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{n}");
        let long = "x".repeat(63);
        let n = index_name(&long, &[&long, &long], "key");
        assert!(n.len() <= 63, "{n}");
        assert_ne!(index_name(&long, &["a"], "key"), index_name(&long, &["b"], "key"));
        // Plain names can coincide; the hashed ones (taken when the plain
        // one is in use) do not.
        assert_eq!(index_name("order", &["item_id"], "key"), index_name("order_item", &["id"], "key"));
        assert_ne!(hashed_index_name("order", &["item_id"], "key"), hashed_index_name("order_item", &["id"], "key"));
        let h = hashed_index_name("retweeter", &["tweet", "retweeter"], "key");
        assert!(h.starts_with("retweeter_tweet_retweeter_") && h.ends_with("_key") && h.len() == 38, "{h}");
    }
}
