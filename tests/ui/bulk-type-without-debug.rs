use bulk_runtime::BulkType;

// tokio-postgres's `ToSql`, which the derive implements, requires `Debug`.
#[derive(BulkType)]
enum Mood {
    Happy,
    Sad,
}

fn main() {}
