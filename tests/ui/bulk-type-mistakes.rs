use bulk_runtime::BulkType;

#[derive(BulkType)]
#[bulk(type = "Mood; DROP TABLE x", tpye = "mood")]
enum Mood {
    Happy,
    #[bulk(rename = "happy")]
    Glad,
    Sad(i32),
}

#[derive(BulkType)]
struct Pair(i64, i64);

#[derive(BulkType)]
#[bulk(type = "user_id")]
struct UserId(i64);

fn main() {}
