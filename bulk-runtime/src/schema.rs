//! Verifying that the live table matches the model before the first write.

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::{Error, SchemaProblem, Step};
use crate::model::Model;

const COLUMNS: &str = "\
SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''), t.typname::text,
       has_database_privilege(current_database(), 'TEMPORARY'), current_user::text, current_database()::text
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

const UNIQUE_INDEXES: &str = "\
SELECT ic.relname::text,
       ARRAY(SELECT coalesce(a.attname::text, '(expression)')
               FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.n <= i.indnkeyatts
              ORDER BY k.n),
       i.indpred IS NOT NULL, i.indexprs IS NOT NULL, i.indnullsnotdistinct, i.indisvalid, i.indimmediate
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE i.indrelid = to_regclass($1) AND i.indisunique
 ORDER BY ic.relname";

const RESOLVE_TYPES: &str = "SELECT format_type(to_regtype(t), NULL) FROM unnest($1::text[]) AS t";

/// Checks the live table against the model; returns every difference at once.
pub(crate) async fn verify(tx: &Client, model: &'static Model) -> Result<(), Error> {
    let problems = problems(tx, model).await.map_err(|source| Error::database(model, Step::SchemaCheck, source))?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaMismatch { table: model.qualified_name(), model: model.struct_name(), problems })
    }
}

/// Every difference between the live table and the model.
///
/// # Errors
/// A database error from the catalog queries.
pub(crate) async fn problems(tx: &Client, model: &'static Model) -> Result<Vec<SchemaProblem>, tokio_postgres::Error> {
    let name = model.plan().target_regclass.as_str();
    let live = tx.query_typed(COLUMNS, &[(&name, Type::TEXT)]).await?;
    if live.is_empty() {
        return Ok(vec![SchemaProblem::TableMissing]);
    }
    let overrides: Vec<&str> = model.columns().iter().filter_map(|c| c.sql_type()).collect();
    let resolved: Vec<Option<String>> = if overrides.is_empty() {
        Vec::new()
    } else {
        tx.query_typed(RESOLVE_TYPES, &[(&overrides, Type::TEXT_ARRAY)]).await?.iter().map(|r| r.get(0)).collect()
    };

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

    let mut key: Vec<String> = model.unique_key().map(|c| c.name().to_owned()).collect();
    let key_nullable = model.unique_key().any(|c| c.nullable());
    let mut rejected = Vec::new();
    let mut usable = false;
    key.sort();
    for row in tx.query_typed(UNIQUE_INDEXES, &[(&name, Type::TEXT)]).await? {
        let index: String = row.get(0);
        let mut cols: Vec<String> = row.get(1);
        let (partial, expressions, nulls_not_distinct, valid, immediate): (bool, bool, bool, bool, bool) =
            (row.get(2), row.get(3), row.get(4), row.get(5), row.get(6));
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
    Ok(problems)
}
