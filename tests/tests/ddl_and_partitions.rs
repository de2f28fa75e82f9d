//! Regression tests of native partitioned tables on plain PostgreSQL (range,
//! list, hash, multi-level, default partitions, rows that fit no partition,
//! partitions attached, detached and dropped between calls on one
//! connection, partitions of another physical column order, CHECKs,
//! triggers and extra indexes on one partition only) and of the generated
//! DDL (`migration_sql` and the ledger's: names at the 63-byte limit, index
//! names of two models that coincide, `sql_type` overrides with type
//! modifiers and on arrays).
//!
//! Each test works in a schema of its own (`TestDb`) and drops it at the end.

use std::collections::BTreeSet;

use bulk_runtime::{BulkCreateNew, Error, Ledger, SchemaProblem, Upsert, verify_schema};
use bulk_tests::{COPY_BATCH, TestDb, count};
use tokio_postgres::Client;

// ---------------------------------------------------------------------------
// Partitioned tables
// ---------------------------------------------------------------------------

/// Key `(feed, item)`; tables are partitioned by `feed` (and below by `item`).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "ev", unique(feed, item))]
pub struct Ev {
    pub feed: i32,
    pub item: i64,
    pub title: String,
}

fn ev(feed: i32, item: i64, title: &str) -> Ev {
    Ev { feed, item, title: title.to_owned() }
}

/// `n` rows with feeds `feeds` round-robin, items from `from`, every 7th
/// repeating the key before it.
fn rows(n: usize, from: i64, feeds: &[i32], title: &str) -> Vec<Ev> {
    (from..from + n as i64)
        .map(|i| {
            let k = if i % 7 == 6 { i - 1 } else { i };
            ev(feeds[(k as usize) % feeds.len()], k, title)
        })
        .collect()
}

fn distinct(rows: &[Ev]) -> u64 {
    rows.iter().map(|e| (e.feed, e.item)).collect::<BTreeSet<_>>().len() as u64
}

async fn stored_keys(client: &Client, table: &str) -> BTreeSet<(i32, i64)> {
    client
        .query(&format!("SELECT feed, item FROM {}", bulk_runtime::quote_ident(table)), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Every kind of call on a table whose layout `ddl` makes, for rows of
/// `feeds`; `n` rows per call. Half the calls run inside a caller's
/// transaction.
async fn every_call_on(name: &str, ddl: &str, feeds: &[i32], n: usize) {
    let db = TestDb::new(name).await;
    let mut client = db.connect().await;
    client.batch_execute(ddl).await.unwrap();
    client.batch_execute(&Ledger::of::<Ev>().migration_sql()).await.unwrap();
    assert_eq!(verify_schema::<Ev>(&client).await.unwrap(), vec![]);

    // Plain, on the Client.
    let first = rows(n, 0, feeds, "a");
    let d = distinct(&first);
    let o = Ev::bulk_create_new(&mut client, &first).await.unwrap();
    assert_eq!((o.offered, o.inserted, o.skipped), (n as u64, d, n as u64 - d), "{name}: plain");
    assert_eq!(count(&client, "ev").await as u64, d);

    // Returning keys, in a caller's transaction; half overlaps.
    let second = rows(n, n as i64 / 2, feeds, "b");
    let mut tx = client.transaction().await.unwrap();
    let report = Ev::bulk(&mut tx).returning_keys().run(&second).await.unwrap();
    tx.commit().await.unwrap();
    let new: BTreeSet<(i32, i64)> = report.returned.iter().map(|r| r.key).collect();
    assert_eq!(new.len() as u64, report.inserted, "{name}: returned = inserted");
    let expect_new: BTreeSet<(i32, i64)> =
        second.iter().map(|e| (e.feed, e.item)).filter(|k| !first.iter().any(|f| (f.feed, f.item) == *k)).collect();
    assert_eq!(new, expect_new, "{name}: exactly the new keys returned");
    for r in &report.returned {
        let row = &second[r.index];
        assert_eq!((row.feed, row.item), r.key, "{name}: index maps to the offered row");
        let id: i64 = client
            .query_one("SELECT id FROM ev WHERE feed = $1 AND item = $2", &[&r.key.0, &r.key.1])
            .await
            .unwrap()
            .get(0);
        assert_eq!(r.id, Some(id));
    }

    // Returning the skipped rows, on the Client: all of them.
    let report = Ev::bulk(&mut client).returning_skipped().run(&second).await.unwrap();
    assert_eq!((report.inserted, report.returned.len()), (0, n), "{name}: skipped");

    // Upsert only when changed, in a caller's transaction.
    let third: Vec<Ev> = first.iter().chain(&second).map(|e| ev(e.feed, e.item, "b")).collect();
    let all = distinct(&third);
    let mut tx = client.transaction().await.unwrap();
    let report = Ev::bulk(&mut tx).upsert(Upsert::columns(["title"]).only_if_changed()).run(&third).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((report.inserted, report.updated, report.unchanged), (0, d, all - d), "{name}: upsert");
    let a_left: i64 = client.query_one("SELECT count(*) FROM ev WHERE title = 'a'", &[]).await.unwrap().get(0);
    assert_eq!(a_left, 0);

    // Batch id, on the Client, then in a transaction (replay).
    let fourth = rows(n, 10 * n as i64, feeds, "c");
    let once = Ev::bulk(&mut client).batch_id("p").run(&fourth).await.unwrap();
    let mut tx = client.transaction().await.unwrap();
    let replay = Ev::bulk(&mut tx).batch_id("p").run(&fourth).await.unwrap();
    tx.commit().await.unwrap();
    assert!(replay.replayed && !once.replayed);
    assert_eq!((replay.inserted, replay.skipped), (once.inserted, once.skipped));
    assert_eq!(count(&client, "ev").await as u64, all + once.inserted);
    db.drop().await;
}

const RANGE_WITH_DEFAULT: &str = "
    CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                     item bigint NOT NULL, title text NOT NULL, UNIQUE (feed, item))
        PARTITION BY RANGE (feed);
    CREATE TABLE ev_lo PARTITION OF ev FOR VALUES FROM (MINVALUE) TO (4);
    CREATE TABLE ev_mid PARTITION OF ev FOR VALUES FROM (4) TO (8);
    CREATE TABLE ev_def PARTITION OF ev DEFAULT;";

#[tokio::test]
async fn range_partitions_with_a_default_every_call_short() {
    every_call_on("part_range_s", RANGE_WITH_DEFAULT, &[1, 5, 9, 100, -3], 300).await;
}

#[tokio::test]
async fn range_partitions_with_a_default_every_call_copy() {
    every_call_on("part_range_c", RANGE_WITH_DEFAULT, &[1, 5, 9, 100, -3], COPY_BATCH).await;
}

#[tokio::test]
async fn range_partitions_with_a_default_every_call_tiny() {
    every_call_on("part_range_t", RANGE_WITH_DEFAULT, &[1, 5, 9, 100, -3], 40).await;
}

/// LIST by feed; one list partition sub-partitioned by HASH of item, one
/// by RANGE of item with a default, and a default at the top level; columns
/// of the partitions in other physical orders (a table attached after a
/// dropped column).
const MULTI_LEVEL: &str = "
    CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                     item bigint NOT NULL, title text NOT NULL, UNIQUE (feed, item))
        PARTITION BY LIST (feed);
    CREATE TABLE ev_1 PARTITION OF ev FOR VALUES IN (1, 2) PARTITION BY HASH (item);
    CREATE TABLE ev_1_0 PARTITION OF ev_1 FOR VALUES WITH (MODULUS 3, REMAINDER 0);
    CREATE TABLE ev_1_1 PARTITION OF ev_1 FOR VALUES WITH (MODULUS 3, REMAINDER 1);
    CREATE TABLE ev_1_2 PARTITION OF ev_1 FOR VALUES WITH (MODULUS 3, REMAINDER 2);
    CREATE TABLE ev_3 (junk int, title text NOT NULL, item bigint NOT NULL, id bigint NOT NULL, feed integer NOT NULL)
        PARTITION BY RANGE (item);
    ALTER TABLE ev_3 DROP COLUMN junk;
    CREATE TABLE ev_3_lo (title text NOT NULL, x int, feed integer NOT NULL, item bigint NOT NULL, id bigint NOT NULL);
    ALTER TABLE ev_3_lo DROP COLUMN x;
    ALTER TABLE ev_3 ATTACH PARTITION ev_3_lo FOR VALUES FROM (MINVALUE) TO (1000);
    CREATE TABLE ev_3_def PARTITION OF ev_3 DEFAULT;
    ALTER TABLE ev ATTACH PARTITION ev_3 FOR VALUES IN (3);
    CREATE TABLE ev_def PARTITION OF ev DEFAULT;";

