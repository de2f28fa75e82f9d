//! Bad input the server refuses, on both paths: a value out of range for the
//! column's declared type, and NULL into a NOT NULL column through COPY. The
//! error is clear (SQLSTATE, the server's message, the field where the
//! server names it), nothing of the batch is written, and the connection
//! takes the next batch. (A NUL byte in text, CHECK violations, NULL through
//! the one-statement path: `errors.rs`; tables whose unique key is missing,
//! partial or on an expression: `schema_check.rs`.)

use bulk_runtime::{BulkCreateNew, Error, Step};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::error::SqlState;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "priced", unique(sku))]
struct Priced {
    sku: i64,
    /// `numeric(5, 1)`: at most 9999.9.
    #[bulk(sql_type = "numeric(5, 1)")]
    cents: i32,
    note: Option<String>,
}

fn priced(sku: i64, cents: i32) -> Priced {
    Priced { sku, cents, note: Some(format!("sku {sku}")) }
}

/// `rows` padded with `pad` valid rows of keys from 10^6 on.
fn padded(rows: &[Priced], pad: usize) -> Vec<Priced> {
    rows.iter().cloned().chain((0..pad as i64).map(|i| priced(1_000_000 + i, 1))).collect()
}

#[tokio::test]
async fn value_out_of_range_for_the_declared_type() {
    out_of_range(0).await;
}

#[tokio::test]
async fn value_out_of_range_for_the_declared_type_through_copy() {
    out_of_range(COPY_BATCH).await;
}

async fn out_of_range(pad: usize) {
    let db = TestDb::new(&format!("bad_range_{pad}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&Priced::model().migration_sql()).await.unwrap();
    let batch = padded(&[priced(1, 10), priced(2, 9_999), priced(3, 10_000), priced(4, 5)], pad);
    let err = Priced::bulk_create_new(&mut client, &batch).await.unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert_eq!(err.sqlstate(), Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE), "{err}");
    assert_eq!(err.step(), Some(Step::Insert), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("numeric field overflow") && shown.contains(r#""priced""#), "{shown}");
    assert!(shown.contains("precision 5, scale 1"), "the server's detail: {shown}");
    assert!(!err.is_retryable());
    assert!(err.connection_usable());
    assert_eq!(count(&client, "priced").await, 0, "nothing of the batch");
    let fixed = padded(&[priced(1, 10), priced(2, 9_999), priced(3, 999), priced(4, 5)], pad);
    let o = Priced::bulk_create_new(&mut client, &fixed).await.unwrap();
    assert_eq!(o.inserted, 4 + pad as u64, "the connection takes the next batch");
    db.drop().await;
}

#[tokio::test]
async fn null_into_a_not_null_column_through_copy() {
    // The column becomes NOT NULL after the session checked the model (so
    // the check, which would refuse the Option field, does not run again).
    let db = TestDb::new("bad_not_null_copy").await;
    let mut client = db.connect().await;
    client.batch_execute(&Priced::model().migration_sql()).await.unwrap();
    Priced::bulk_create_new(&mut client, &padded(&[], COPY_BATCH)).await.unwrap();
    client.batch_execute("DELETE FROM priced; ALTER TABLE priced ALTER COLUMN note SET NOT NULL").await.unwrap();
    let mut batch = padded(&[priced(1, 1)], COPY_BATCH);
    batch[7].note = None;
    let err = Priced::bulk_create_new(&mut client, &batch).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::NOT_NULL_VIOLATION), "{err}");
    assert_eq!(err.field(), Some("note"), "{err}");
    assert!(err.to_string().contains("(field `note`)"), "{err}");
    assert!(err.connection_usable());
    assert_eq!(count(&client, "priced").await, 0);
    batch[7].note = Some("fixed".into());
    let o = Priced::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, batch.len() as u64);
    db.drop().await;
}
