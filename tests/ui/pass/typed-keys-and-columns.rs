//! The derived key type and column handles: `returning_keys()` needs no
//! type, and upsert columns are named by handles.
use std::borrow::Cow;

use bulk_runtime::{BulkCreateNew, NewRow, Report, Upsert};

#[derive(BulkCreateNew)]
#[bulk(unique(tweet, retweeter))]
struct Retweet {
    tweet: i64,
    retweeter: i64,
    original_author: i64,
    note: Option<String>,
}

#[derive(BulkCreateNew)]
#[bulk(unique(path, rev), nulls_not_distinct)]
struct Borrowed<'a> {
    path: Cow<'a, str>,
    rev: Option<&'a str>,
    r#type: &'a [u8],
}

#[allow(dead_code)]
async fn calls(client: &mut bulk_runtime::tokio_postgres::Client, rows: &[Retweet]) -> Result<(), bulk_runtime::Error> {
    let report: Report<Vec<NewRow<(i64, i64)>>> = Retweet::bulk(client).returning_keys().run(rows).await?;
    let _ = report.returned.first().map(|row| row.key.1);
    let upsert = Upsert::set([Retweet::columns().original_author, Retweet::columns().note]).only_if_changed();
    Retweet::bulk(client).upsert(upsert).run(rows).await?;
    Ok(())
}

fn main() {
    let _: fn() -> <Borrowed<'static> as BulkCreateNew>::Key = || (String::new(), Some(String::new()));
    let _ = Upsert::set([Borrowed::columns().r#type]);
}