#[tokio::test]
async fn multi_level_partitions_every_call_short() {
    every_call_on("part_multi_s", MULTI_LEVEL, &[1, 2, 3, 7], 600).await;
}

#[tokio::test]
async fn multi_level_partitions_every_call_copy() {
    every_call_on("part_multi_c", MULTI_LEVEL, &[1, 2, 3, 7], COPY_BATCH).await;
}

/// The parent's columns in another order than the model's, with dropped
/// columns in the parent itself.
const PARENT_WITH_DROPPED: &str = "
    CREATE TABLE ev (a int, title text NOT NULL, b int, item bigint NOT NULL,
                     id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL, UNIQUE (item, feed))
        PARTITION BY HASH (feed);
    ALTER TABLE ev DROP COLUMN a;
    ALTER TABLE ev DROP COLUMN b;
    CREATE TABLE ev_0 PARTITION OF ev FOR VALUES WITH (MODULUS 2, REMAINDER 0);
    CREATE TABLE ev_1 (feed integer NOT NULL, id bigint NOT NULL, item bigint NOT NULL, title text NOT NULL);
    ALTER TABLE ev ATTACH PARTITION ev_1 FOR VALUES WITH (MODULUS 2, REMAINDER 1);";

#[tokio::test]
async fn parent_with_dropped_columns_every_call_short() {
    every_call_on("part_dropped_s", PARENT_WITH_DROPPED, &[1, 2, 3, 4], 500).await;
}

#[tokio::test]
async fn parent_with_dropped_columns_every_call_copy() {
    every_call_on("part_dropped_c", PARENT_WITH_DROPPED, &[1, 2, 3, 4], COPY_BATCH).await;
}

const LIST_NO_DEFAULT: &str = "
    CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                     item bigint NOT NULL, title text NOT NULL, UNIQUE (feed, item))
        PARTITION BY LIST (feed);
    CREATE TABLE ev_1 PARTITION OF ev FOR VALUES IN (1);
    CREATE TABLE ev_2 PARTITION OF ev FOR VALUES IN (2);";

/// Asserts that `result` is the server's refusal of a row that fits no
/// partition (SQLSTATE 23514), not retryable, with the connection usable.
fn no_partition<R: std::fmt::Debug>(what: &str, result: Result<R, Error>) -> Error {
    let e = match result {
        Err(e) => e,
        Ok(r) => panic!("{what}: expected a refusal, got {r:?}"),
    };
    assert_eq!(e.sqlstate().map(|s| s.code()), Some("23514"), "{what}: {e}");
    assert!(!e.is_retryable(), "{what}: {e}");
    assert!(e.connection_usable(), "{what}: {e}");
    println!("{what}: row {:?} field {:?}: {e}", e.row(), e.field());
    e
}

/// A batch with one row (at `bad`) whose feed no partition takes: every
/// call fails with the server's 23514, nothing is written, on the Client
/// and inside a caller's transaction (which keeps its own earlier rows and
/// goes on).
async fn row_fitting_no_partition(n: usize, bad: usize) {
    let db = TestDb::new(&format!("part_nopart_{n}")).await;
    let mut client = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    client.batch_execute(&Ledger::of::<Ev>().migration_sql()).await.unwrap();
    // A stored row, so that the anti-join has something to skip.
    Ev::bulk_create_new(&mut client, &[ev(1, -1, "stored")]).await.unwrap();
    let mut batch = rows(n, 0, &[1, 2], "x");
    batch[bad] = ev(99, 123_456, "nowhere");

    no_partition(&format!("{n} plain"), Ev::bulk_create_new(&mut client, &batch).await);
    no_partition(&format!("{n} keys"), Ev::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted));
    no_partition(
        &format!("{n} skipped"),
        Ev::bulk(&mut client).returning_skipped().run(&batch).await.map(|r| r.inserted),
    );
    no_partition(
        &format!("{n} upsert"),
        Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted),
    );
    no_partition(&format!("{n} batch id"), Ev::bulk(&mut client).batch_id("b").run(&batch).await.map(|r| r.inserted));
    assert_eq!(count(&client, "ev").await, 1, "{n}: nothing written");
    assert_eq!(count(&client, "bulk_batches").await, 0, "{n}: no ledger row");

    // Inside a caller's transaction: its own row stays, it goes on.
    let mut tx = client.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO ev (feed, item, title) VALUES (2, -2, 'caller')").await.unwrap();
    no_partition(&format!("{n} tx plain"), Ev::bulk_create_new(&mut tx, &batch).await);
    no_partition(&format!("{n} tx keys"), Ev::bulk(&mut tx).returning_keys().run(&batch).await.map(|r| r.inserted));
    no_partition(
        &format!("{n} tx upsert"),
        Ev::bulk(&mut tx).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted),
    );
    let o = Ev::bulk_create_new(&mut tx, &rows(n, 0, &[1, 2], "y")).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&client, "ev").await as u64, 2 + o.inserted);
    db.drop().await;
}

#[tokio::test]
async fn row_fitting_no_partition_short_on_conflict_form() {
    row_fitting_no_partition(50, 17).await;
}

#[tokio::test]
async fn row_fitting_no_partition_short_plain_form() {
    row_fitting_no_partition(400, 399).await;
}

#[tokio::test]
async fn row_fitting_no_partition_copy() {
    row_fitting_no_partition(COPY_BATCH, 4_000).await;
}

/// A partition of another physical column order, holding rows already,
/// attached between two calls on one connection: the next call routes
/// there, skips the keys it holds, and counts, returns and upserts exactly.
async fn partition_attached_between_calls(n: usize) {
    let db = TestDb::new(&format!("part_attach_{n}")).await;
    let mut client = db.connect().await;
    let admin = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    let o = Ev::bulk_create_new(&mut client, &rows(n, 0, &[1, 2], "a")).await.unwrap();
    assert!(o.inserted > 0);
    // Warm both paths' statements on this connection.
    Ev::bulk(&mut client).returning_keys().run(&rows(10, 0, &[1, 2], "a")).await.unwrap();

    admin
        .batch_execute(
            "CREATE TABLE ev_3 (x int, title text NOT NULL, y text, item bigint NOT NULL, id bigint NOT NULL,
                                feed integer NOT NULL);
             ALTER TABLE ev_3 DROP COLUMN x, DROP COLUMN y;
             CREATE INDEX ev_3_title ON ev_3 (title);
             INSERT INTO ev_3 (title, item, id, feed) SELECT 'pre', i, -i, 3 FROM generate_series(0, 99) AS i;
             ALTER TABLE ev ATTACH PARTITION ev_3 FOR VALUES IN (3);",
        )
        .await
        .unwrap();
    // Items 0..n over feeds 1, 2, 3: feed 3's items below 100 are stored already.
    let batch = rows(n, 0, &[1, 2, 3], "b");
    let pre: BTreeSet<(i32, i64)> = (0..100).map(|i| (3, i)).collect();
    let stored_before = stored_keys(&client, "ev").await;
    let expect_new: BTreeSet<(i32, i64)> =
        batch.iter().map(|e| (e.feed, e.item)).filter(|k| !stored_before.contains(k)).collect();
    assert!(stored_before.is_superset(&pre));
    let report = Ev::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    let new: BTreeSet<(i32, i64)> = report.returned.iter().map(|r| r.key).collect();
    assert_eq!(new, expect_new, "{n}: exactly the new keys");
    assert_eq!(report.inserted, expect_new.len() as u64);
    for r in &report.returned {
        let id: i64 = client
            .query_one("SELECT id FROM ev WHERE feed = $1 AND item = $2", &[&r.key.0, &r.key.1])
            .await
            .unwrap()
            .get(0);
        assert_eq!(r.id, Some(id), "{n}: id of {:?}", r.key);
        assert!(id > 0, "ids from the parent's identity");
    }
    // Upsert of the rows of feed 3 that were in the attached table.
    let up: Vec<Ev> = (0..100).map(|i| ev(3, i, "upd")).collect();
    let mut tx = client.transaction().await.unwrap();
    let report = Ev::bulk(&mut tx).upsert(Upsert::all_columns().only_if_changed()).run(&up).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((report.inserted, report.updated), (0, 100), "{n}: upserted the attached partition's rows");
    let pre_left: i64 = admin.query_one("SELECT count(*) FROM ev_3 WHERE title = 'pre'", &[]).await.unwrap().get(0);
    assert_eq!(pre_left, 0);
    let plain = Ev::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(plain.inserted, 0, "{n}: everything stored");
    db.drop().await;
}

