//! A column outside the key that the table rounds, which can make two new
//! rows' stored values equal (returning and upsert calls must still map
//! each stored row to its offered row), and an error's field for a column
//! whose name holds a colon. Each test failed before its fix (review-d).

use bulk_runtime::{BulkCreateNew, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};

/// A schema of its own, named `revd_*`.
async fn schema_db(name: &str) -> TestDb {
    TestDb::with_schema(format!("revd_{name}_{}", std::process::id())).await
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "doc", unique(k), id = false)]
struct Doc {
    k: i64,
    body: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

fn at_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap()
}

/// README, "Keys a trigger changes": "nor does a column outside the key that
/// the table rounds (`timestamptz(3)`): a stored row is matched to its
/// offered row by its key". Two rows of different keys whose non-key values
/// become equal once the table rounded one of them (12:00:00.123456 stored
/// as .123, beside a row offered at exactly .123) are inserted and
/// reported (before the fix the calls that map rows back refused the batch
/// as a changed key: the other row's key was inserted too, so its values
/// were not stored under another key).
async fn rounded_column_makes_two_rows_look_alike(pad: usize) {
    let db = schema_db(&format!("rounded_{pad}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE doc (k bigint PRIMARY KEY, body text NOT NULL, updated_at timestamptz(3) NOT NULL)",
        )
        .await
        .unwrap();
    let base = 1_700_000_000_123_000;
    let mut batch = vec![
        // Stored as .123 (rounded)...
        Doc { k: 1, body: "same".into(), updated_at: at_micros(base + 456) },
        // ...which is exactly what this other key offers.
        Doc { k: 2, body: "same".into(), updated_at: at_micros(base) },
    ];
    batch.extend((0..pad as i64).map(|i| Doc { k: 1_000 + i, body: format!("pad {i}"), updated_at: at_micros(base) }));
    let mut failures = Vec::new();
    match Doc::bulk(&mut client).returning_keys().run(&batch).await {
        Ok(r) => {
            let keys: Vec<i64> = r.returned.iter().take(2).map(|n| n.key.0).collect();
            if r.inserted != batch.len() as u64 || keys != [1, 2] {
                failures.push(format!("returning_keys: {r:?}"));
            }
        }
        Err(e) => failures.push(format!("returning_keys: {e}")),
    }
    client.batch_execute("TRUNCATE doc").await.unwrap();
    match Doc::bulk(&mut client).returning_skipped().run(&batch).await {
        Ok(r) if r.inserted == batch.len() as u64 && r.returned.is_empty() => {}
        Ok(r) => failures.push(format!("returning_skipped: {r:?}")),
        Err(e) => failures.push(format!("returning_skipped: {e}")),
    }
    client.batch_execute("TRUNCATE doc").await.unwrap();
    match Doc::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await {
        Ok(r) if r.inserted == batch.len() as u64 => {}
        Ok(r) => failures.push(format!("upsert: {r:?}")),
        Err(e) => failures.push(format!("upsert: {e}")),
    }
    client.batch_execute("TRUNCATE doc").await.unwrap();
    // The plain call has no such check and stores both.
    let plain = Doc::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(plain.inserted, batch.len() as u64);
    assert_eq!(count(&client, "doc").await, batch.len() as i64);
    db.drop().await;
    assert!(failures.is_empty(), "pad {pad}:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn rounded_non_key_column_equal_to_another_row_is_not_a_changed_key() {
    rounded_column_makes_two_rows_look_alike(0).await;
}

#[tokio::test]
async fn rounded_non_key_column_equal_to_another_row_is_not_a_changed_key_through_copy() {
    rounded_column_makes_two_rows_look_alike(COPY_BATCH).await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "dated", unique(n))]
struct Dated {
    n: i64,
    /// A column name with a colon: names are used exactly as written.
    #[bulk(rename = "due: day")]
    day: chrono::NaiveDate,
}

/// README, "What one call does": errors carry "the row index and field when
/// the client or server can tell (`row()`, `field()`)". On the COPY path the
/// server's context names both (`COPY __bulk_..., line 5104, column due:
/// day`), and the field is found for a column whose name holds a `:` (before
/// the fix the name was cut at its colon, and the field lost).
#[tokio::test]
async fn copy_error_names_the_field_of_a_column_whose_name_has_a_colon() {
    let db = schema_db("copy_field_colon").await;
    let mut client = db.connect().await;
    client.batch_execute(&Dated::model().migration_sql()).await.unwrap();
    let ok = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    // chrono can hold years before 4713 BC; PostgreSQL's date cannot.
    let too_early = chrono::NaiveDate::from_ymd_opt(-100_000, 1, 1).unwrap();
    let bad_at = COPY_BATCH + 3;
    let rows = (0..bad_at + 5).map(|i| Dated { n: i as i64, day: if i == bad_at { too_early } else { ok } });
    let err = Dated::bulk_create_new(&mut client, rows).await.unwrap_err();
    let context = err.db_error().and_then(|d| d.where_()).map(str::to_owned);
    assert_eq!(count(&client, "dated").await, 0);
    db.drop().await;
    assert_eq!(err.row(), Some(bad_at), "{err}");
    assert_eq!(err.field(), Some("day"), "{err}; the server's context: {context:?}");
}
