//! Names of exactly 63 bytes, the most PostgreSQL keeps, are accepted:
//! derived from the struct and field names, and written out (also in
//! multi-byte characters).
#![allow(dead_code)]

use bulk_runtime::BulkCreateNew;

// The struct name (its own snake_case) and the key field are 63 bytes.
#[derive(BulkCreateNew)]
#[bulk(unique(fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff))]
#[allow(non_camel_case_types)]
struct ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt {
    fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff: i64,
    #[bulk(rename = "ééééééééééééééééééééééééééééééé_")]
    b: i64,
}

#[derive(BulkCreateNew)]
#[bulk(
    table = "ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt",
    schema = "sssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss",
    id = "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii",
    unique(k)
)]
struct Explicit {
    #[bulk(rename = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk", index)]
    k: i64,
}

fn main() {
    let m = ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt::model();
    assert_eq!(m.table().len(), 63);
    assert_eq!(m.columns()[1].name().len(), 63);
    let sql = Explicit::model().migration_sql();
    for line in sql.lines() {
        assert!(!line.is_empty());
    }
}