#[tokio::test]
async fn partition_attached_between_calls_short() {
    partition_attached_between_calls(700).await;
}

#[tokio::test]
async fn partition_attached_between_calls_copy() {
    partition_attached_between_calls(COPY_BATCH).await;
}

/// A partition detached, then dropped and made again, between calls on one
/// connection: rows for a detached value fail (nothing written); after a
/// default partition is attached, the detached rows are no longer stored
/// and go in again; after a drop and re-create, the same.
async fn partition_detached_and_dropped_between_calls(n: usize) {
    let db = TestDb::new(&format!("part_detach_{n}")).await;
    let mut client = db.connect().await;
    let admin = db.connect().await;
    client
        .batch_execute(&format!("{LIST_NO_DEFAULT} CREATE TABLE ev_3 PARTITION OF ev FOR VALUES IN (3);"))
        .await
        .unwrap();
    let batch = rows(n, 0, &[1, 2, 3], "a");
    let d = distinct(&batch);
    let o = Ev::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, d);
    let in3 = count(&client, "ev_3").await as u64;

    admin.batch_execute("ALTER TABLE ev DETACH PARTITION ev_3").await.unwrap();
    no_partition(&format!("{n} detached"), Ev::bulk_create_new(&mut client, &batch).await);
    no_partition(
        &format!("{n} detached skipped"),
        Ev::bulk(&mut client).returning_skipped().run(&batch).await.map(|r| r.inserted),
    );
    assert_eq!(count(&client, "ev").await as u64, d - in3);

    admin.batch_execute("CREATE TABLE ev_def PARTITION OF ev DEFAULT").await.unwrap();
    let report = Ev::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    assert_eq!(report.inserted, in3, "{n}: the detached partition's keys go in again, into the default");
    assert!(report.returned.iter().all(|r| r.key.0 == 3));
    assert_eq!(count(&client, "ev_def").await as u64, in3);

    // Drop a partition with rows, make it again empty: its keys go in again.
    admin.batch_execute("DROP TABLE ev_2; CREATE TABLE ev_2 PARTITION OF ev FOR VALUES IN (2);").await.unwrap();
    let in2 = batch.iter().filter(|e| e.feed == 2).map(|e| e.item).collect::<BTreeSet<_>>().len() as u64;
    let report = Ev::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!(report.inserted, in2, "{n}: the dropped partition's keys go in again");
    assert_eq!(report.returned.len() as u64, n as u64 - in2);
    // Drop a partition, make it again with another column order, upsert.
    admin
        .batch_execute(
            "DROP TABLE ev_1;
             CREATE TABLE ev_1 (title text NOT NULL, feed integer NOT NULL, item bigint NOT NULL, id bigint NOT NULL);
             ALTER TABLE ev ATTACH PARTITION ev_1 FOR VALUES IN (1);",
        )
        .await
        .unwrap();
    let in1 = batch.iter().filter(|e| e.feed == 1).map(|e| e.item).collect::<BTreeSet<_>>().len() as u64;
    let report = Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.unwrap();
    assert_eq!((report.inserted, report.updated), (in1, d - in1), "{n}: upsert after re-create");
    assert_eq!(count(&client, "ev").await as u64, d);
    db.drop().await;
}

#[tokio::test]
async fn partition_detached_and_dropped_between_calls_short() {
    partition_detached_and_dropped_between_calls(300).await;
}

#[tokio::test]
async fn partition_detached_and_dropped_between_calls_tiny() {
    partition_detached_and_dropped_between_calls(30).await;
}

#[tokio::test]
async fn partition_detached_and_dropped_between_calls_copy() {
    partition_detached_and_dropped_between_calls(COPY_BATCH).await;
}

/// A unique key on each partition alone (none on the partitioned table)
/// does not make the key unique: the check refuses the table, nothing
/// written, on every path.
async fn unique_key_only_per_partition(n: usize) {
    let db = TestDb::new(&format!("part_perpart_{n}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                              item bigint NOT NULL, title text NOT NULL) PARTITION BY LIST (feed);
             CREATE TABLE ev_1 PARTITION OF ev FOR VALUES IN (1);
             CREATE TABLE ev_2 PARTITION OF ev FOR VALUES IN (2);
             ALTER TABLE ev_1 ADD UNIQUE (feed, item);
             ALTER TABLE ev_2 ADD UNIQUE (feed, item);",
        )
        .await
        .unwrap();
    let batch = rows(n, 0, &[1, 2], "a");
    let results = [
        Ev::bulk_create_new(&mut client, &batch).await.map(|r| r.inserted),
        Ev::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted),
        Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted),
    ];
    for r in results {
        match r {
            Err(Error::SchemaMismatch { problems, .. }) => {
                assert!(problems.iter().any(|p| matches!(p, SchemaProblem::UniqueKeyMissing { .. })), "{problems:?}");
            }
            other => panic!("{n}: expected UniqueKeyMissing, got {other:?}"),
        }
    }
    assert_eq!(count(&client, "ev").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn unique_key_only_per_partition_is_refused_short() {
    unique_key_only_per_partition(200).await;
}

#[tokio::test]
async fn unique_key_only_per_partition_is_refused_copy() {
    unique_key_only_per_partition(COPY_BATCH).await;
}

/// A unique index on the partitioned table built `ON ONLY` (invalid until
/// each partition's index is attached) is refused; once attached, the same
/// connection's next call passes.
#[tokio::test]
async fn unique_index_on_only_the_parent_is_refused_until_attached() {
    let db = TestDb::new("part_ononly").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                              item bigint NOT NULL, title text NOT NULL) PARTITION BY LIST (feed);
             CREATE TABLE ev_1 PARTITION OF ev FOR VALUES IN (1);
             CREATE TABLE ev_2 PARTITION OF ev FOR VALUES IN (2);
             CREATE UNIQUE INDEX ev_key ON ONLY ev (feed, item);
             CREATE UNIQUE INDEX ev_1_key ON ev_1 (feed, item);
             ALTER INDEX ev_key ATTACH PARTITION ev_1_key;",
        )
        .await
        .unwrap();
    let batch = rows(300, 0, &[1, 2], "a");
    match Ev::bulk_create_new(&mut client, &batch).await {
        Err(Error::SchemaMismatch { problems, .. }) => {
            assert!(matches!(&problems[..], [SchemaProblem::UniqueKeyMissing { .. }]), "{problems:?}");
        }
        other => panic!("expected the invalid index to be refused, got {other:?}"),
    }
    client
        .batch_execute(
            "CREATE UNIQUE INDEX ev_2_key ON ev_2 (feed, item); ALTER INDEX ev_key ATTACH PARTITION ev_2_key;",
        )
        .await
        .unwrap();
    let o = Ev::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, distinct(&batch));
    db.drop().await;
}

