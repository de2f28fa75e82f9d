//! Exactly-once accounting: the ledger of batch ids.
//!
//! A call given a batch id ([`Bulk::batch_id`](crate::Bulk::batch_id)) first
//! *claims* the id in the ledger table, in the transaction (or savepoint) that
//! then inserts the batch and records its counts on the claimed row. So the
//! counts are committed exactly when the rows are:
//!
//! - a retry after an ambiguous `COMMIT` (the server committed, the client
//!   lost the answer) finds the id claimed and returns the recorded counts,
//!   flagged [`replayed`](crate::Report::replayed), without inserting;
//! - two calls with the same new id at the same time cannot both insert: the
//!   second one's claim waits on the first one's uncommitted ledger row (the
//!   primary key), then sees it (a replay) or, if the first rolled back,
//!   claims it itself;
//! - a failed call leaves no ledger row behind: its retry runs normally.
//!
//! The claim is the call's first write, and it takes one row lock, so it adds
//! no deadlock: the batch's keys are still locked in key order after it.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::api::ledger::{COUNTS, FINGERPRINT};
use crate::api::{Keep, Kind, Ledger, Report};
use crate::error::{Error, Step};
use crate::model::{Model, quote_ident};
use crate::sql;
use crate::wire::Fingerprint;

/// Claims `($1 resolved, $2)` for the batch of fingerprint `$3`; returns
/// the resolved target when claimed. `INSERT ... SELECT`, not `VALUES`:
/// Citus refuses a subquery inside `VALUES` on a reference-table ledger
/// (0A000), and takes the same statement on a local one.
fn claim_sql(ledger: &Ledger) -> String {
    format!(
        "INSERT INTO {} ({}, {}, {}) SELECT {RESOLVED_TARGET}, $2, $3 ON CONFLICT ({}, {}) DO NOTHING RETURNING {}::text",
        ledger.qualified_name(),
        quote_ident("target"),
        quote_ident("batch_id"),
        quote_ident(FINGERPRINT),
        quote_ident("target"),
        quote_ident("batch_id"),
        quote_ident("target"),
    )
}

/// The recorded counts and fingerprint of `($1 resolved, $2)`, cast to the
/// types [`migration_sql`](Ledger::migration_sql) gives them, so that a
/// ledger made by hand with other ones (`integer` counts, a `varchar`
/// fingerprint) replays the same.
fn replay_sql(ledger: &Ledger) -> String {
    let mut counts: Vec<String> = COUNTS.iter().map(|c| format!("{}::bigint", quote_ident(c))).collect();
    counts.push(format!("{}::text", quote_ident(FINGERPRINT)));
    format!(
        "SELECT {} FROM {} WHERE {} = {RESOLVED_TARGET} AND {} = $2",
        counts.join(", "),
        ledger.qualified_name(),
        quote_ident("target"),
        quote_ident("batch_id"),
    )
}

/// Records the counts (`$3`...) on the claimed row `($1, $2)`.
fn record_sql(ledger: &Ledger) -> String {
    let sets: Vec<String> =
        COUNTS.iter().enumerate().map(|(i, c)| format!("{} = ${}", quote_ident(c), i + 3)).collect();
    format!(
        "UPDATE {} SET {}, {} = now() WHERE {} = $1 AND {} = $2",
        ledger.qualified_name(),
        sets.join(", "),
        quote_ident("recorded_at"),
        quote_ident("target"),
        quote_ident("batch_id"),
    )
}

/// `$1` (the target as the model writes it) resolved to `schema.table`, so
/// that the same table reached through different `search_path`s has one name.
const RESOLVED_TARGET: &str = "coalesce((SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.oid = pg_catalog.to_regclass($1)), $1)";

/// What the call writes besides the batch's new keys, as the fingerprint
/// records it: nothing for the plain call and the returning ones (they
/// store the same rows, so each replays the others), the updated columns
/// and the kept row of a repeated key for an upsert. So an upsert under an
/// id that a plain call (or an upsert of other columns) recorded is
/// refused, not replayed without updating what it was asked to.
fn writes(kind: &Kind) -> String {
    let Kind::Upsert(set) = kind else { return String::new() };
    let mut columns: Vec<&str> = set.columns.iter().map(|c| c.name()).collect();
    columns.sort_unstable();
    let keep = match set.keep {
        Keep::First => "first",
        Keep::Last => "last",
    };
    format!(", upserting {} from the {keep} row of a key", columns.join(", "))
}

/// The outcome of claiming a batch id.
pub(crate) enum Claim {
    /// The id is ours: the resolved target to record the counts under.
    Claimed(String),
    /// The id was recorded by an earlier call: its counts.
    Replay(Report),
}

