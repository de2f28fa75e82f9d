//! Verifying that the live table matches the model before the first write.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::{Error, SchemaProblem, Step};
use crate::model::{Model, quote_ident};
use crate::types::PgType;

const COLUMNS: &str = "\
SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''), t.typname::text,
       has_database_privilege(current_database(), 'TEMPORARY'), current_user::text, current_database()::text,
       tn.nspname::text, format_type(a.atttypid, a.atttypmod), a.atttypmod,
       CASE WHEN a.attcollation <> t.typcollation THEN cn.nspname::text END,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname::text END
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
  LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

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

const RESOLVE_TYPES: &str = "SELECT format_type(to_regtype(t), NULL) FROM unnest($1::text[]) AS t";

/// How the batch's key values are compared so that they compare as the
/// table's unique key does: per key column (in key order), the type and
/// collation a value offered as the model's type is read as, when that
/// differs from the model's type (`citext`, `char(n)`, a column collation
/// such as a case-insensitive ICU one). The statements that deduplicate the
/// batch and match it against stored keys read the batch through these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyShape(pub Vec<Option<KeyAs>>);

/// The type (schema, name) and the collation (schema, name) a key column's
/// values are read as; `None` where the model's own type or the type's
/// default collation is right.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KeyAs {
    pub ty: Option<(String, String)>,
    pub collation: Option<(String, String)>,
}

