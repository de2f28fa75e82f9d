//! `distribute_by(field)` and `reference_table`, read back through `citus_table()`.

use bulk_runtime::{BulkCreateNew, CitusTable};

#[derive(BulkCreateNew)]
#[bulk(unique(r#type, retweeter), distribute_by(type))]
struct Distributed {
    #[bulk(rename = "tweet type")]
    r#type: i64,
    retweeter: i64,
}

#[derive(BulkCreateNew)]
#[bulk(unique(code), reference_table, id = false)]
struct Reference {
    code: String,
}

#[derive(BulkCreateNew)]
#[bulk(unique(code))]
struct Plain {
    code: String,
}

fn main() {
    assert_eq!(Distributed::model().citus_table(), CitusTable::Distributed { column: "tweet type" });
    assert_eq!(Reference::model().citus_table(), CitusTable::Reference);
    assert_eq!(Plain::model().citus_table(), CitusTable::None);
    assert!(Distributed::model().migration_sql().contains("create_distributed_table"));
    assert!(!Plain::model().migration_sql().contains("create_distributed_table"));
}
