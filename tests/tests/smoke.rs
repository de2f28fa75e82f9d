use bulk_runtime::BulkCreateNew;
use bulk_tests::{TestDb, count};

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "retweeter", unique(tweet, retweeter))]
pub struct Retweet {
    pub tweet: i64,
    #[bulk(index)]
    pub retweeter: i64,
    #[bulk(index)]
    pub original_author: i64,
}

fn rt(tweet: i64, retweeter: i64) -> Retweet {
    Retweet { tweet, retweeter, original_author: 7 }
}

#[tokio::test]
async fn original_scenario() {
    let db = TestDb::new("original_scenario").await;
    let mut client = db.connect().await;
    println!("{}", Retweet::model().migration_sql());
    client.batch_execute(&Retweet::model().migration_sql()).await.unwrap();
    let o = Retweet::bulk_create_new(&mut client, &[rt(1, 1)]).await.unwrap();
    assert_eq!(o.to_string(), "1 of 1 record added");
    let o = Retweet::bulk_create_new(&mut client, &[rt(1, 1), rt(1, 2)]).await.unwrap();
    assert_eq!(o.to_string(), "1 of 2 records added");
    let o = Retweet::bulk_create_new(&mut client, vec![rt(1, 1), rt(1, 2), rt(1, 3), rt(2, 1)]).await.unwrap();
    assert_eq!(o.to_string(), "2 of 4 records added");
    assert_eq!(o.skipped, 2);
    assert_eq!(count(&client, "retweeter").await, 4);
    db.drop().await;
}

/// A test that panics while its session holds a lock in an open transaction
/// still drops its schema (the harness ends the session first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_still_drops_its_schema() {
    let admin = TestDb::new("failed_test_probe").await;
    let probe = admin.connect_plain().await;
    let failed = tokio::spawn(async {
        let db = TestDb::new("failed_test").await;
        let client = db.connect().await;
        client
            .batch_execute("CREATE TABLE held (a int); BEGIN; LOCK TABLE held; INSERT INTO held VALUES (1)")
            .await
            .unwrap();
        let schema = db.schema.clone();
        // The test "fails" here: `db` is dropped while unwinding, its session
        // still holding the lock in an open transaction.
        std::panic::panic_any(schema);
    })
    .await
    .expect_err("the test task panics");
    let schema = failed.into_panic().downcast::<String>().expect("the schema's name");
    let left: i64 =
        probe.query_one("SELECT count(*) FROM pg_namespace WHERE nspname = $1", &[&*schema]).await.unwrap().get(0);
    assert_eq!(left, 0, "schema {schema} is left behind by a failed test");
    admin.drop().await;
}