impl KeyShape {
    /// Whether every key column compares as the model's type does.
    pub(crate) fn is_plain(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// `expr` read as the `i`th key column compares; `expr` itself when plain.
    pub(crate) fn read(&self, i: usize, expr: &str) -> String {
        self.spell(i, expr, |ty| format!("CAST({expr} AS {ty})"))
    }

    /// The scratch table's column type of the `i`th key column, whose
    /// model type is `wire` (an SQL type name).
    pub(crate) fn column_type(&self, i: usize, wire: &str) -> String {
        self.spell(i, wire, str::to_owned)
    }

    /// `plain` when the `i`th key column compares as the model's type;
    /// otherwise `with_type` of its type (or `plain` when only the collation
    /// differs), followed by its `COLLATE` clause.
    fn spell(&self, i: usize, plain: &str, with_type: impl FnOnce(&str) -> String) -> String {
        let Some(k) = self.0.get(i).and_then(Option::as_ref) else { return plain.to_owned() };
        let name = |(schema, name): &(String, String)| format!("{}.{}", quote_ident(schema), quote_ident(name));
        let mut out = k.ty.as_ref().map_or_else(|| plain.to_owned(), |ty| with_type(&name(ty)));
        if let Some(collation) = &k.collation {
            out = format!("{out} COLLATE {}", name(collation));
        }
        out
    }
}

/// Checks the live table against the model; returns every difference at
/// once, or how its key compares.
pub(crate) async fn verify(tx: &Client, model: &'static Model) -> Result<KeyShape, Error> {
    let (problems, shape) =
        check(tx, model).await.map_err(|source| Error::database(model, Step::SchemaCheck, source))?;
    if problems.is_empty() {
        Ok(shape)
    } else {
        Err(Error::SchemaMismatch { table: model.qualified_name(), model: model.struct_name(), problems })
    }
}

/// Every difference between the live table and the model.
///
/// # Errors
/// A database error from the catalog queries.
pub(crate) async fn problems(tx: &Client, model: &'static Model) -> Result<Vec<SchemaProblem>, tokio_postgres::Error> {
    Ok(check(tx, model).await?.0)
}

/// How a key column of type `typname` (in schema `typschema`) with the
/// column collation `collation` (when not its type's default) is read, for
/// a key field of the model's `ty`: only text keys can differ (`citext` has
/// its own equality, `char(n)` ignores trailing spaces; a collation may hold
/// different strings equal).
fn key_as(ty: PgType, typschema: &str, typname: &str, collation: Option<(String, String)>) -> Option<KeyAs> {
    if ty != PgType::Text {
        return None;
    }
    let ty = match typname {
        "citext" => Some((typschema.to_owned(), typname.to_owned())),
        "bpchar" => Some(("pg_catalog".to_owned(), "bpchar".to_owned())),
        _ => None,
    };
    (ty.is_some() || collation.is_some()).then_some(KeyAs { ty, collation })
}

/// Whether a key column's type modifier makes PostgreSQL round the values it
/// stores for a key field of the model's `ty` (two offered keys could
/// become one stored key).
fn rounds(ty: PgType, typname: &str, typmod: i32) -> bool {
    match typname {
        "timestamp" | "timestamptz" | "time" | "timetz" | "interval" => (0..6).contains(&typmod),
        // numeric(p, s) rounds a decimal to s digits; for integers, only a
        // negative scale rounds.
        "numeric" if ty == PgType::Numeric => typmod >= 4,
        "numeric" => typmod >= 4 && ((typmod - 4) & 0x7ff) > 1023,
        _ => false,
    }
}

async fn check(tx: &Client, model: &'static Model) -> Result<(Vec<SchemaProblem>, KeyShape), tokio_postgres::Error> {
    let name = crate::sql::plan(model).target_regclass.as_str();
    let overrides: Vec<&str> = model.columns().iter().filter_map(|c| c.sql_type()).collect();
    // The catalog queries go out together: one round trip.
    let (live, resolved, indexes) = futures_util::future::try_join3(
        tx.query_typed(COLUMNS, &[(&name, Type::TEXT)]),
        async {
            if overrides.is_empty() {
                return Ok(Vec::new());
            }
            let rows = tx.query_typed(RESOLVE_TYPES, &[(&overrides, Type::TEXT_ARRAY)]).await?;
            Ok(rows.iter().map(|r| r.get::<_, Option<String>>(0)).collect::<Vec<_>>())
        },
        tx.query_typed(UNIQUE_INDEXES, &[(&name, Type::TEXT)]),
    )
    .await?;
    if live.is_empty() {
        return Ok((vec![SchemaProblem::TableMissing], KeyShape::default()));
    }

    let mut problems = Vec::new();
    if !live[0].get::<_, bool>(5) {
        problems.push(SchemaProblem::TemporaryTablesNotAllowed { role: live[0].get(6), database: live[0].get(7) });
    }
    let mut overrides = resolved.into_iter();
    for column in model.columns() {
        let resolved = column.sql_type().and_then(|_| overrides.next().flatten());
        let found = live.iter().find(|r| r.get::<_, &str>(0) == column.name());
        let mut accepted: Vec<String> =
            column.pg_type().compatible_sql_names().iter().map(|s| (*s).to_owned()).collect();
        if let Some(r) = resolved
            && !accepted.contains(&r)
        {
            accepted.insert(0, r);
        }
        let expected = accepted.join(" or ");
        match found {
            None => problems.push(SchemaProblem::ColumnMissing { column: column.name().to_owned(), expected }),
            Some(row) => {
                let ty: String = row.get(1);
                // `format_type` qualifies a type whose schema is not on the
                // search_path (`public.citext` for an extension installed in
                // `public` while the path is the application's schema): such
                // a type is still the one its name says.
                let unqualified: String = row.get(4);
                let fits = accepted.contains(&ty) || (ty.contains('.') && accepted.contains(&unqualified));
                if !fits {
                    problems.push(SchemaProblem::ColumnType { column: column.name().to_owned(), expected, found: ty });
                }
                if column.nullable() && row.get::<_, bool>(2) {
                    problems.push(SchemaProblem::ColumnNotNull { column: column.name().to_owned() });
                }
            }
        }
    }
    for row in &live {
        let name: &str = row.get(0);
        let (not_null, has_default): (bool, bool) = (row.get(2), row.get(3));
        if not_null && !has_default && !model.columns().iter().any(|c| c.name() == name) {
            problems.push(SchemaProblem::RequiredColumnNotInModel { column: name.to_owned() });
        }
    }

    let mut shape = KeyShape::default();
    for column in model.unique_key() {
        let Some(row) = live.iter().find(|r| r.get::<_, &str>(0) == column.name()) else {
            shape.0.push(None);
            continue;
        };
        let (typname, typschema, typmod): (&str, &str, i32) = (row.get(4), row.get(8), row.get(10));
        if rounds(column.pg_type(), typname, typmod) {
            problems.push(SchemaProblem::KeyRounded { column: column.name().to_owned(), found: row.get(9) });
        }
        let collation = row.get::<_, Option<String>>(11).zip(row.get::<_, Option<String>>(12));
        shape.0.push(key_as(column.pg_type(), typschema, typname, collation));
    }

    let mut key: Vec<String> = model.unique_key().map(|c| c.name().to_owned()).collect();
    let key_nullable = model.unique_key().any(|c| c.nullable());
    let mut rejected = Vec::new();
    let mut usable = false;
    key.sort();
    for row in indexes {
        let index: String = row.get(0);
        let mut cols: Vec<String> = row.get(1);
        let (partial, expressions, nulls_not_distinct, valid, immediate): (bool, bool, bool, bool, bool) =
            (row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
        let same_collations: bool = row.get(7);
        cols.sort();
        let same_columns = cols == key;
        let why = if expressions {
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
            usable = true;
            None
        };
        if let Some(why) = why {
            rejected.push(format!("unique index \"{index}\" on ({}) {why}", cols.join(", ")));
        }
    }
    if !usable {
        let key = model.unique_key().map(|c| c.name().to_owned()).collect();
        problems.push(SchemaProblem::UniqueKeyMissing { key, rejected });
    }
    Ok((problems, shape))
}