fn ledger_error<'a>(model: &'a Model, ledger: &'a Ledger) -> impl Fn(tokio_postgres::Error) -> Error + 'a {
    move |source| {
        // The ledger table or its schema is missing, or the table lacks a
        // column this version records (made by an earlier version): say how
        // to create or upgrade it.
        if matches!(
            source.code(),
            Some(&SqlState::UNDEFINED_TABLE | &SqlState::INVALID_SCHEMA_NAME | &SqlState::UNDEFINED_COLUMN)
        ) {
            return Error::LedgerMissing { model: model.struct_name(), ledger: ledger.qualified_name(), source };
        }
        // The claim's `ON CONFLICT ("target", "batch_id")` has no key to use.
        if source.code() == Some(&SqlState::INVALID_COLUMN_REFERENCE) {
            return Error::LedgerKeyMissing { model: model.struct_name(), ledger: ledger.qualified_name(), source };
        }
        Error::database(model, Step::Ledger, source)
    }
}

/// Claims `batch_id` for the model's table, inside the call's transaction.
pub(crate) async fn claim(
    client: &Client,
    model: &'static Model,
    ledger: &Ledger,
    batch_id: &str,
    fingerprint: &Fingerprint,
    kind: &Kind,
) -> Result<Claim, Error> {
    let target = sql::plan(model).target_regclass.as_str();
    let fingerprint = fingerprint.text(model) + &writes(kind);
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] =
        [(&target, Type::TEXT), (&batch_id, Type::TEXT), (&fingerprint, Type::TEXT)];
    // (`try_get`: a ledger made by hand may hold a column this version
    // cannot read; that is the call's error, never a panic.)
    let unreadable = |source| Error::database(model, Step::Ledger, source);
    // The row found taken may be deleted before it is read (a cleanup job):
    // then claim again.
    for _ in 0..3 {
        let claimed = client.query_typed(&claim_sql(ledger), &params).await.map_err(ledger_error(model, ledger))?;
        if let Some(row) = claimed.first() {
            return Ok(Claim::Claimed(row.try_get(0).map_err(unreadable)?));
        }
        let recorded =
            client.query_typed(&replay_sql(ledger), &params[..2]).await.map_err(ledger_error(model, ledger))?;
        if let Some(row) = recorded.first() {
            // (A row recorded before fingerprints were kept has none.)
            let recorded: Option<String> = row.try_get(COUNTS.len()).map_err(unreadable)?;
            if let Some(recorded) = recorded.filter(|r| *r != fingerprint) {
                return Err(Error::BatchIdReused {
                    batch_id: batch_id.to_owned(),
                    ledger: ledger.qualified_name(),
                    recorded,
                    offered: fingerprint,
                });
            }
            let n = |i: usize| row.try_get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0)).map_err(unreadable);
            return Ok(Claim::Replay(Report {
                offered: n(0)?,
                inserted: n(1)?,
                updated: n(2)?,
                unchanged: n(3)?,
                skipped: n(4)?,
                replayed: true,
                returned: (),
            }));
        }
    }
    Err(Error::Usage {
        model: model.struct_name(),
        message: format!(
            "batch id {batch_id:?} is taken in {}, but the role cannot read its row: a row-level security policy \
             hides it (another tenant's batch of that id?), or it was deleted each time it was read; use another \
             batch id, or let the role read the ledger's rows of this target",
            ledger.qualified_name()
        ),
    })
}

/// Records the call's counts on the claimed row.
pub(crate) async fn record(
    client: &Client,
    model: &'static Model,
    ledger: &Ledger,
    target: &str,
    batch_id: &str,
    report: &Report,
) -> Result<(), Error> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let counts = [n(report.offered), n(report.inserted), n(report.updated), n(report.unchanged), n(report.skipped)];
    let mut params: Vec<(&(dyn tokio_postgres::types::ToSql + Sync), Type)> =
        vec![(&target, Type::TEXT), (&batch_id, Type::TEXT)];
    params.extend(counts.iter().map(|c| (c as &(dyn tokio_postgres::types::ToSql + Sync), Type::INT8)));
    client.query_typed(&record_sql(ledger), &params).await.map_err(ledger_error(model, ledger))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_replay_and_record_take_values_only_as_parameters() {
        let ledger = Ledger::default();
        let claim = claim_sql(&ledger);
        assert!(claim.contains(r#"ON CONFLICT ("target", "batch_id") DO NOTHING RETURNING "target"::text"#), "{claim}");
        assert!(claim.contains("to_regclass($1)") && claim.contains("$1), $2, $3 ON CONFLICT"), "{claim}");
        // `INSERT ... SELECT`: Citus refuses a subquery inside `VALUES` on a reference-table ledger.
        assert!(claim.contains(r#""fingerprint") SELECT coalesce((SELECT "#) && !claim.contains("VALUES"), "{claim}");
        let record = record_sql(&ledger);
        assert!(record.starts_with(r#"UPDATE "bulk_batches" SET "offered" = $3, "inserted" = $4, "updated" = $5, "unchanged" = $6, "skipped" = $7, "recorded_at" = now()"#), "{record}");
        assert!(replay_sql(&ledger).starts_with(
            r#"SELECT "offered"::bigint, "inserted"::bigint, "updated"::bigint, "unchanged"::bigint, "skipped"::bigint, "fingerprint"::text FROM "bulk_batches""#
        ));
    }
}
