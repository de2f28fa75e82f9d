use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet))]
struct Retweet {
    tweet: i64,
    #[bulk(rename = "the_author_of_the_original_tweet_that_was_retweeted_by_someone_else")]
    original_author: i64,
}

fn main() {}
