//! A model `Feed` whose field type is the user's own `FeedColumns` (a
//! newtype), and a model `Item` next to a user struct `ItemColumns`: the
//! derive's generated `<Model>Columns` must not capture the user's name.
#![allow(dead_code)]

use bulk_runtime::{BulkCreateNew, BulkType};

#[derive(BulkType, Debug, Clone, PartialEq)]
pub struct FeedColumns(pub String);

// The derive's own `FeedColumns` lives in a module of its own, so it does
// not hide this one in the field types the derive repeats.
#[derive(BulkCreateNew)]
#[bulk(unique(id), id = false)]
pub struct Feed {
    pub id: i64,
    pub columns: FeedColumns,
}

pub struct ItemColumns {
    pub mine: bool,
}

#[derive(BulkCreateNew)]
#[bulk(unique(id), id = false)]
pub struct Item {
    pub id: i64,
    pub v: i64,
}

fn main() {
    let _ = Feed::columns().columns;
    let _ = ItemColumns { mine: true }.mine;
    let _ = Item::columns().v;
}
