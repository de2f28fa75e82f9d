use bulk_runtime::BulkCreateNew;

#[derive(BulkCreateNew)]
#[bulk(unique(name))]
struct Member {
    #[bulk(sql_type = "text COLLATE case_insensitive")]
    name: String,
    #[bulk(sql_type = "varchar(40) NOT NULL")]
    email: String,
}

fn main() {}
