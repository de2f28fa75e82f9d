use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    #[bulk(sql_type = "varchar(40) DEFAULT 'x'")]
    author: String,
}

fn main() {}