/// A model on a leaf partition itself: rows outside its bound are refused
/// by the partition constraint, nothing written.
async fn model_on_a_leaf_partition(n: usize) {
    #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
    #[bulk(table = "ev_1", unique(feed, item))]
    pub struct Leaf {
        pub feed: i32,
        pub item: i64,
        pub title: String,
    }
    let db = TestDb::new(&format!("part_leaf_{n}")).await;
    let mut client = db.connect().await;
    // No id column: a partition does not inherit the parent's identity (PostgreSQL 15),
    // so the check rightly refuses a leaf whose `id` is NOT NULL without a default.
    client
        .batch_execute(
            "CREATE TABLE ev (feed integer NOT NULL, item bigint NOT NULL, title text NOT NULL, UNIQUE (feed, item))
                 PARTITION BY LIST (feed);
             CREATE TABLE ev_1 PARTITION OF ev FOR VALUES IN (1);
             CREATE TABLE ev_2 PARTITION OF ev FOR VALUES IN (2);",
        )
        .await
        .unwrap();
    let good: Vec<Leaf> = (0..n as i64).map(|i| Leaf { feed: 1, item: i, title: "a".into() }).collect();
    let o = Leaf::bulk_create_new(&mut client, &good).await.unwrap();
    assert_eq!(o.inserted, n as u64);
    let mut bad: Vec<Leaf> = (0..n as i64).map(|i| Leaf { feed: 1, item: n as i64 + i, title: "b".into() }).collect();
    bad[n / 2].feed = 2;
    for (what, r) in [
        ("plain", Leaf::bulk_create_new(&mut client, &bad).await.map(|r| r.inserted)),
        ("keys", Leaf::bulk(&mut client).returning_keys().run(&bad).await.map(|r| r.inserted)),
        ("upsert", Leaf::bulk(&mut client).upsert(Upsert::all_columns()).run(&bad).await.map(|r| r.inserted)),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.sqlstate().map(|s| s.code()), Some("23514"), "{what}: {e}");
        println!("{n} {what}: row {:?} field {:?}: {e}", e.row(), e.field());
    }
    assert_eq!(count(&client, "ev").await, n as i64);
    db.drop().await;
}

#[tokio::test]
async fn model_on_a_leaf_partition_short() {
    model_on_a_leaf_partition(200).await;
}

#[tokio::test]
async fn model_on_a_leaf_partition_copy() {
    model_on_a_leaf_partition(COPY_BATCH).await;
}

/// A CHECK constraint and a row-suppressing trigger on one partition only.
async fn check_and_trigger_on_one_partition(n: usize) {
    let db = TestDb::new(&format!("part_check_{n}")).await;
    let mut client = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    client
        .batch_execute(
            "ALTER TABLE ev_2 ADD CONSTRAINT no_bad CHECK (title <> 'bad');
             CREATE FUNCTION drop_quiet() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF NEW.title = 'quiet' THEN RETURN NULL; END IF; RETURN NEW; END $$;
             CREATE TRIGGER drop_quiet BEFORE INSERT ON ev_1 FOR EACH ROW EXECUTE FUNCTION drop_quiet();",
        )
        .await
        .unwrap();
    // A new row refused by the CHECK of partition 2: every call fails, nothing written.
    let mut batch = rows(n, 0, &[1, 2], "ok");
    let bad_at = batch.iter().rposition(|e| e.feed == 2).unwrap();
    batch[bad_at].title = "bad".into();
    for (what, r) in [
        ("plain", Ev::bulk_create_new(&mut client, &batch).await.map(|r| r.inserted)),
        ("keys", Ev::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted)),
        ("upsert", Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted)),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.sqlstate().map(|s| s.code()), Some("23514"), "{n} {what}: {e}");
        println!("{n} {what}: row {:?} field {:?}: {e}", e.row(), e.field());
    }
    assert_eq!(count(&client, "ev").await, 0, "{n}: nothing written");

    // The same batch without the bad row; rows titled 'quiet' for partition 1 are suppressed.
    batch[bad_at].title = "ok".into();
    let quiet: BTreeSet<(i32, i64)> =
        batch.iter().filter(|e| e.feed == 1 && e.item % 5 == 0).map(|e| (e.feed, e.item)).collect();
    for e in &mut batch {
        if quiet.contains(&(e.feed, e.item)) {
            e.title = "quiet".into();
        }
    }
    let d = distinct(&batch);
    let report = Ev::bulk(&mut client).returning_skipped().run(&batch).await.unwrap();
    assert_eq!(report.inserted, d - quiet.len() as u64, "{n}: suppressed rows count as skipped");
    assert_eq!(report.returned.len() as u64, n as u64 - report.inserted);
    assert_eq!(count(&client, "ev").await as u64, report.inserted);

    // A stored key offered again with values the CHECK refuses: the
    // anti-join forms skip it (README: returning_keys, returning_skipped,
    // plain call from 128 rows and the COPY path).
    let mut again = rows(n, 0, &[1, 2], "ok");
    let stored_bad = again.iter().position(|e| e.feed == 2).unwrap();
    again[stored_bad].title = "bad".into();
    let k = Ev::bulk(&mut client).returning_keys().run(&again).await.unwrap();
    let s = Ev::bulk(&mut client).returning_skipped().run(&again).await.unwrap();
    assert_eq!(k.inserted, quiet.len() as u64, "{n}: only the keys the trigger suppressed before are new");
    assert_eq!(s.inserted, 0);
    if n >= 128 {
        let o = Ev::bulk_create_new(&mut client, &again).await.unwrap();
        assert_eq!(o.inserted, 0);
    }
    db.drop().await;
}

#[tokio::test]
async fn check_and_trigger_on_one_partition_short() {
    check_and_trigger_on_one_partition(300).await;
}

#[tokio::test]
async fn check_and_trigger_on_one_partition_copy() {
    check_and_trigger_on_one_partition(COPY_BATCH).await;
}

/// An extra unique index on one partition (on a non-key column): a batch
/// that repeats a value of it fails with the server's 23505, nothing
/// written, not retryable.
async fn extra_unique_index_on_a_partition(n: usize) {
    let db = TestDb::new(&format!("part_extra_{n}")).await;
    let mut client = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    client.batch_execute("CREATE UNIQUE INDEX ev_1_title ON ev_1 (title)").await.unwrap();
    let mut batch: Vec<Ev> = (0..n as i64).map(|i| ev(2, i, &format!("t{i}"))).collect();
    batch[n - 1] = ev(1, 1, "same");
    batch[0] = ev(1, 2, "same");
    for (what, r) in [
        ("plain", Ev::bulk_create_new(&mut client, &batch).await.map(|r| r.inserted)),
        ("keys", Ev::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted)),
        ("upsert", Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted)),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.sqlstate().map(|s| s.code()), Some("23505"), "{n} {what}: {e}");
        assert!(!e.is_retryable(), "{n} {what}: retrying the same batch cannot succeed: {e}");
        println!("{n} {what}: row {:?} field {:?}: {e}", e.row(), e.field());
    }
    assert_eq!(count(&client, "ev").await, 0, "{n}: nothing written");
    db.drop().await;
}

#[tokio::test]
async fn extra_unique_index_on_a_partition_short() {
    extra_unique_index_on_a_partition(300).await;
}

#[tokio::test]
async fn extra_unique_index_on_a_partition_copy() {
    extra_unique_index_on_a_partition(COPY_BATCH).await;
}

