use bulk_runtime::BulkCreateNew;

// README's gaps: arrays of more than one dimension, borrowed arrays, arrays
// of `Json<T>`, `&str` elements; each must be an error on its own field.
#[derive(BulkCreateNew)]
#[bulk(unique(k))]
struct Row<'a> {
    k: i64,
    nested: Vec<Vec<i64>>,
    borrowed: &'a [i64],
    json: Vec<bulk_runtime::Json<i64>>,
    strs: Vec<&'a str>,
}

fn main() {}
