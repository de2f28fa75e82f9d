//! Bad input: values refused on the client, and values the server refuses.
//! Nothing of a failed batch is written, and the connection stays usable.

use bulk_runtime::{BulkCreateNew, Error, Step, ValueError};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "doc", unique(path))]
pub struct Doc {
    pub path: String,
    #[bulk(rename = "Body Text")]
    pub body: Option<String>,
    pub size: i32,
}

fn doc(path: &str, body: Option<&str>, size: i32) -> Doc {
    Doc { path: path.into(), body: body.map(Into::into), size }
}

async fn setup(name: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    client.batch_execute(&Doc::model().migration_sql()).await.unwrap();
    (db, client)
}

#[tokio::test]
async fn nul_byte_in_text_is_refused_with_row_and_field() {
    let (db, mut client) = setup("nul_byte").await;
    let batch = vec![
        doc("a", Some("fine"), 1),
        doc("b", None, 2),
        doc("c", Some("also fine"), 3),
        doc("d", Some("bad\0body"), 4),
        doc("e", Some("never sent"), 5),
    ];
    let err = Doc::bulk_create_new(&mut client, &batch).await.unwrap_err();
    match &err {
        Error::InvalidValue { row, field, source } => {
            assert_eq!(*row, 3);
            assert_eq!(*field, "body", "the Rust field name, not the column name");
            assert_eq!(*source, ValueError::NulByte { offset: 3 });
        }
        other => panic!("expected InvalidValue, got {other:?}"),
    }
    assert_eq!(err.row(), Some(3));
    assert_eq!(err.field(), Some("body"));
    let shown = err.to_string();
    assert!(shown.contains("row 3") && shown.contains("`body`") && shown.contains("NUL"), "{shown}");
    assert!(!err.is_retryable());
    assert!(err.connection_usable());
    assert_eq!(count(&client, "doc").await, 0, "nothing of the batch is written");

    // The same connection takes the next batch; rows of the failed one are new.
    let o = Doc::bulk_create_new(&mut client, &batch[..3]).await.unwrap();
    assert_eq!((o.offered, o.inserted), (3, 3));
    // A NUL in the key field (row 1, first byte).
    let err = Doc::bulk_create_new(&mut client, [doc("z", None, 0), doc("\0z", None, 0)]).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidValue { row: 1, field: "path", source: ValueError::NulByte { offset: 0 } }),
        "{err:?}"
    );
    assert_eq!(count(&client, "doc").await, 3);
    db.drop().await;
}

#[tokio::test]
async fn nul_byte_after_rows_were_already_streamed_writes_nothing() {
    // A long batch takes the COPY path, and 150,000 rows go out before the bad
    // one: the COPY buffer has certainly been flushed to the server; the abort
    // must still discard them all.
    let (db, mut client) = setup("nul_byte_late").await;
    let bad_at = 150_000usize.max(COPY_BATCH);
    let rows = (0..bad_at + 10).map(|i| {
        let body = if i == bad_at { "late\0".to_owned() } else { format!("body {i}") };
        Doc { path: format!("p{i}"), body: Some(body), size: i as i32 }
    });
    let err = Doc::bulk_create_new(&mut client, rows).await.unwrap_err();
    assert!(matches!(err, Error::InvalidValue { row, field: "body", .. } if row == bad_at), "{err:?}");
    assert_eq!(count(&client, "doc").await, 0);
    let o = Doc::bulk_create_new(&mut client, [doc("p1", None, 1)]).await.unwrap();
    assert_eq!(o.inserted, 1);
    db.drop().await;
}

#[tokio::test]
async fn check_violation_is_a_database_error_with_the_servers_message() {
    check_violation(0).await;
}

#[tokio::test]
async fn check_violation_is_a_database_error_with_the_servers_message_through_copy() {
    check_violation(COPY_BATCH).await;
}