/// A trigger on a sub-partition that moves the row's partition key:
/// PostgreSQL refuses, nothing written.
#[tokio::test]
async fn trigger_moving_a_row_to_another_partition_fails_cleanly() {
    let db = TestDb::new("part_move").await;
    let mut client = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    client
        .batch_execute(
            "CREATE FUNCTION move_feed() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN IF NEW.item = 7 THEN NEW.feed := 2; END IF; RETURN NEW; END $$;
             CREATE TRIGGER move_feed BEFORE INSERT ON ev_1 FOR EACH ROW EXECUTE FUNCTION move_feed();",
        )
        .await
        .unwrap();
    for n in [20usize, 300, COPY_BATCH] {
        let batch: Vec<Ev> = (0..n as i64).map(|i| ev(1, i, "a")).collect();
        let e = Ev::bulk_create_new(&mut client, &batch).await.expect_err("moving row");
        println!("{n}: {e}");
        assert!(e.connection_usable());
        assert_eq!(count(&client, "ev").await, 0, "{n}: nothing written");
    }
    db.drop().await;
}

/// A plain table replaced by a partitioned one of the same name between
/// calls on one connection (and back): rows go to the table the name
/// finds, counts exact, both paths.
async fn table_becomes_partitioned_between_calls(n: usize) {
    let db = TestDb::new(&format!("part_becomes_{n}")).await;
    let mut client = db.connect().await;
    let admin = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                              item bigint NOT NULL, title text NOT NULL, UNIQUE (feed, item));",
        )
        .await
        .unwrap();
    let batch = rows(n, 0, &[1, 2], "a");
    let d = distinct(&batch);
    assert_eq!(Ev::bulk_create_new(&mut client, &batch).await.unwrap().inserted, d);
    Ev::bulk(&mut client).returning_keys().run(&batch).await.unwrap();
    admin
        .batch_execute(&format!(
            "ALTER TABLE ev RENAME TO ev_old;
             {LIST_NO_DEFAULT}
             INSERT INTO ev (feed, item, title) SELECT feed, item, title FROM ev_old WHERE feed = 1;"
        ))
        .await
        .unwrap();
    let in1 = count(&client, "ev").await as u64;
    let o = Ev::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, d - in1, "{n}: plain after the switch");
    assert_eq!(count(&client, "ev").await as u64, d);
    let k = Ev::bulk(&mut client).returning_keys().run(&rows(n, n as i64, &[1, 2], "b")).await.unwrap();
    assert_eq!(k.inserted, k.returned.len() as u64);
    // The unique key dropped from the partitioned table: refused, nothing written.
    admin
        .batch_execute(
            "DROP TABLE ev_old;
             DO $$ BEGIN EXECUTE format('ALTER TABLE ev DROP CONSTRAINT %I',
                 (SELECT conname FROM pg_constraint WHERE conrelid = 'ev'::regclass AND contype = 'u')); END $$;",
        )
        .await
        .unwrap();
    let before = count(&client, "ev").await;
    // (A batch whose keys are all stored is skipped whole by the anti-join,
    // before the plain form's guard runs: 0 inserted, which stores no
    // duplicate. A batch with new keys meets the guard.)
    let r = Ev::bulk_create_new(&mut client, &rows(n, 50 * n as i64, &[1, 2], "c")).await;
    match r {
        Err(Error::SchemaMismatch { problems, .. }) => {
            assert!(problems.iter().any(|p| matches!(p, SchemaProblem::UniqueKeyMissing { .. })), "{problems:?}");
        }
        other => panic!("{n}: expected UniqueKeyMissing after the key was dropped, got {other:?}"),
    }
    assert_eq!(count(&client, "ev").await, before, "{n}: nothing written");
    db.drop().await;
}

#[tokio::test]
async fn table_becomes_partitioned_between_calls_short() {
    table_becomes_partitioned_between_calls(300).await;
}

#[tokio::test]
async fn table_becomes_partitioned_between_calls_tiny() {
    table_becomes_partitioned_between_calls(30).await;
}

#[tokio::test]
async fn table_becomes_partitioned_between_calls_copy() {
    table_becomes_partitioned_between_calls(COPY_BATCH).await;
}

/// A new connection's first call (no check, the process checked the table
/// moments ago) on a partitioned table: exact counts; one whose row fits
/// no partition fails with nothing written and the connection goes on.
#[tokio::test]
async fn first_call_on_a_new_connection_to_a_partitioned_table() {
    let db = TestDb::new("part_first").await;
    let mut client = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    Ev::bulk_create_new(&mut client, &rows(20, 0, &[1, 2], "a")).await.unwrap();
    let mut fresh = db.connect().await;
    let o = Ev::bulk_create_new(&mut fresh, &rows(20, 10, &[1, 2], "b")).await.unwrap();
    let expect = distinct(&rows(30, 0, &[1, 2], "x")) - distinct(&rows(20, 0, &[1, 2], "x"));
    assert_eq!(o.inserted, expect);
    let mut fresh = db.connect().await;
    let mut batch = rows(20, 100, &[1, 2], "c");
    batch[3].feed = 42;
    no_partition("first call", Ev::bulk_create_new(&mut fresh, &batch).await);
    assert_eq!(count(&client, "ev").await as u64, distinct(&rows(30, 0, &[1, 2], "x")));
    batch[3].feed = 1;
    let o = Ev::bulk_create_new(&mut fresh, &batch).await.unwrap();
    assert_eq!(o.inserted, distinct(&batch));
    db.drop().await;
}

/// A `BEFORE INSERT` trigger that changes the key, on a partition attached
/// between calls on one connection: the calls that map rows back refuse,
/// naming it, nothing written; the plain call counts exactly.
async fn key_changing_partition_attached_between_calls(n: usize) {
    let db = TestDb::new(&format!("part_trigattach_{n}")).await;
    let mut client = db.connect().await;
    let admin = db.connect().await;
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    let first = rows(n, 0, &[1, 2], "a");
    Ev::bulk(&mut client).returning_keys().run(&first).await.unwrap();
    Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&first).await.unwrap();
    admin
        .batch_execute(
            "CREATE TABLE ev_3 (title text NOT NULL, item bigint NOT NULL, feed integer NOT NULL, id bigint NOT NULL);
             CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.item := NEW.item + 1000000000; RETURN NEW; END $$;
             CREATE TRIGGER bump_item BEFORE INSERT ON ev_3 FOR EACH ROW EXECUTE FUNCTION bump();
             ALTER TABLE ev ATTACH PARTITION ev_3 FOR VALUES IN (3);",
        )
        .await
        .unwrap();
    let batch = rows(n, n as i64 * 3, &[1, 2, 3], "b");
    let before = count(&client, "ev").await;
    for (what, r) in [
        ("keys", Ev::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted)),
        ("skipped", Ev::bulk(&mut client).returning_skipped().run(&batch).await.map(|r| r.inserted)),
        ("upsert", Ev::bulk(&mut client).upsert(Upsert::all_columns()).run(&batch).await.map(|r| r.inserted)),
    ] {
        match r {
            Err(Error::SchemaMismatch { problems, .. }) => {
                assert_eq!(
                    problems,
                    [SchemaProblem::KeyChangedOnInsert { triggers: vec!["bump_item".into()] }],
                    "{n} {what}"
                );
            }
            other => panic!("{n} {what}: expected KeyChangedOnInsert, got {other:?}"),
        }
        assert_eq!(count(&client, "ev").await, before, "{n} {what}: nothing written");
    }
    let o = Ev::bulk_create_new(&mut client, &batch).await.unwrap();
    assert_eq!(o.inserted, distinct(&batch), "{n}: plain call counts");
    db.drop().await;
}

#[tokio::test]
async fn key_changing_partition_attached_between_calls_short() {
    key_changing_partition_attached_between_calls(300).await;
}

#[tokio::test]
async fn key_changing_partition_attached_between_calls_copy() {
    key_changing_partition_attached_between_calls(COPY_BATCH).await;
}

