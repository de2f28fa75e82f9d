//! The stored record: who retweeted which tweet, and whose tweet it was.

use bulk_runtime::BulkCreateNew;

/// One retweet. A retweeter retweets a tweet at most once, so (tweet,
/// retweeter) is the unique key; polls that see the same retweet again skip it.
///
/// On a Citus cluster the migration distributes the table by tweet (the
/// first column of the key), so the retweets of one tweet live on one shard;
/// on plain PostgreSQL `distribute_by` changes only the primary key, which
/// is `(id, tweet)`.
#[derive(BulkCreateNew, Debug, Clone, PartialEq, Eq)]
#[bulk(table = "retweet", unique(tweet, retweeter), distribute_by(tweet))]
pub struct Retweet {
    /// The retweeted (original) tweet.
    pub tweet: i64,
    /// The user who retweeted it.
    #[bulk(index)]
    pub retweeter: i64,
    /// The author of the original tweet.
    #[bulk(index)]
    pub original_author: i64,
}

/// The table name, for the app's own queries.
pub fn table() -> String {
    bulk_runtime::quote_ident(Retweet::model().table())
}