/// `rows`, then `pad` valid rows of their own keys.
fn padded(rows: impl IntoIterator<Item = Doc>, pad: usize) -> impl Iterator<Item = Doc> {
    rows.into_iter().chain((0..pad).map(|i| doc(&format!("filler {i}"), Some("f"), 0)))
}

async fn check_violation(pad: usize) {
    let (db, mut client) = setup(&format!("check_violation_{pad}")).await;
    client
        .batch_execute(r#"ALTER TABLE doc ADD CONSTRAINT body_required CHECK ("Body Text" IS NOT NULL)"#)
        .await
        .unwrap();
    let batch = [doc("a", Some("x"), 1), doc("b", None, 2), doc("c", Some("y"), 3)];
    let err = Doc::bulk_create_new(&mut client, padded(batch, pad)).await.unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert_eq!(err.sqlstate(), Some(&SqlState::CHECK_VIOLATION));
    assert_eq!(err.step(), Some(Step::Insert));
    let server = err.db_error().expect("a server error").message().to_owned();
    assert!(server.contains("body_required"), "{server}");
    let shown = err.to_string();
    assert!(shown.contains(&server), "Display carries the server's message: {shown}");
    assert!(shown.contains(r#""doc""#), "and the table: {shown}");
    assert!(shown.contains(SqlState::CHECK_VIOLATION.code()), "{shown}");
    assert!(!err.is_retryable());
    assert!(err.connection_usable());
    assert_eq!(count(&client, "doc").await, 0, "the valid rows of the batch are not written either");
    let o =
        Doc::bulk_create_new(&mut client, padded([doc("a", Some("x"), 1), doc("c", Some("y"), 3)], pad)).await.unwrap();
    assert_eq!(o.inserted, 2 + pad as u64, "the same connection takes the next batch");
    db.drop().await;
}

#[tokio::test]
async fn not_null_violation_names_the_field() {
    // The model's Option field fits the nullable column at the schema check;
    // the column becomes NOT NULL afterwards (the session's scratch table
    // already exists, so the check does not run again): the server refuses.
    let (db, mut client) = setup("not_null_violation").await;
    Doc::bulk_create_new(&mut client, [doc("a", Some("x"), 1)]).await.unwrap();
    client.batch_execute(r#"ALTER TABLE doc ALTER COLUMN "Body Text" SET NOT NULL"#).await.unwrap();
    let err = Doc::bulk_create_new(&mut client, [doc("b", Some("y"), 2), doc("c", None, 3)]).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::NOT_NULL_VIOLATION), "{err}");
    assert_eq!(err.field(), Some("body"), "the server's column mapped back to the Rust field");
    let server = err.db_error().unwrap().message().to_owned();
    assert!(server.contains("Body Text"), "{server}");
    assert!(err.to_string().contains(&server), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(count(&client, "doc").await, 1);
    db.drop().await;
}

#[tokio::test]
async fn value_too_long_for_varchar() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "code", unique(code))]
    struct Code {
        #[bulk(sql_type = "varchar(5)")]
        code: String,
    }
    let db = TestDb::new("varchar_too_long").await;
    let mut client = db.connect().await;
    client.batch_execute(&Code::model().migration_sql()).await.unwrap();
    let err = Code::bulk_create_new(&mut client, [Code { code: "12345".into() }, Code { code: "123456".into() }])
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    assert!(err.to_string().contains("character varying(5)"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(count(&client, "code").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn value_refused_by_the_server_during_copy_names_row_and_field() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "coded", unique(code), id = false)]
    struct Coded {
        code: String,
        n: i64,
    }
    /// Key `i` as four base-36 digits.
    fn code(i: usize) -> String {
        let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
        (0..4).rev().map(|p| digits[(i / 36usize.pow(p)) % 36] as char).collect()
    }
    let db = TestDb::new("copy_refused").await;
    let mut client = db.connect().await;
    // The scratch table's key column takes the key's `varchar(4)`, so a
    // longer key is refused by the server as the COPY stages it.
    client.batch_execute("CREATE TABLE coded (code varchar(4) PRIMARY KEY, n bigint NOT NULL)").await.unwrap();
    let too_long = || "toolong".to_owned();
    // Long enough for the COPY path; the bad value is the last row.
    let bad_at = COPY_BATCH + 2;
    let rows = (0..=bad_at).map(|i| Coded { code: if i == bad_at { too_long() } else { code(i) }, n: i as i64 });
    let err = Coded::bulk_create_new(&mut client, rows).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    assert_eq!(err.step(), Some(Step::Copy), "{err}");
    assert_eq!(err.row(), Some(bad_at), "{err}");
    assert_eq!(err.field(), Some("code"), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("too long") && shown.contains(&format!("row {bad_at}")), "{shown}");
    assert!(!err.is_retryable());
    assert_eq!(count(&client, "coded").await, 0);
    let o =
        Coded::bulk_create_new(&mut client, (0..bad_at).map(|i| Coded { code: code(i), n: i as i64 })).await.unwrap();
    assert_eq!(o.inserted, bad_at as u64);

    // The bad value first, and 100,000 rows streamed after the server refused it.
    let rows = (0..100_000).map(|i| Coded { code: if i == 0 { too_long() } else { code(10_000 + i) }, n: i as i64 });
    let err = Coded::bulk_create_new(&mut client, rows).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    assert_eq!((err.row(), err.field()), (Some(0), Some("code")), "{err}");
    assert!(err.connection_usable());
    assert_eq!(count(&client, "coded").await, bad_at as i64);

    // A short batch (the one-statement path) refuses it too, with the same code.
    let batch = [Coded { code: code(1_000_000), n: -1 }, Coded { code: too_long(), n: -2 }];
    let err = Coded::bulk_create_new(&mut client, batch).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::STRING_DATA_RIGHT_TRUNCATION), "{err}");
    assert!(err.to_string().contains("too long"), "{err}");
    assert_eq!(count(&client, "coded").await, bad_at as i64);
    db.drop().await;
}