/// A column NOT NULL on one partition only (nullable on the parent): the
/// check passes the `Option` field, and a NULL routed to that partition is
/// refused by the server (23502, field named), nothing written.
async fn not_null_on_one_partition_only(n: usize) {
    #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
    #[bulk(table = "evn", unique(feed, item))]
    pub struct EvN {
        pub feed: i32,
        pub item: i64,
        pub title: Option<String>,
    }
    let db = TestDb::new(&format!("part_nn_{n}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE evn (feed integer NOT NULL, item bigint NOT NULL, title text, UNIQUE (feed, item))
                 PARTITION BY LIST (feed);
             CREATE TABLE evn_1 PARTITION OF evn FOR VALUES IN (1);
             CREATE TABLE evn_2 PARTITION OF evn FOR VALUES IN (2);
             ALTER TABLE evn_2 ALTER COLUMN title SET NOT NULL;",
        )
        .await
        .unwrap();
    let mut batch: Vec<EvN> = (0..n as i64).map(|i| EvN { feed: 1 + (i % 2) as i32, item: i, title: None }).collect();
    for r in batch.iter_mut().filter(|r| r.feed == 2) {
        r.title = Some("x".into());
    }
    batch[n - 1] = EvN { feed: 2, item: n as i64 + 1, title: None };
    for (what, r) in [
        ("plain", EvN::bulk_create_new(&mut client, &batch).await.map(|r| r.inserted)),
        ("keys", EvN::bulk(&mut client).returning_keys().run(&batch).await.map(|r| r.inserted)),
    ] {
        let e = r.expect_err(what);
        assert_eq!(e.sqlstate().map(|s| s.code()), Some("23502"), "{n} {what}: {e}");
        assert_eq!(e.field(), Some("title"), "{n} {what}: {e}");
    }
    assert_eq!(count(&client, "evn").await, 0);
    batch[n - 1].title = Some("y".into());
    assert_eq!(EvN::bulk_create_new(&mut client, &batch).await.unwrap().inserted, n as u64);
    db.drop().await;
}

#[tokio::test]
async fn not_null_on_one_partition_only_short() {
    not_null_on_one_partition_only(300).await;
}

#[tokio::test]
async fn not_null_on_one_partition_only_copy() {
    not_null_on_one_partition_only(COPY_BATCH).await;
}

// ---------------------------------------------------------------------------
// DDL and migrations
// ---------------------------------------------------------------------------

const LONG_SCHEMA: &str = "Ddl Long Schema \"Q\" sssssssssssssssssssssssssssssssssssssssssss";

/// Every name at the 63-byte limit, with quotes, spaces, a reserved word,
/// mixed case and a two-byte character; `sql_type` overrides with type
/// modifiers; an index on the long column.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(
    schema = "Ddl Long Schema \"Q\" sssssssssssssssssssssssssssssssssssssssssss",
    table = "Tbl Ü select ttttttttttttttttttttttttttttttttttttttttttttttttt",
    id = "Row Id iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii",
    unique(key, name)
)]
pub struct LongNames {
    #[bulk(rename = "Col \"x\" from cccccccccccccccccccccccccccccccccccccccccccccccccc", index)]
    pub key: i64,
    #[bulk(rename = "User Name", sql_type = "varchar(40)")]
    pub name: String,
    #[bulk(rename = "order", sql_type = "numeric(10, 2)", index)]
    pub price: rust_decimal::Decimal,
    #[bulk(sql_type = "timestamp(3) with time zone")]
    pub at: chrono::DateTime<chrono::Utc>,
    #[bulk(sql_type = "character(5)")]
    pub code: Option<String>,
    pub tags: Vec<String>,
    #[bulk(sql_type = "double precision")]
    pub score: f64,
}

fn long(i: i64) -> LongNames {
    LongNames {
        key: i / 2,
        name: format!("n{}", i % 2),
        price: rust_decimal::Decimal::new(i * 7, 2),
        at: chrono::DateTime::from_timestamp(1_700_000_000 + i, 123_000_000).unwrap(),
        code: (i % 3 == 0).then(|| "ab".to_owned()),
        tags: vec![format!("t{i}"), "x".into()],
        score: i as f64 / 3.0,
    }
}

/// The DDL applies twice as a script and once more statement by
/// statement, the table passes the check, the columns have the declared
/// types with their modifiers, and every call works on both paths; the
/// ledger of the model's schema too.
#[tokio::test]
async fn ddl_of_names_at_the_limit_applies_twice_and_passes_the_check() {
    let db = TestDb::new("ddl_long").await;
    let mut client = db.connect().await;
    let q = bulk_runtime::quote_ident(LONG_SCHEMA);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE")).await.unwrap();
    let model = LongNames::model();
    client.batch_execute(&model.migration_sql()).await.unwrap();
    client.batch_execute(&model.migration_sql()).await.unwrap();
    for s in model.migration_statements() {
        client.batch_execute(&s).await.unwrap();
    }
    let ledger = Ledger::of::<LongNames>();
    client.batch_execute(&ledger.migration_sql()).await.unwrap();
    client.batch_execute(&ledger.migration_sql()).await.unwrap();
    assert_eq!(verify_schema::<LongNames>(&client).await.unwrap(), vec![]);
    let types: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&model.qualified_name()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect: Vec<(String, String)> = [
        ("Row Id iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii", "bigint"),
        ("Col \"x\" from cccccccccccccccccccccccccccccccccccccccccccccccccc", "bigint"),
        ("User Name", "character varying(40)"),
        ("order", "numeric(10,2)"),
        ("at", "timestamp(3) with time zone"),
        ("code", "character(5)"),
        ("tags", "text[]"),
        ("score", "double precision"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(types, expect);
    let indexes: i64 = client
        .query_one("SELECT count(*) FROM pg_index WHERE indrelid = $1::text::regclass", &[&model.qualified_name()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 4, "primary key, unique key, two indexes");

    for n in [30usize, 300, COPY_BATCH] {
        client.batch_execute(&format!("TRUNCATE {}", model.qualified_name())).await.unwrap();
        let batch: Vec<LongNames> = (0..n as i64 * 2).map(long).collect();
        let o = LongNames::bulk_create_new(&mut client, &batch).await.unwrap();
        assert_eq!(o.inserted, 2 * n as u64, "{n}");
        let more: Vec<LongNames> = (0..n as i64 * 3).map(long).collect();
        let k = LongNames::bulk(&mut client).returning_keys().run(&more).await.unwrap();
        assert_eq!(k.inserted, n as u64, "{n}: the third's new half");
        assert!(k.returned.iter().all(|r| r.id.is_some()));
        let mut tx = client.transaction().await.unwrap();
        let u = LongNames::bulk(&mut tx).upsert(Upsert::all_columns().only_if_changed()).run(&more).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!((u.updated, u.unchanged), (0, 3 * n as u64), "{n}: values come back as stored");
        let b = LongNames::bulk(&mut client).batch_id(format!("b{n}")).run(&more).await.unwrap();
        let r = LongNames::bulk(&mut client).batch_id(format!("b{n}")).run(&more).await.unwrap();
        assert!(r.replayed && !b.replayed);
    }
    client.batch_execute(&format!("DROP SCHEMA {q} CASCADE")).await.unwrap();
    db.drop().await;
}

/// Two models whose generated index names coincide (`order` keyed on
/// `item_id` and `order_item` keyed on `id`: both `order_item_id_key`):
/// each model's DDL gives its own table its unique key, the first under the
/// plain name, the second under a hashed one, and applying both again adds
/// no second index.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "order", unique(item_id))]
pub struct OrderRow {
    pub item_id: i64,
    pub qty: i32,
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "order_item", unique(id), id = false)]
pub struct OrderItemRow {
    pub id: i64,
    pub label: String,
}

// Each model's `migration_sql()` gives its own table its unique key even when
// the plain index name is taken by another table's index.
#[tokio::test]
async fn ddl_of_two_models_whose_index_names_coincide() {
    let db = TestDb::new("ddl_collide").await;
    let mut client = db.connect().await;
    for _ in 0..2 {
        client.batch_execute(&OrderRow::model().migration_sql()).await.unwrap();
        client.batch_execute(&OrderItemRow::model().migration_sql()).await.unwrap();
    }
    let a = verify_schema::<OrderRow>(&client).await.unwrap();
    let b = verify_schema::<OrderItemRow>(&client).await.unwrap();
    let on_order = index_names(&client, "\"order\"", true, None).await;
    let on_order_item = index_names(&client, "order_item", true, None).await;
    let r = OrderItemRow::bulk_create_new(
        &mut client,
        &[OrderItemRow { id: 1, label: "x".into() }, OrderItemRow { id: 1, label: "y".into() }],
    )
    .await;
    db.drop().await;
    assert_eq!(a, vec![]);
    assert_eq!(b, vec![], "order_item made by its own migration_sql passes the check");
    assert_eq!(on_order, ["order_item_id_key"], "the first model's index has the plain name");
    assert_eq!(on_order_item.len(), 1, "one unique index, however often the DDL runs: {on_order_item:?}");
    assert!(
        on_order_item[0].starts_with("order_item_id_")
            && on_order_item[0].ends_with("_key")
            && on_order_item != on_order,
        "the second model's index has a hashed name: {on_order_item:?}"
    );
    assert_eq!(r.map(|o| (o.inserted, o.skipped)).unwrap(), (1, 1));
}

/// The names of `table`'s unique (not primary key) or plain indexes, those
/// whose first column is `column` if given.
async fn index_names(client: &Client, table: &str, unique: bool, column: Option<&str>) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
              WHERE i.indrelid = $1::text::regclass AND i.indisunique = $2 AND NOT i.indisprimary
                AND ($3::text IS NULL OR a.attname = $3)
              ORDER BY 1",
            &[&table, &unique, &column],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The same with the plain indexes of `#[bulk(index)]`: table `t` with an
/// index on `a_b` and table `t_a` with an index on `b` both name theirs
/// `t_a_b_idx`.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "t", unique(k))]
pub struct TRow {
    pub k: i64,
    #[bulk(index)]
    pub a_b: i64,
}

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "t_a", unique(k))]
pub struct TaRow {
    pub k: i64,
    #[bulk(index)]
    pub b: i64,
}

