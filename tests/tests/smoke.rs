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
