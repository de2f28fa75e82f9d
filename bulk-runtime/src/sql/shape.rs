//! How the table compares its key's values, as SQL reads them: the schema
//! check finds it, every statement that matches or deduplicates keys reads
//! the batch through it.

use crate::model::quote_ident;

/// What a `varchar(n)` column's type modifier adds to `n` (PostgreSQL's
/// `VARHDRSZ`).
pub(crate) const VARHDRSZ: i32 = 4;

/// How the batch's key values are compared so that they compare as the
/// table's unique key does: per key column (in key order), the type and
/// collation a value offered as the model's type is read as, when that
/// differs from the model's type (`citext`, `char(n)`, a column collation
/// such as a case-insensitive ICU one). The statements that deduplicate the
/// batch and match it against stored keys read the batch through these.
///
/// It also carries the SQL [`Dialect`] the table needs (the schema check
/// finds both in one round trip): every statement builder that gets the
/// shape gets the dialect with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyShape {
    /// Per key column (in key order), how its values are read.
    pub keys: Vec<Option<KeyAs>>,
    /// The dialect of the statements on this table.
    pub dialect: Dialect,
    /// The statements' guards read the columns' types from the catalog
    /// (`fragments::columns_fit`), not from the statement itself
    /// (`fragments::columns_fit_by_type`): a column's type is not one of
    /// the built-in types the latter knows for it (a `citext` column, a
    /// domain, a `numeric` key column), or the table's name, as a type
    /// name, finds another type than the table's row type (a type of that
    /// name in a schema before the table's on the `search_path`).
    pub catalog_guard: bool,
}

/// Which SQL a table takes: plain PostgreSQL's, or Citus's for a
/// distributed or reference table (see `notes/citus.md`, §0): no anti-join,
/// no plain form, every insert `ON CONFLICT` over one row per key, counted
/// from `RETURNING` (a Citus `INSERT ... SELECT`'s command tag counts the
/// rows it attempted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) enum Dialect {
    /// A table of plain PostgreSQL (also a Citus coordinator's local table).
    #[default]
    Postgres,
    /// A Citus distributed (hash) or reference table.
    Citus,
    /// A Citus hash-distributed table with its co-located staging table
    /// ([`Model::citus_staging_sql`](crate::Model::citus_staging_sql)): as
    /// [`Dialect::Citus`], except that the COPY path of the plain call
    /// copies into the staging table, and the insert from it runs on each
    /// shard.
    CitusStaged,
}

impl Dialect {
    /// What a prepared statement's label gets in this dialect, so that the
    /// per-connection cache never hands one dialect's statement to another.
    pub(crate) fn label_suffix(self) -> &'static str {
        match self {
            Dialect::Postgres => "",
            Dialect::Citus | Dialect::CitusStaged => " citus",
        }
    }

    /// Whether the table is a Citus distributed or reference table.
    pub(crate) fn is_citus(self) -> bool {
        self != Dialect::Postgres
    }

    /// The dialect of a statement that does not read the staging table
    /// (the short path's, or a COPY that went to the session's scratch
    /// table): [`Dialect::Citus`] for [`Dialect::CitusStaged`].
    pub(crate) fn without_stage(self) -> Dialect {
        match self {
            Dialect::CitusStaged => Dialect::Citus,
            dialect => dialect,
        }
    }
}

/// The type (schema, name) and the collation (schema, name) a key column's
/// values are read as; `None` where the model's own type or the type's
/// default collation is right.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KeyAs {
    pub ty: Option<(String, String)>,
    pub collation: Option<(String, String)>,
    /// The type modifier of a `varchar(n)` column (`n` + 4, as
    /// `pg_attribute.atttypmod` holds it; `ty` is then `varchar`): storing
    /// cuts trailing spaces beyond `n`, so two offered keys may be one
    /// stored key. Values are read with the assignment's length check
    /// (`varchar(value, typmod, false)`): cut as the store cuts them, and
    /// refused (22001) when more than spaces are beyond `n`.
    pub typmod: Option<i32>,
    /// The column's domain (schema, name), for a nullable key column whose
    /// type is a domain: such a key compares as `ARRAY[k]` (see
    /// `fragments::key_match`), and an array of a domain has no `=` with
    /// an array of its base type, so the batch's values are read as the
    /// domain itself, after `ty`, `typmod` and before `collation`.
    pub domain: Option<(String, String)>,
}

impl KeyShape {
    /// Whether every key column compares as the model's type does.
    pub(crate) fn is_plain(&self) -> bool {
        self.keys.iter().all(Option::is_none)
    }

    /// Whether the statements the plan built once per process (plain key,
    /// PostgreSQL's dialect) fit this table.
    pub(crate) fn is_default(&self) -> bool {
        self.is_plain() && self.dialect == Dialect::Postgres && !self.catalog_guard
    }

    /// `expr` read as the `i`th key column compares (and as it is stored,
    /// for a `varchar(n)` column: see [`KeyAs::typmod`]; as its domain, for
    /// a nullable key of a domain: see [`KeyAs::domain`]); `expr` itself
    /// when plain.
    pub(crate) fn read(&self, i: usize, expr: &str) -> String {
        self.spell(
            i,
            expr,
            |ty, typmod| match typmod {
                // The length coercion function of `varchar`, named as its type,
                // as an assignment applies it (`false`: not an explicit cast,
                // which would cut any characters silently).
                Some(typmod) => format!("{ty}(CAST({expr} AS {ty}), {typmod}, false)"),
                None => format!("CAST({expr} AS {ty})"),
            },
            // (Its base type's length already applied as an assignment
            // does, the cast to the domain only checks its constraints.)
            |read, domain| format!("CAST({read} AS {domain})"),
        )
    }

    /// The scratch table's column type of the `i`th key column, whose
    /// model type is `wire` (an SQL type name): the table's, so that the
    /// binary COPY into it reads the values as the table stores them.
    pub(crate) fn column_type(&self, i: usize, wire: &str) -> String {
        self.spell(
            i,
            wire,
            |ty, typmod| match typmod {
                Some(typmod) => format!("{ty}({})", typmod - VARHDRSZ),
                None => ty.to_owned(),
            },
            // (The domain holds its base type's length.)
            |_, domain| domain.to_owned(),
        )
    }

    /// `plain` when the `i`th key column compares as the model's type;
    /// otherwise `with_type` of its type and type modifier (or `plain` when
    /// only the collation differs), then `with_domain` of that and its
    /// domain when it has one ([`KeyAs::domain`]), followed by its
    /// `COLLATE` clause.
    fn spell(
        &self,
        i: usize,
        plain: &str,
        with_type: impl FnOnce(&str, Option<i32>) -> String,
        with_domain: impl FnOnce(&str, &str) -> String,
    ) -> String {
        let Some(k) = self.keys.get(i).and_then(Option::as_ref) else { return plain.to_owned() };
        let name = |(schema, name): &(String, String)| format!("{}.{}", quote_ident(schema), quote_ident(name));
        let mut out = k.ty.as_ref().map_or_else(|| plain.to_owned(), |ty| with_type(&name(ty), k.typmod));
        if let Some(domain) = &k.domain {
            out = with_domain(&out, &name(domain));
        }
        if let Some(collation) = &k.collation {
            out = format!("{out} COLLATE {}", name(collation));
        }
        out
    }
}
