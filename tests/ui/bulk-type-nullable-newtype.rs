use bulk_runtime::{BulkCreateNew, BulkType};

#[derive(BulkType, Debug)]
struct MaybeNote(Option<String>);

#[derive(BulkCreateNew)]
#[bulk(unique(note))]
struct Keyed {
    note: MaybeNote,
}

#[derive(BulkCreateNew)]
#[bulk(unique(key))]
struct Doubled {
    key: i64,
    note: Option<MaybeNote>,
}

fn main() {}
