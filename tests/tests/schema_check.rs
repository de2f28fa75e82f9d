//! The check of the live table against the model: every kind of mismatch is
//! refused before anything is written, and compatible tables pass.

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem, Upsert, verify_schema};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

/// Key `(a, b)`, a nullable column and a plain one; no surrogate id, so the
/// hand-written tables below need none.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "item", unique(a, b), id = false)]
pub struct Item {
    pub a: i64,
    pub b: String,
    pub note: Option<String>,
    pub n: i32,
}

fn item(a: i64, b: &str) -> Item {
    Item { a, b: b.into(), note: Some("note".into()), n: 7 }
}

/// A fresh schema holding the table created by `ddl` (nothing when empty).
async fn with_table(name: &str, ddl: &str) -> (TestDb, Client) {
    let db = TestDb::new(name).await;
    let client = db.connect().await;
    if !ddl.is_empty() {
        client.batch_execute(ddl).await.unwrap();
    }
    (db, client)
}

/// Runs a call that must fail the schema check, with `rows` and again with
/// `rows` repeated to a batch long enough for the COPY path; checks that both
/// and `verify_schema` report the same problems, and returns them with the
/// error's Display.
async fn refused<T: BulkCreateNew>(client: &mut Client, rows: &[T]) -> (Vec<SchemaProblem>, String) {
    let err = T::bulk_create_new(client, rows).await.unwrap_err();
    let long = T::bulk_create_new(client, rows.iter().cycle().take(COPY_BATCH)).await.unwrap_err();
    assert_eq!(long.to_string(), err.to_string(), "both paths refuse the same way");
    let shown = err.to_string();
    let Error::SchemaMismatch { table, model, problems } = err else {
        panic!("expected SchemaMismatch, got {err:?}");
    };
    assert_eq!(table, T::model().qualified_name());
    assert_eq!(model, T::model().struct_name());
    assert!(shown.contains(&table), "Display names the table: {shown}");
    assert!(shown.contains(model), "Display names the model: {shown}");
    assert!(!problems.is_empty());
    assert_eq!(verify_schema::<T>(client).await.unwrap(), problems, "verify_schema agrees with the call");
    (problems, shown)
}

