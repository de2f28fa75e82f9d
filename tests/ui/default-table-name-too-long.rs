use bulk_runtime::BulkCreateNew;

// snake_case of the struct name is 64 bytes.
#[derive(BulkCreateNew)]
#[bulk(unique(a))]
struct AVeryLongStructNameWhoseSnakeCaseIsExactlySixtyFourBytesLongXxyz {
    a: i64,
    ééééééééééééééééééééééééééééééééé: i64,
}

fn main() {}