// The DDL makes one index per `#[bulk(index)]` field even when its plain name
// is taken by another table's index (it then takes a hashed name), and
// applying it again adds no second one.
#[tokio::test]
async fn ddl_plain_index_names_of_two_models_coincide() {
    let db = TestDb::new("ddl_collide_idx").await;
    let client = db.connect().await;
    for _ in 0..2 {
        client.batch_execute(&TRow::model().migration_sql()).await.unwrap();
        client.batch_execute(&TaRow::model().migration_sql()).await.unwrap();
    }
    let on_a_b = index_names(&client, "t", false, Some("a_b")).await;
    let on_b = index_names(&client, "t_a", false, Some("b")).await;
    let on_t_a = index_names(&client, "t_a", false, None).await;
    db.drop().await;
    assert_eq!(on_a_b, ["t_a_b_idx"], "t has its index on a_b, under the plain name");
    assert_eq!(on_b.len(), 1, "t_a has one index on b: {on_b:?}");
    assert_eq!(on_t_a, on_b, "and no other plain index");
    assert!(
        on_b[0].starts_with("t_a_b_") && on_b[0].ends_with("_idx") && on_b != on_a_b,
        "t_a's index on b has a hashed name: {on_b:?}"
    );
}

/// A live column narrower than the model's `sql_type` (`varchar(10)` for
/// `varchar(40)`): the check reads types without modifiers and passes it; a
/// value that does not fit is then refused by the server, nothing written.
async fn narrower_live_column_than_the_sql_type(n: usize) {
    #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
    #[bulk(table = "named", unique(k))]
    pub struct Named {
        pub k: i64,
        #[bulk(sql_type = "varchar(40)")]
        pub name: String,
    }
    let db = TestDb::new(&format!("ddl_narrow_{n}")).await;
    let mut client = db.connect().await;
    client
        .batch_execute("CREATE TABLE named (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, k bigint NOT NULL UNIQUE, name varchar(10) NOT NULL)")
        .await
        .unwrap();
    let problems = verify_schema::<Named>(&client).await.unwrap();
    println!("{n}: check of varchar(10) for sql_type varchar(40): {problems:?}");
    let mut batch: Vec<Named> = (0..n as i64).map(|k| Named { k, name: "short".into() }).collect();
    batch[n / 2].name = "x".repeat(30);
    let e = Named::bulk_create_new(&mut client, &batch).await.expect_err("too long");
    println!("{n}: {e}; row {:?} field {:?}", e.row(), e.field());
    assert_eq!(e.sqlstate().map(|s| s.code()), Some("22001"), "{n}: {e}");
    assert_eq!(count(&client, "named").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn narrower_live_column_than_the_sql_type_short() {
    narrower_live_column_than_the_sql_type(300).await;
}

#[tokio::test]
async fn narrower_live_column_than_the_sql_type_copy() {
    narrower_live_column_than_the_sql_type(COPY_BATCH).await;
}

/// The retweeter app's model (same attributes): its migration (what the
/// app's `migrations` files hold) applies twice on plain PostgreSQL as a
/// script and statement by statement, passes the check, and the down
/// migration (`DROP TABLE IF EXISTS`) leaves no relation behind.
#[derive(BulkCreateNew, Debug, Clone, PartialEq, Eq)]
#[bulk(table = "retweet", unique(tweet, retweeter), distribute_by(tweet))]
pub struct AppRetweet {
    pub tweet: i64,
    #[bulk(index)]
    pub retweeter: i64,
    #[bulk(index)]
    pub original_author: i64,
}

#[tokio::test]
async fn app_model_migration_applies_twice_and_down_drops_everything() {
    let db = TestDb::new("ddl_app").await;
    let mut client = db.connect().await;
    let up = AppRetweet::model().migration_sql();
    client.batch_execute(&up).await.unwrap();
    client.batch_execute(&up).await.unwrap();
    for s in AppRetweet::model().migration_statements() {
        client.batch_execute(&s).await.unwrap();
    }
    assert_eq!(verify_schema::<AppRetweet>(&client).await.unwrap(), vec![]);
    let pk: String = client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'retweet'::regclass AND contype = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "PRIMARY KEY (id, tweet)");
    for n in [40usize, COPY_BATCH] {
        let batch: Vec<AppRetweet> =
            (0..n as i64).map(|i| AppRetweet { tweet: i % 5, retweeter: i / 2, original_author: 1 }).collect();
        let o = AppRetweet::bulk_create_new(&mut client, &batch).await.unwrap();
        assert_eq!(o.inserted + o.skipped, n as u64);
    }
    client.batch_execute(&format!("DROP TABLE IF EXISTS {};\n", bulk_runtime::quote_ident("retweet"))).await.unwrap();
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
            &[&db.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the down migration leaves nothing");
    db.drop().await;
}

/// A ledger of an odd name in an odd schema: its DDL applies twice, and
/// batch ids recorded there replay.
#[tokio::test]
async fn ledger_of_odd_names_applies_twice_and_replays() {
    let db = TestDb::new("ddl_ledger").await;
    let mut client = db.connect().await;
    let schema = "Odd Ledger \"S\"; select";
    let q = bulk_runtime::quote_ident(schema);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE")).await.unwrap();
    client.batch_execute(LIST_NO_DEFAULT).await.unwrap();
    let ledger = Ledger::new("Led \"ger\" from tttttttttttttttttttttttttttttttttttttttttttttttttt").in_schema(schema);
    client.batch_execute(&ledger.migration_sql()).await.unwrap();
    client.batch_execute(&ledger.migration_sql()).await.unwrap();
    for s in ledger.migration_statements() {
        client.batch_execute(&s).await.unwrap();
    }
    for n in [30usize, COPY_BATCH] {
        let batch = rows(n, 0, &[1, 2], &format!("{n}"));
        let once = Ev::bulk(&mut client).ledger(ledger.clone()).batch_id(format!("x{n}")).run(&batch).await.unwrap();
        let again = Ev::bulk(&mut client).ledger(ledger.clone()).batch_id(format!("x{n}")).run(&batch).await.unwrap();
        assert!(again.replayed && !once.replayed, "{n}");
        assert_eq!(again.inserted, once.inserted);
    }
    let recorded: i64 =
        client.query_one(&format!("SELECT count(*) FROM {}", ledger.qualified_name()), &[]).await.unwrap().get(0);
    assert_eq!(recorded, 2);
    client.batch_execute(&format!("DROP SCHEMA {q} CASCADE")).await.unwrap();
    db.drop().await;
}

/// The model's DDL run against a partitioned table made by hand without
/// the unique key: the table is left alone, the unique index is made on
/// the partitioned table (and so on every partition), and the table then
/// passes the check.
#[tokio::test]
async fn migration_on_a_partitioned_table_made_by_hand() {
    let db = TestDb::new("ddl_part").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id bigint GENERATED BY DEFAULT AS IDENTITY, feed integer NOT NULL,
                              item bigint NOT NULL, title text NOT NULL) PARTITION BY HASH (feed);
             CREATE TABLE ev_0 PARTITION OF ev FOR VALUES WITH (MODULUS 2, REMAINDER 0);
             CREATE TABLE ev_1 PARTITION OF ev FOR VALUES WITH (MODULUS 2, REMAINDER 1);",
        )
        .await
        .unwrap();
    match verify_schema::<Ev>(&client).await.unwrap().as_slice() {
        [SchemaProblem::UniqueKeyMissing { .. }] => {}
        other => panic!("{other:?}"),
    }
    client.batch_execute(&Ev::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ev::model().migration_sql()).await.unwrap();
    assert_eq!(verify_schema::<Ev>(&client).await.unwrap(), vec![]);
    let batch = rows(COPY_BATCH, 0, &[1, 2, 3], "a");
    assert_eq!(Ev::bulk_create_new(&mut client, &batch).await.unwrap().inserted, distinct(&batch));
    assert!(count(&client, "ev_0").await > 0 && count(&client, "ev_1").await > 0);
    db.drop().await;
}