#[tokio::test]
async fn serialization_failure_is_retryable() {
    serialization_failure(0).await;
}

#[tokio::test]
async fn serialization_failure_is_retryable_through_copy() {
    serialization_failure(COPY_BATCH).await;
}

/// A REPEATABLE READ caller whose snapshot predates another writer's commit of
/// the same key: the anti-join cannot see the row, `ON CONFLICT` finds it, and
/// PostgreSQL reports a serialization failure, which a retry resolves.
async fn serialization_failure(pad: usize) {
    let (db, mut client) = setup(&format!("serialization_{pad}")).await;
    let mut other = db.connect().await;
    let batch = || padded([doc("k", Some("mine"), 1)], pad);
    // Warm up the session (schema check, scratch table) outside the snapshot.
    Doc::bulk_create_new(&mut client, [doc("warm", None, 0)]).await.unwrap();

    let mut tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.query_one("SELECT count(*) FROM doc", &[]).await.unwrap(); // takes the snapshot
    let o = Doc::bulk_create_new(&mut other, [doc("k", Some("theirs"), 2)]).await.unwrap();
    assert_eq!(o.inserted, 1);

    let err = Doc::bulk_create_new(&mut tx, batch()).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some(&SqlState::T_R_SERIALIZATION_FAILURE), "{err}");
    assert!(err.is_retryable(), "{err}");
    assert!(err.connection_usable());
    tx.rollback().await.unwrap();

    // The retry, in a fresh transaction, skips the key the other writer stored.
    let o = Doc::bulk_create_new(&mut client, batch()).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (1 + pad as u64, pad as u64, 1));
    let body: String = client.query_one("SELECT \"Body Text\" FROM doc WHERE path = 'k'", &[]).await.unwrap().get(0);
    assert_eq!(body, "theirs");
    db.drop().await;
}