#[tokio::test]
async fn table_missing() {
    let (db, mut client) = with_table("sc_table_missing", "").await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(problems, [SchemaProblem::TableMissing]);
    assert!(shown.contains(r#"table "item""#) && shown.contains("does not exist"), "{shown}");
    // After the migration, the same connection works (the check runs again).
    client.batch_execute(&Item::model().migration_sql()).await.unwrap();
    assert_eq!(verify_schema::<Item>(&client).await.unwrap(), []);
    let o = Item::bulk_create_new(&mut client, &[item(1, "x")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    db.drop().await;
}

#[tokio::test]
async fn column_missing() {
    let (db, mut client) = with_table(
        "sc_column_missing",
        "CREATE TABLE item (a bigint NOT NULL, b text NOT NULL, n integer NOT NULL, UNIQUE (a, b))",
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    match &problems[..] {
        [SchemaProblem::ColumnMissing { column, expected }] => {
            assert_eq!(column, "note");
            assert!(expected.starts_with("text"), "{expected}");
        }
        other => panic!("{other:?}"),
    }
    assert!(shown.contains(r#"column "note" is missing"#) && shown.contains("expected text"), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    client.batch_execute("ALTER TABLE item ADD COLUMN note varchar(100)").await.unwrap();
    let o = Item::bulk_create_new(&mut client, &[item(1, "x")]).await.unwrap();
    assert_eq!(o.inserted, 1, "passes once the column is added");
    db.drop().await;
}

#[tokio::test]
async fn column_of_an_incompatible_type() {
    // `n` holds text, not an integer; `a` is too narrow for an i64.
    let (db, mut client) = with_table(
        "sc_column_type",
        "CREATE TABLE item (a integer NOT NULL, b text NOT NULL, note text, n text NOT NULL, UNIQUE (a, b))",
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().any(|p| matches!(p, SchemaProblem::ColumnType { column, expected, found }
            if column == "a" && found == "integer" && expected.starts_with("bigint") && !expected.contains("integer"))),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| matches!(p, SchemaProblem::ColumnType { column, expected, found }
            if column == "n" && found == "text" && expected.starts_with("integer"))),
        "{problems:?}"
    );
    assert!(shown.contains(r#"column "n" has type text, expected integer"#), "{shown}");
    assert!(shown.contains(r#"column "a" has type integer, expected bigint"#), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn option_field_on_a_not_null_column() {
    let (db, mut client) = with_table(
        "sc_not_null",
        "CREATE TABLE item (a bigint NOT NULL, b text NOT NULL, note text NOT NULL, n integer NOT NULL, UNIQUE (a, b))",
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(problems, [SchemaProblem::ColumnNotNull { column: "note".into() }]);
    assert!(shown.contains(r#"column "note" is NOT NULL"#) && shown.contains("Option"), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn required_column_the_model_does_not_write() {
    let (db, mut client) = with_table(
        "sc_required_column",
        "CREATE TABLE item (a bigint NOT NULL, b text NOT NULL, note text, n integer NOT NULL,
                            owner text NOT NULL, UNIQUE (a, b))",
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(problems, [SchemaProblem::RequiredColumnNotInModel { column: "owner".into() }]);
    assert!(shown.contains(r#"column "owner" is NOT NULL without a default"#), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    // With a default, the column is fine.
    client.batch_execute("ALTER TABLE item ALTER COLUMN owner SET DEFAULT 'nobody'").await.unwrap();
    let o = Item::bulk_create_new(&mut client, &[item(1, "x")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    db.drop().await;
}

/// A nullable field on a column of a domain (`note_label`, which the field
/// names).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "labelled", unique(k), id = false)]
struct Labelled {
    k: i64,
    #[bulk(sql_type = "note_label")]
    label: Option<String>,
}

/// A column whose domain is `NOT NULL` (itself, or a domain it is over)
/// refuses NULL as a `NOT NULL` column does: an `Option` field on it is
/// refused by the check, on both paths (before the fix the check passed,
/// and a batch with a `None` failed in the insert, 23502).
#[tokio::test]
async fn option_field_on_a_column_of_a_not_null_domain() {
    for domains in [
        "CREATE DOMAIN note_label AS text NOT NULL",
        "CREATE DOMAIN strict_label AS text NOT NULL; CREATE DOMAIN note_label AS strict_label",
    ] {
        let (db, mut client) = with_table(
            "sc_domain_not_null",
            &format!("{domains}; CREATE TABLE labelled (k bigint PRIMARY KEY, label note_label)"),
        )
        .await;
        let rows = [Labelled { k: 1, label: Some("one".into()) }, Labelled { k: 2, label: None }];
        let (problems, shown) = refused(&mut client, &rows).await;
        assert_eq!(problems, [SchemaProblem::ColumnNotNull { column: "label".into() }], "{domains}");
        assert!(shown.contains(r#"column "label" is NOT NULL"#) && shown.contains("Option"), "{shown}");
        assert_eq!(count(&client, "labelled").await, 0);
        db.drop().await;
    }
}

/// A column of a `NOT NULL` domain without a default is required, as a
/// `NOT NULL` column is (before the fix the check passed, and every insert
/// failed, 23502); once the domain has a default, the model may leave it
/// out and the domain's default fills it.
#[tokio::test]
async fn required_column_of_a_not_null_domain_the_model_does_not_write() {
    let (db, mut client) = with_table(
        "sc_domain_required",
        &format!("CREATE DOMAIN owner_name AS text NOT NULL; CREATE TABLE item ({ITEM_COLUMNS}, owner owner_name, UNIQUE (a, b))"),
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(problems, [SchemaProblem::RequiredColumnNotInModel { column: "owner".into() }]);
    assert!(shown.contains(r#"column "owner" is NOT NULL without a default"#), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    client.batch_execute("ALTER DOMAIN owner_name SET DEFAULT 'nobody'").await.unwrap();
    let o = Item::bulk_create_new(&mut client, &[item(1, "x")]).await.unwrap();
    assert_eq!(o.inserted, 1);
    let owner: String = client.query_one("SELECT owner FROM item", &[]).await.unwrap().get(0);
    assert_eq!(owner, "nobody");
    db.drop().await;
}

/// A `NOT NULL` column the model leaves out passes when its domain has a
/// default, which fills it, on both paths (before the fix the check
/// refused it as a required column without a default).
#[tokio::test]
async fn not_null_column_whose_domain_has_a_default_may_be_left_out_of_the_model() {
    let (db, mut client) = with_table(
        "sc_domain_default",
        &format!(
            "CREATE DOMAIN owner_name AS text DEFAULT 'nobody';
             CREATE TABLE item ({ITEM_COLUMNS}, owner owner_name NOT NULL, UNIQUE (a, b))"
        ),
    )
    .await;
    assert_eq!(verify_schema::<Item>(&client).await.unwrap(), []);
    let o = Item::bulk_create_new(&mut client, &[item(1, "x"), item(2, "x")]).await.unwrap();
    assert_eq!(o.inserted, 2);
    let o = Item::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|a| item(a, "y"))).await.unwrap();
    assert_eq!(o.inserted, COPY_BATCH as u64);
    let owners: i64 = client.query_one("SELECT count(*) FROM item WHERE owner = 'nobody'", &[]).await.unwrap().get(0);
    assert_eq!(owners, 2 + COPY_BATCH as i64, "the domain's default filled every row");
    db.drop().await;
}

const ITEM_COLUMNS: &str = "a bigint NOT NULL, b text NOT NULL, note text, n integer NOT NULL";

/// The single `UniqueKeyMissing` problem of `problems`, as `(key, rejected)`.
fn unique_key_missing(problems: &[SchemaProblem]) -> (Vec<String>, Vec<String>) {
    match problems {
        [SchemaProblem::UniqueKeyMissing { key, rejected }] => (key.clone(), rejected.clone()),
        other => panic!("expected only UniqueKeyMissing, got {other:?}"),
    }
}

#[tokio::test]
async fn no_unique_index_on_the_key() {
    let (db, mut client) = with_table(
        "sc_no_unique",
        &format!("CREATE TABLE item ({ITEM_COLUMNS}); CREATE INDEX item_a_b ON item (a, b)"),
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    let (key, rejected) = unique_key_missing(&problems);
    assert_eq!(key, ["a", "b"]);
    assert_eq!(rejected, Vec::<String>::new(), "a plain index is not a candidate");
    assert!(shown.contains("no unique constraint or unique index on exactly (a, b)"), "{shown}");
    assert!(shown.contains("ON CONFLICT"), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn unique_index_on_part_of_the_key() {
    let (db, mut client) =
        with_table("sc_unique_part", &format!("CREATE TABLE item ({ITEM_COLUMNS}, UNIQUE (a))")).await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    let (key, _) = unique_key_missing(&problems);
    assert_eq!(key, ["a", "b"]);
    assert!(shown.contains("exactly (a, b)"), "{shown}");
    // A unique index on more than the key does not do either.
    client.batch_execute("CREATE UNIQUE INDEX item_wide ON item (a, b, n)").await.unwrap();
    let (problems, _) = refused(&mut client, &[item(1, "x")]).await;
    unique_key_missing(&problems);
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn partial_unique_index() {
    let (db, mut client) = with_table(
        "sc_unique_partial",
        &format!("CREATE TABLE item ({ITEM_COLUMNS}); CREATE UNIQUE INDEX item_recent ON item (a, b) WHERE n > 0"),
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    let (_, rejected) = unique_key_missing(&problems);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("item_recent") && rejected[0].contains("partial"), "{rejected:?}");
    assert!(shown.contains(r#"unique index "item_recent" on (a, b) is partial"#), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn deferrable_unique_constraint() {
    let (db, mut client) = with_table(
        "sc_unique_deferrable",
        &format!(
            "CREATE TABLE item ({ITEM_COLUMNS}, CONSTRAINT item_later UNIQUE (a, b) DEFERRABLE INITIALLY DEFERRED)"
        ),
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    let (_, rejected) = unique_key_missing(&problems);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(shown.contains(r#"unique index "item_later" on (a, b) is deferrable"#), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

/// A deferrable constraint on the key beside an immediate unique index:
/// the key has an index the call can use, but `ON CONFLICT (a, b)` refuses
/// any statement on the table (55000), so the check refuses it by name.
#[tokio::test]
async fn deferrable_unique_constraint_beside_the_key_index() {
    let (db, mut client) = with_table(
        "sc_unique_deferrable_beside",
        &format!(
            "CREATE TABLE item ({ITEM_COLUMNS}, PRIMARY KEY (a, b), \
             CONSTRAINT item_later UNIQUE (b, a) INCLUDE (n) DEFERRABLE INITIALLY IMMEDIATE)"
        ),
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(
        problems,
        [SchemaProblem::DeferrableKeyConstraint { index: "item_later".into(), key: vec!["a".into(), "b".into()] }]
    );
    assert!(shown.contains(r#"unique constraint "item_later" on (a, b) is DEFERRABLE"#), "{shown}");
    // The upsert and the returning calls are refused the same way.
    let err = Item::bulk(&mut client).upsert(Upsert::columns(["n"])).run(&[item(1, "x")]).await.unwrap_err();
    assert!(err.to_string().contains("DEFERRABLE"), "{err}");
    let err = Item::bulk(&mut client).returning_keys().run(&[item(1, "x")]).await.unwrap_err();
    assert!(err.to_string().contains("DEFERRABLE"), "{err}");
    assert_eq!(count(&client, "item").await, 0);
    // Without it, the same table takes the rows.
    client.batch_execute("ALTER TABLE item DROP CONSTRAINT item_later").await.unwrap();
    assert_eq!(Item::bulk_create_new(&mut client, &[item(1, "x"), item(1, "x")]).await.unwrap().inserted, 1);
    db.drop().await;
}

#[tokio::test]
async fn expression_unique_index() {
    let (db, mut client) = with_table(
        "sc_unique_expression",
        &format!("CREATE TABLE item ({ITEM_COLUMNS}); CREATE UNIQUE INDEX item_lower ON item (a, lower(b))"),
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    let (_, rejected) = unique_key_missing(&problems);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].contains("item_lower") && rejected[0].contains("expression"), "{rejected:?}");
    assert!(shown.contains("is on an expression"), "{shown}");
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn invalid_unique_index() {
    // A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an invalid index behind.
    let (db, mut client) = with_table(
        "sc_unique_invalid",
        &format!("CREATE TABLE item ({ITEM_COLUMNS}); INSERT INTO item VALUES (1, 'x', NULL, 0), (1, 'x', NULL, 0)"),
    )
    .await;
    client.batch_execute("CREATE UNIQUE INDEX CONCURRENTLY item_ab ON item (a, b)").await.unwrap_err();
    let (problems, shown) = refused(&mut client, &[item(2, "y")]).await;
    let (_, rejected) = unique_key_missing(&problems);
    assert!(rejected.len() == 1 && rejected[0].contains("invalid"), "{rejected:?}");
    assert!(shown.contains(r#""item_ab""#), "{shown}");
    assert_eq!(count(&client, "item").await, 2);
    db.drop().await;
}

#[tokio::test]
async fn nulls_distinct_index_for_a_nulls_not_distinct_model() {
    #[derive(BulkCreateNew)]
    #[bulk(table = "tag", unique(owner, label), nulls_not_distinct)]
    struct Tag {
        owner: i64,
        label: Option<String>,
    }
    let (db, mut client) = with_table(
        "sc_nulls_distinct",
        "CREATE TABLE tag (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner bigint NOT NULL, label text,
                           UNIQUE (owner, label))",
    )
    .await;
    let (problems, shown) = refused(&mut client, &[Tag { owner: 1, label: None }]).await;
    let (key, rejected) = unique_key_missing(&problems);
    assert_eq!(key, ["owner", "label"]);
    assert!(rejected.len() == 1 && rejected[0].contains("NULLs as distinct"), "{rejected:?}");
    assert!(shown.contains("nulls_not_distinct"), "{shown}");
    assert_eq!(count(&client, "tag").await, 0);
    // Recreated NULLS NOT DISTINCT, it passes.
    client
        .batch_execute(
            "ALTER TABLE tag DROP CONSTRAINT tag_owner_label_key;
             ALTER TABLE tag ADD CONSTRAINT tag_key UNIQUE NULLS NOT DISTINCT (label, owner)",
        )
        .await
        .unwrap();
    let o = Tag::bulk_create_new(&mut client, [Tag { owner: 1, label: None }, Tag { owner: 1, label: None }])
        .await
        .unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    db.drop().await;
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let (db, mut client) = with_table(
        "sc_all_problems",
        "CREATE TABLE item (a bigint NOT NULL, b bytea NOT NULL, note text NOT NULL, extra int NOT NULL)",
    )
    .await;
    let (problems, shown) = refused(&mut client, &[item(1, "x")]).await;
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| matches!(p, SchemaProblem::ColumnType { column, found, .. } if column == "b" && found == "bytea"))
    );
    assert!(problems.contains(&SchemaProblem::ColumnNotNull { column: "note".into() }));
    assert!(problems.iter().any(|p| matches!(p, SchemaProblem::ColumnMissing { column, .. } if column == "n")));
    assert!(problems.contains(&SchemaProblem::RequiredColumnNotInModel { column: "extra".into() }));
    assert!(problems.iter().any(|p| matches!(p, SchemaProblem::UniqueKeyMissing { .. })));
    for p in &problems {
        assert!(shown.contains(&p.to_string()), "{p} missing from {shown}");
    }
    assert_eq!(count(&client, "item").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn compatible_tables_pass() {
    /// Narrower Rust types than the columns, and a DDL override.
    #[derive(BulkCreateNew, Debug, PartialEq)]
    #[bulk(table = "wide", unique(a, b), id = false)]
    struct Wide {
        a: i32,
        b: String,
        small: i16,
        ratio: f32,
        note: Option<String>,
        #[bulk(sql_type = "varchar(40)")]
        code: String,
        doc: serde_json::Value,
    }
    // Columns in another order, wider types, a unique CONSTRAINT with the key
    // reversed, plus columns the model does not write (nullable, defaulted,
    // identity, generated).
    let (db, mut client) = with_table(
        "sc_compatible",
        "CREATE TABLE wide (
             serial_no bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             doc json NOT NULL,
             code varchar(40) NOT NULL,
             note varchar(200),
             ratio double precision NOT NULL,
             small numeric NOT NULL,
             b character varying(40) NOT NULL,
             a bigint NOT NULL,
             comment text,
             created timestamptz NOT NULL DEFAULT now(),
             doubled bigint GENERATED ALWAYS AS (a * 2) STORED,
             CONSTRAINT wide_key UNIQUE (b, a)
         )",
    )
    .await;
    assert_eq!(verify_schema::<Wide>(&client).await.unwrap(), []);
    let rows = [
        Wide {
            a: i32::MAX,
            b: "b".repeat(40),
            small: i16::MIN,
            ratio: 0.5,
            note: None,
            code: "c".into(),
            doc: serde_json::json!({"a": [1]}),
        },
        Wide {
            a: i32::MIN,
            b: "x".into(),
            small: 3,
            ratio: -1.25,
            note: Some("n".into()),
            code: String::new(),
            doc: serde_json::json!(null),
        },
    ];
    let o = Wide::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(o.inserted, 2);
    let o = Wide::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (0, 2), "ON CONFLICT and the anti-join use the reversed constraint");
    let got: Vec<Wide> = client
        .query(
            "SELECT a::int4, b, small::int2, ratio::float4, note, code, doc::jsonb, doubled FROM wide ORDER BY a DESC",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, i64>(7), 2 * i64::from(r.get::<_, i32>(0)));
            Wide {
                a: r.get(0),
                b: r.get(1),
                small: r.get(2),
                ratio: r.get(3),
                note: r.get(4),
                code: r.get(5),
                doc: r.get(6),
            }
        })
        .collect();
    assert_eq!(got, rows);
    db.drop().await;
}

/// A model whose fields include a generated column and an identity column
/// `GENERATED ALWAYS`, which no insert may give a value.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "entry", unique(k), id = false)]
struct Entry {
    k: i64,
    amount: i64,
    doubled: i64,
    serial_no: i64,
}

/// A field on a column the table computes (`GENERATED ALWAYS AS (...)
/// STORED`) or assigns (`GENERATED ALWAYS AS IDENTITY`) is refused by the
/// check, naming the column, on both paths (before the fix the check
/// passed and every call failed, 428C9). An identity column `GENERATED BY
/// DEFAULT` takes the model's values.
#[tokio::test]
async fn field_on_a_generated_always_column_is_refused() {
    let (db, mut client) = with_table(
        "sc_generated",
        "CREATE TABLE entry (k bigint PRIMARY KEY, amount bigint NOT NULL,
                             doubled bigint GENERATED ALWAYS AS (amount * 2) STORED,
                             serial_no bigint GENERATED ALWAYS AS IDENTITY)",
    )
    .await;
    let rows = [Entry { k: 1, amount: 5, doubled: 10, serial_no: 100 }];
    let (problems, shown) = refused(&mut client, &rows).await;
    assert_eq!(
        problems,
        [
            SchemaProblem::ColumnGenerated { column: "doubled".into(), identity: false },
            SchemaProblem::ColumnGenerated { column: "serial_no".into(), identity: true },
        ]
    );
    assert!(
        shown.contains(r#"column "doubled" is GENERATED ALWAYS AS (...) STORED"#)
            && shown.contains(r#"column "serial_no" is an identity column GENERATED ALWAYS"#)
            && shown.contains("#[bulk(skip)]"),
        "{shown}"
    );
    assert_eq!(count(&client, "entry").await, 0);
    // An identity column that takes given values, and no generated column: fine.
    client
        .batch_execute("ALTER TABLE entry ALTER serial_no SET GENERATED BY DEFAULT, ALTER doubled DROP EXPRESSION")
        .await
        .unwrap();
    assert_eq!(verify_schema::<Entry>(&client).await.unwrap(), []);
    let o = Entry::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(o.inserted, 1);
    let serial_no: i64 = client.query_one("SELECT serial_no FROM entry", &[]).await.unwrap().get(0);
    assert_eq!(serial_no, 100, "the model's value");
    db.drop().await;
}

#[tokio::test]
async fn compatible_unique_index_in_another_order() {
    let (db, mut client) = with_table(
        "sc_unique_reversed",
        &format!(
            "CREATE TABLE item ({ITEM_COLUMNS});
             CREATE UNIQUE INDEX item_ba ON item (b, a) INCLUDE (n);
             CREATE UNIQUE INDEX item_partial ON item (a) WHERE n < 0"
        ),
    )
    .await;
    assert_eq!(verify_schema::<Item>(&client).await.unwrap(), []);
    let o = Item::bulk_create_new(&mut client, [item(1, "x"), item(1, "y"), item(1, "x")]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (2, 1));
    db.drop().await;
}

#[tokio::test]
async fn each_model_is_checked_even_after_another_model_of_the_same_table() {
    // Same table, same column names and types as `Item`, but another key and an
    // Option where `Item` has none. `Item` runs first on the session; the check
    // of these models must still run (and fail) on the same connection.
    #[derive(BulkCreateNew)]
    #[bulk(table = "item", unique(a), id = false)]
    struct ItemByA {
        a: i64,
        b: String,
        note: Option<String>,
        n: i32,
    }
    #[derive(BulkCreateNew)]
    #[bulk(table = "item", unique(a, b), id = false)]
    struct ItemMaybeN {
        a: i64,
        b: String,
        note: Option<String>,
        n: Option<i32>,
    }
    let (db, mut client) = with_table("sc_same_table", &Item::model().migration_sql()).await;
    let o = Item::bulk_create_new(&mut client, &[item(1, "x")]).await.unwrap();
    assert_eq!(o.inserted, 1);

    let (problems, _) = refused(&mut client, &[ItemByA { a: 2, b: "y".into(), note: None, n: 0 }]).await;
    let (key, _) = unique_key_missing(&problems);
    assert_eq!(key, ["a"]);
    let (problems, _) = refused(&mut client, &[ItemMaybeN { a: 3, b: "z".into(), note: None, n: None }]).await;
    assert_eq!(problems, [SchemaProblem::ColumnNotNull { column: "n".into() }]);
    assert_eq!(count(&client, "item").await, 1);
    // The first model still works on the same session.
    let o = Item::bulk_create_new(&mut client, &[item(1, "x"), item(4, "w")]).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));
    db.drop().await;
}

/// A model declared for Citus, distributed by `a`.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "sharded item", unique(a, b), distribute_by(a))]
pub struct ShardedItem {
    pub a: i64,
    pub b: String,
}

/// On plain PostgreSQL the DDL of a `distribute_by` model makes a plain
/// table keyed on `(id, a)`: its Citus call is skipped (no `citus`
/// extension), the script runs twice, and the table passes the check.
#[tokio::test]
async fn a_model_declared_for_citus_migrates_on_plain_postgresql() {
    let (db, mut client) = with_table("sc_citus_ddl", "").await;
    assert!(ShardedItem::model().migration_sql().contains("create_distributed_table"));
    for _ in 0..2 {
        client.batch_execute(&ShardedItem::model().migration_sql()).await.unwrap();
    }
    let primary_key: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_catalog.pg_index AS i
               JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY a.attnum",
            &[&ShardedItem::model().qualified_name()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(primary_key, ["id", "a"]);
    assert_eq!(verify_schema::<ShardedItem>(&client).await.unwrap(), []);
    let rows = [ShardedItem { a: 1, b: "x".into() }, ShardedItem { a: 1, b: "x".into() }];
    let report = ShardedItem::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((report.inserted, report.skipped), (1, 1));
    assert_eq!(count(&client, "sharded item").await, 1);
    db.drop().await;
}
