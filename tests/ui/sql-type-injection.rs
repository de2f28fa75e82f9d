use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    #[bulk(sql_type = "text); DROP TABLE users; --")]
    author: String,
}

fn main() {}
