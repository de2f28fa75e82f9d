//! Live tables whose columns differ from the model's wire types in ways the
//! schema check accepts: a `json` (not `jsonb`) column, a type from an
//! extension installed outside the `search_path`; and a role that may not
//! create temporary tables.

use bulk_runtime::{BulkCreateNew, Error, SchemaProblem, Upsert};
use bulk_tests::{COPY_BATCH, TestDb, count};
use serde_json::json;

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "setting", unique(name), id = false)]
struct Setting {
    name: String,
    value: serde_json::Value,
}

fn settings(len: usize, version: i64) -> Vec<Setting> {
    (0..len)
        .map(|i| Setting { name: format!("setting {i}"), value: json!({ "on": i % 2 == 0, "version": version }) })
        .collect()
}

/// Upsert with `only_if_changed` on a `json` column: equal documents (even
/// written with other white space or key order) are unchanged, others updated.
async fn json_column(len: usize) {
    let db = TestDb::new("json_column").await;
    let mut client = db.connect().await;
    client.batch_execute("CREATE TABLE setting (name text PRIMARY KEY, value json NOT NULL)").await.unwrap();
    let upsert = || Upsert::all_columns().only_if_changed();
    let first = Setting::bulk(&mut client).upsert(upsert()).run(&settings(len, 1)).await.unwrap();
    assert_eq!((first.inserted, first.updated, first.unchanged), (len as u64, 0, 0), "{first}");
    // Stored with other white space and key order: still the same document.
    client
        .batch_execute("UPDATE setting SET value = (' { \"version\" : 1 , \"on\" : ' || (value->>'on') || ' }')::json")
        .await
        .unwrap();
    let same = Setting::bulk(&mut client).upsert(upsert()).run(&settings(len, 1)).await.unwrap();
    assert_eq!((same.inserted, same.updated, same.unchanged), (0, 0, len as u64), "{same}");
    let mut changed = settings(len, 1);
    for row in changed.iter_mut().step_by(3) {
        row.value = json!({ "on": true, "version": 2 });
    }
    let report = Setting::bulk(&mut client).upsert(upsert()).run(&changed).await.unwrap();
    let updated = len.div_ceil(3) as u64;
    assert_eq!((report.inserted, report.updated, report.unchanged), (0, updated, len as u64 - updated), "{report}");
    let v2: i64 =
        client.query_one("SELECT count(*) FROM setting WHERE value->>'version' = '2'", &[]).await.unwrap().get(0);
    assert_eq!(v2 as u64, updated);
    db.drop().await;
}

#[tokio::test]
async fn upsert_only_if_changed_on_a_json_column() {
    json_column(30).await;
}

#[tokio::test]
async fn upsert_only_if_changed_on_a_json_column_through_copy() {
    json_column(COPY_BATCH).await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "member", unique(email), id = false)]
struct Member {
    #[bulk(sql_type = "citext")]
    email: String,
    name: String,
}

/// `citext` installed in `public` while the connection's `search_path` is
/// only the application's schema: `format_type` calls it `public.citext`,
/// which is still the type the model declares.
#[tokio::test]
async fn an_extension_type_outside_the_search_path_is_not_a_mismatch() {
    let db = TestDb::new("citext_elsewhere").await;
    let admin = db.connect_plain().await;
    if let Err(e) = admin.batch_execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public").await {
        // Another test binary may create it at the same moment.
        assert!(
            admin.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'citext'", &[]).await.unwrap().is_some(),
            "{e:?}"
        );
    }
    let mut client = db.connect().await;
    client.batch_execute("CREATE TABLE member (email public.citext PRIMARY KEY, name text NOT NULL)").await.unwrap();
    let problems = bulk_runtime::verify_schema::<Member>(&client).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let rows: Vec<Member> =
        (0..10).map(|i| Member { email: format!("user{i}@example.org"), name: "n".into() }).collect();
    let outcome = Member::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!(outcome.inserted, 10);
    db.drop().await;
}

#[derive(BulkCreateNew, Debug, Clone)]
#[bulk(table = "reading", unique(sensor, at), id = false)]
struct Reading {
    sensor: i64,
    at: i64,
}

/// A database where `PUBLIC` may not create temporary tables, with a role
/// that may write the table: the first call of any size says what is
/// missing; with the grant, both paths work.
#[tokio::test]
async fn a_role_without_the_temporary_privilege_is_told_at_the_first_call() {
    let db = TestDb::new("no_temp").await;
    let admin = db.connect_plain().await;
    let database = format!("{}_db", db.schema);
    let role = format!("{}_role", db.schema);
    let (d, r) = (bulk_runtime::quote_ident(&database), bulk_runtime::quote_ident(&role));
    // (Each its own statement: CREATE and DROP DATABASE refuse a transaction block.)
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {d}")).await.unwrap();
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {r}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {d}")).await.unwrap();
    admin.batch_execute(&format!("CREATE ROLE {r} LOGIN")).await.unwrap();
    admin.batch_execute(&format!("REVOKE TEMPORARY ON DATABASE {d} FROM PUBLIC")).await.unwrap();
    let owner = bulk_tests::connect_to(&database, None).await;
    owner
        .batch_execute(&format!(
            "CREATE TABLE reading (sensor bigint NOT NULL, at bigint NOT NULL, UNIQUE (sensor, at)); \
             GRANT SELECT, INSERT ON reading TO {r}"
        ))
        .await
        .unwrap();
    let rows = |from: i64, len: usize| (0..len as i64).map(|i| Reading { sensor: 1, at: from + i }).collect::<Vec<_>>();
    let mut client = bulk_tests::connect_to(&database, Some(&role)).await;
    let err = Reading::bulk_create_new(&mut client, &rows(0, 10)).await.unwrap_err();
    match &err {
        Error::SchemaMismatch { problems, .. } => {
            assert_eq!(
                problems,
                &[SchemaProblem::TemporaryTablesNotAllowed { role: role.clone(), database: database.clone() }]
            );
            assert!(err.to_string().contains(&format!("GRANT TEMPORARY ON DATABASE {d} TO {r}")), "{err}");
        }
        other => panic!("{other}"),
    }
    owner.batch_execute(&format!("GRANT TEMPORARY ON DATABASE {d} TO {r}")).await.unwrap();
    assert_eq!(Reading::bulk_create_new(&mut client, &rows(0, 10)).await.unwrap().inserted, 10);
    assert_eq!(Reading::bulk_create_new(&mut client, &rows(10, COPY_BATCH)).await.unwrap().inserted, COPY_BATCH as u64);
    assert_eq!(count(&owner, "reading").await, 10 + COPY_BATCH as i64);
    drop((client, owner));
    admin.batch_execute(&format!("DROP DATABASE {d} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("DROP ROLE {r}")).await.unwrap();
    db.drop().await;
}
