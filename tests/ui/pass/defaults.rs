//! The smallest model: defaults for the table name and the surrogate key;
//! a model without surrogate key; raw field names in the unique key.

use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter))]
pub struct RetweetV2 {
    pub tweet: i64,
    pub retweeter: i64,
}

#[derive(BulkCreateNew)]
#[bulk(id = false, unique(day))]
struct HTTPDailyStat {
    day: i32,
    #[bulk(index)]
    hits: i64,
}

#[derive(BulkCreateNew)]
#[bulk(unique(r#type, r#match))]
struct Keyword {
    r#type: String,
    r#match: i16,
}

#[derive(BulkCreateNew)]
#[bulk(unique(type))]
struct BareKeyword {
    r#type: String,
}

fn main() {
    let key: Vec<_> = Keyword::model().unique_key().map(|c| c.name()).collect();
    assert_eq!(key, ["type", "match"]);
    let key: Vec<_> = BareKeyword::model().unique_key().map(|c| c.name()).collect();
    assert_eq!(key, ["type"]);
    let _ = Keyword { r#type: String::new(), r#match: 1 }.copy_values();
    let _ = BareKeyword { r#type: String::new() }.copy_values();
    assert_eq!(RetweetV2::model().table(), "retweet_v2");
    assert_eq!(RetweetV2::model().id_column(), Some("id"));
    assert_eq!(HTTPDailyStat::model().table(), "http_daily_stat");
    assert_eq!(HTTPDailyStat::model().id_column(), None);
    let _ = RetweetV2 { tweet: 1, retweeter: 2 }.copy_values();
    let _ = HTTPDailyStat { day: 1, hits: 2 }.copy_values();
}