/// An array column declared `varchar(10)[]` through `sql_type` (the check
/// accepts it: the override names the live type): every call, both paths,
/// counts exactly and stores the arrays as offered.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "tagged_arr", unique(k))]
pub struct TaggedArr {
    pub k: i64,
    #[bulk(sql_type = "varchar(10)[]")]
    pub tags: Vec<String>,
}

async fn varchar_array_sql_type(n: usize) {
    let db = TestDb::new(&format!("ddl_vararr_{n}")).await;
    let mut client = db.connect().await;
    client.batch_execute(&TaggedArr::model().migration_sql()).await.unwrap();
    client.batch_execute(&Ledger::of::<TaggedArr>().migration_sql()).await.unwrap();
    assert_eq!(verify_schema::<TaggedArr>(&client).await.unwrap(), vec![]);
    let batch: Vec<TaggedArr> = (0..n as i64).map(|k| TaggedArr { k, tags: vec![format!("t{k}")] }).collect();
    let more: Vec<TaggedArr> = (0..2 * n as i64).map(|k| TaggedArr { k, tags: vec![format!("u{k}")] }).collect();
    let n64 = n as u64;
    // (what, its count, the count expected): the first `n` keys are stored by
    // the plain call, the next `n` by returning_keys; every later call offers
    // stored keys only.
    let calls = [
        ("plain (inserted)", TaggedArr::bulk_create_new(&mut client, &batch).await.map(|r| r.inserted), n64),
        (
            "returning_keys (inserted)",
            TaggedArr::bulk(&mut client).returning_keys().run(&more).await.map(|r| r.inserted),
            n64,
        ),
        (
            "returning_skipped (returned)",
            TaggedArr::bulk(&mut client).returning_skipped().run(&more).await.map(|r| r.returned.len() as u64),
            2 * n64,
        ),
        (
            "upsert (updated)",
            TaggedArr::bulk(&mut client).upsert(Upsert::all_columns()).run(&more).await.map(|r| r.updated),
            2 * n64,
        ),
        (
            "upsert only_if_changed (unchanged)",
            TaggedArr::bulk(&mut client)
                .upsert(Upsert::all_columns().only_if_changed())
                .run(&more)
                .await
                .map(|r| r.unchanged),
            2 * n64,
        ),
        ("batch_id (skipped)", TaggedArr::bulk(&mut client).batch_id("b").run(&more).await.map(|r| r.skipped), 2 * n64),
    ];
    let mut failures = Vec::new();
    for (what, r, want) in calls {
        match r {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{what}: {got}, expected {want}")),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    let as_offered: i64 = client
        .query_one("SELECT count(*) FROM tagged_arr WHERE tags = ARRAY['u' || k]::varchar(10)[]", &[])
        .await
        .unwrap()
        .get(0);
    db.drop().await;
    assert!(failures.is_empty(), "{n}: {failures:#?}");
    assert_eq!(as_offered, 2 * n as i64, "{n}: every row holds the array the upsert offered");
}

// A `varchar(n)[]` column works with every call on the short path, including
// returning_keys, returning_skipped and upsert (which compare the arrays).
#[tokio::test]
async fn varchar_array_sql_type_every_call_short() {
    varchar_array_sql_type(40).await;
}

// The same on the COPY path.
#[tokio::test]
async fn varchar_array_sql_type_every_call_copy() {
    varchar_array_sql_type(COPY_BATCH).await;
}

/// A table made by hand with indexes that look like the DDL's but do not do
/// its job: a unique index on the key under another collation (which the
/// schema check refuses as the key's index) and a BRIN index on the
/// `#[bulk(index)]` column. The DDL adds its own unique key and btree index
/// (once, also when applied again), and the table then passes the check;
/// on a table with a unique constraint on the key in another column order
/// and a btree index of its own on the column, it adds nothing.
#[tokio::test]
async fn ddl_adds_what_look_alike_indexes_do_not_do() {
    #[derive(BulkCreateNew, Debug, Clone, PartialEq)]
    #[bulk(table = "lookalike", unique(a, b), id = false)]
    pub struct Lookalike {
        pub a: i32,
        pub b: String,
        #[bulk(index)]
        pub e: i32,
    }
    let db = TestDb::new("ddl_lookalike").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE lookalike (a int NOT NULL, b text NOT NULL, e int NOT NULL);
             CREATE UNIQUE INDEX lookalike_c ON lookalike (a, b COLLATE \"C\");
             CREATE INDEX lookalike_brin ON lookalike USING brin (e)",
        )
        .await
        .unwrap();
    let before = verify_schema::<Lookalike>(&client).await.unwrap();
    assert!(matches!(before.as_slice(), [SchemaProblem::UniqueKeyMissing { .. }]), "{before:?}");
    for _ in 0..2 {
        client.batch_execute(&Lookalike::model().migration_sql()).await.unwrap();
    }
    let unique = index_names(&client, "lookalike", true, None).await;
    let plain = index_names(&client, "lookalike", false, None).await;
    assert_eq!(unique, ["lookalike_a_b_key", "lookalike_c"], "the DDL's own unique key beside the hand-made one");
    assert_eq!(plain, ["lookalike_brin", "lookalike_e_idx"], "a btree index beside the BRIN one");
    assert_eq!(verify_schema::<Lookalike>(&client).await.unwrap(), vec![]);
    let rows = [Lookalike { a: 1, b: "x".into(), e: 0 }, Lookalike { a: 1, b: "x".into(), e: 1 }];
    let o = Lookalike::bulk_create_new(&mut client, &rows).await.unwrap();
    assert_eq!((o.inserted, o.skipped), (1, 1));

    client
        .batch_execute(
            "DROP TABLE lookalike;
             CREATE TABLE lookalike (a int NOT NULL, b text NOT NULL, e int NOT NULL, CONSTRAINT mine UNIQUE (b, a));
             CREATE INDEX my_e ON lookalike (e)",
        )
        .await
        .unwrap();
    client.batch_execute(&Lookalike::model().migration_sql()).await.unwrap();
    assert_eq!(index_names(&client, "lookalike", true, None).await, ["mine"]);
    assert_eq!(index_names(&client, "lookalike", false, None).await, ["my_e"]);
    db.drop().await;
}