#[tokio::test]
async fn lost_connection_is_retryable_on_a_new_connection() {
    let (db, mut client) = setup("lost_connection").await;
    Doc::bulk_create_new(&mut client, [doc("a", None, 1)]).await.unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let admin = db.connect().await;
    let killed: bool = admin.query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid]).await.unwrap().get(0);
    assert!(killed);
    // Let the client notice the server's goodbye before the next call.
    for _ in 0..500 {
        if client.is_closed() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    for batch in [vec![doc("b", None, 2)], padded([doc("b", None, 2)], COPY_BATCH).collect()] {
        let err = Doc::bulk_create_new(&mut client, &batch).await.unwrap_err();
        assert!(matches!(err, Error::Database { .. }), "{err:?}");
        assert!(err.is_retryable(), "{err}");
        assert!(!err.connection_usable(), "{err}");
    }
    // The retry on a new connection stores the batch.
    let mut fresh = db.connect().await;
    let o = Doc::bulk_create_new(&mut fresh, [doc("a", None, 1), doc("b", None, 2)]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    db.drop().await;
}

/// A mood the table keeps as text under a domain (not an enum type): the
/// scratch table's column takes the model's type name, so the domain's
/// `CHECK` runs as the rows are copied.
#[derive(bulk_runtime::BulkType, Debug, Clone, Copy, PartialEq)]
#[bulk(type = "checked_mood")]
enum CheckedMood {
    Calm,
    Cross,
}

/// README, "What one call does": errors carry "the row index and field when
/// the client or server can tell". A domain whose `CHECK` calls a PL/pgSQL
/// function that fails adds its own lines to the error's context before the
/// COPY's (`SQL statement "..."`, `PL/pgSQL function ... at SQL statement`, then `COPY __bulk_..., line N, column mood`), and the
/// statement's text may hold anything, here `, line 2` and `, column kind`.
/// The row and field come from the COPY's own line (before the fix they
/// were read from the first `, line ` and `, column ` anywhere in the
/// context: row 1, no field).
#[tokio::test]
async fn copy_error_with_a_context_of_several_lines_names_row_and_field_from_the_copy_line() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "feeling", unique(n))]
    struct Feeling {
        n: i64,
        mood: CheckedMood,
    }
    let db = TestDb::new("copy_context_lines").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE allowed (label text, kind text);
             INSERT INTO allowed VALUES ('calm', 'verse, line 2, column kind');
             CREATE FUNCTION mood_allowed(v text) RETURNS boolean LANGUAGE plpgsql AS $$
             DECLARE one int;
             BEGIN
               -- Divides by zero for a label not in the table.
               SELECT 1 / count(*) INTO one FROM allowed WHERE label = v AND kind = 'verse, line 2, column kind';
               RETURN true;
             END $$;
             CREATE DOMAIN checked_mood AS text CHECK (mood_allowed(VALUE));
             CREATE TABLE feeling (n bigint PRIMARY KEY, mood checked_mood NOT NULL);",
        )
        .await
        .unwrap();
    let bad_at = COPY_BATCH + 7;
    let rows = (0..bad_at + 3)
        .map(|i| Feeling { n: i as i64, mood: if i == bad_at { CheckedMood::Cross } else { CheckedMood::Calm } });
    let err = Feeling::bulk_create_new(&mut client, rows).await.unwrap_err();
    let context = err.db_error().and_then(|d| d.where_()).unwrap_or_default().to_owned();
    assert_eq!(count(&client, "feeling").await, 0);
    db.drop().await;
    assert_eq!(err.sqlstate(), Some(&SqlState::DIVISION_BY_ZERO), "{err}");
    assert_eq!(err.step(), Some(Step::Copy), "{err}");
    assert!(context.lines().count() > 1, "the context has several lines: {context:?}");
    assert_eq!((err.row(), err.field()), (Some(bad_at), Some("mood")), "{err}; the server's context: {context:?}");
}
