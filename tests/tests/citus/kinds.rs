//! Citus table kinds and setups beyond the main matrix: single-shard,
//! schema-sharded, Citus-local and append tables (refused, naming the kind,
//! nothing written), replicated shards, a unique key that is the
//! distribution column alone or lists it second, distribution by a domain
//! or a text column of collation "C", shard count, co-location, column
//! type and distribution column changed between calls, a distributed
//! ledger, `search_path` switches, CHECK constraints, serial and generated
//! columns, triggers, and a caller's transaction that ran local or
//! multi-shard statements first. Each test works in a schema of its own
//! (`CitusDb`) and drops it at the end.

use std::collections::{BTreeMap, BTreeSet};

use bulk_runtime::{BulkCreateNew, Error, Keep, Ledger, SchemaProblem, Upsert};
use bulk_tests::citus::CitusDb;
use bulk_tests::count;

use super::{LONG, MEDIUM, On, Retweet as Rt, SHORT, batch, call, rt};
use tokio_postgres::Client;

/// The plain call's COPY path on Citus (above `CITUS_VALUES_ROWS`, 16,384);
/// the other lengths, `On`, `call!`, the model and its batches are the
/// parent suite's.
const PLAIN_COPY: usize = 16_500;

async fn store(client: &Client, table: &str, rows: &[Rt]) {
    if rows.is_empty() {
        return;
    }
    if table == "rt_values" {
        // Append-distributed tables take no INSERT ... SELECT: multi-row VALUES.
        let values: Vec<String> =
            rows.iter().map(|r| format!("({}, {}, {})", r.tweet, r.retweeter, r.original_author)).collect();
        client
            .batch_execute(&format!("INSERT INTO rt (tweet, retweeter, original_author) VALUES {}", values.join(", ")))
            .await
            .expect("store rows with VALUES");
        return;
    }
    let t: Vec<i64> = rows.iter().map(|r| r.tweet).collect();
    let r: Vec<i64> = rows.iter().map(|r| r.retweeter).collect();
    let a: Vec<i64> = rows.iter().map(|r| r.original_author).collect();
    client
        .execute(
            &format!(
                "INSERT INTO {table} (tweet, retweeter, original_author)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[])"
            ),
            &[&t, &r, &a],
        )
        .await
        .expect("store rows with a plain INSERT");
}

/// `(tweet, retweeter) -> original_author` of the stored rows of key numbers `from..from+n`.
async fn stored_range(client: &Client, table: &str, from: i64, n: usize) -> BTreeMap<(i64, i64), i64> {
    client
        .query(
            &format!(
                "SELECT tweet::int8, retweeter::int8, original_author::int8 FROM {table}
                  WHERE retweeter >= $1::int8 AND retweeter < $2::int8"
            ),
            &[&from, &(from + n as i64)],
        )
        .await
        .expect("read the table")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

async fn assert_stored(client: &Client, table: &str, from: i64, pre: &[Rt], rows: &[Rt], new: &[usize], what: &str) {
    let got = stored_range(client, table, from, rows.len()).await;
    assert_eq!(got.len(), pre.len() + new.len(), "{what}: rows stored");
    for r in pre {
        assert_eq!(got[&(r.tweet, r.retweeter)], 0, "{what}: a stored row is left as it was: {r:?}");
    }
    for &i in new {
        let r = &rows[i];
        assert_eq!(got[&(r.tweet, r.retweeter)], r.original_author, "{what}: first offered row of {r:?}");
    }
}

/// A model of `rt`'s shape: made from an `Rt`.
pub trait RtLike: BulkCreateNew<Key = (i64, i64)> + Send + Sync + 'static {
    fn from_rt(r: &Rt) -> Self;
}
impl RtLike for Rt {
    fn from_rt(r: &Rt) -> Self {
        r.clone()
    }
}

async fn every_path(client: &mut Client, table: &str, base: i64, label: &str) -> i64 {
    every_path_of::<Rt>(client, table, base, label).await
}

/// Runs the plain call on every path and connection, `returning_keys`,
/// `returning_skipped` and an upsert on the short and COPY paths, each on
/// its own key range starting at `base`, checking counts and rows.
async fn every_path_of<M: RtLike>(client: &mut Client, table: &str, base: i64, label: &str) -> i64 {
    let mut from = base;
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            let what = format!("{label}: plain {n} {on:?}");
            let (pre, rows, new) = batch(n, from);
            store(client, table, &pre).await;
            let rows: Vec<M> = rows.iter().map(M::from_rt).collect();
            let o = call!(*client, on, |c| M::bulk_create_new(c, &rows)).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let (_, rows, _) = batch(n, from);
            assert_eq!(
                (o.offered, o.inserted, o.skipped),
                (n as u64, new.len() as u64, (n - new.len()) as u64),
                "{what}"
            );
            assert_stored(client, table, from, &pre, &rows, &new, &what).await;
            from += n as i64 + 10;
        }
    }
    for n in [SHORT, LONG] {
        for on in [On::Client, On::Transaction] {
            let what = format!("{label}: returning_keys {n} {on:?}");
            let (pre, rows, new) = batch(n, from);
            store(client, table, &pre).await;
            let typed: Vec<M> = rows.iter().map(M::from_rt).collect();
            let rep = call!(*client, on, |c| M::bulk(c).returning_keys().run(&typed))
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!((rep.inserted, rep.skipped), (new.len() as u64, (n - new.len()) as u64), "{what}");
            let got: Vec<usize> = rep.returned.iter().map(|r| r.index).collect();
            assert_eq!(got, new, "{what}: positions");
            let ids: BTreeMap<(i64, i64), Option<i64>> = client
                .query(
                    &format!(
                        "SELECT tweet::int8, retweeter::int8, (to_jsonb(t) ->> 'id')::int8 FROM {table} AS t WHERE retweeter >= $1::int8 AND retweeter < $2::int8"
                    ),
                    &[&from, &(from + n as i64)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            for r in &rep.returned {
                assert_eq!(r.key, (rows[r.index].tweet, rows[r.index].retweeter), "{what}");
                assert_eq!(r.id, ids[&r.key], "{what}: id of {:?}", r.key);
            }
            assert_stored(client, table, from, &pre, &rows, &new, &what).await;
            from += n as i64 + 10;

            let what = format!("{label}: returning_skipped {n} {on:?}");
            let (pre, rows, new) = batch(n, from);
            store(client, table, &pre).await;
            let typed: Vec<M> = rows.iter().map(M::from_rt).collect();
            let rep = call!(*client, on, |c| M::bulk(c).returning_skipped().run(&typed))
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let new_set: BTreeSet<usize> = new.iter().copied().collect();
            let skipped: Vec<usize> = (0..n).filter(|i| !new_set.contains(i)).collect();
            assert_eq!(rep.returned, skipped, "{what}");
            assert_stored(client, table, from, &pre, &rows, &new, &what).await;
            from += n as i64 + 10;

            let what = format!("{label}: upsert {n} {on:?}");
            let (pre, rows, _) = batch(n, from);
            store(client, table, &pre).await;
            let typed: Vec<M> = rows.iter().map(M::from_rt).collect();
            let rep = call!(*client, on, |c| M::bulk(c)
                .upsert(Upsert::columns(["original_author"]).only_if_changed().keep(Keep::Last))
                .run(&typed))
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            // Expected: the last offered row of each key.
            let mut last: BTreeMap<(i64, i64), i64> = BTreeMap::new();
            let mut expect: BTreeMap<(i64, i64), i64> = pre.iter().map(|r| ((r.tweet, r.retweeter), 0)).collect();
            for r in &rows {
                expect.insert((r.tweet, r.retweeter), r.original_author);
                last.insert((r.tweet, r.retweeter), r.original_author);
            }
            let pre_keys: BTreeSet<(i64, i64)> = pre.iter().map(|r| (r.tweet, r.retweeter)).collect();
            let inserted = last.keys().filter(|k| !pre_keys.contains(k)).count() as u64;
            let updated = last.keys().filter(|k| pre_keys.contains(k)).count() as u64;
            assert_eq!(
                (rep.offered, rep.inserted, rep.updated, rep.unchanged, rep.skipped),
                (n as u64, inserted, updated, 0, n as u64 - inserted - updated),
                "{what}"
            );
            let got = stored_range(client, table, from, n).await;
            assert_eq!(got, expect, "{what}: last offered row of each key");
            from += n as i64 + 10;
        }
    }
    from
}

/// `count(*)` of `table`, an SQL name as written.
async fn raw_count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count rows").get(0)
}

/// A second schema of a test, dropped (with CASCADE) when the test ends,
/// also when it fails.
struct ExtraSchema(String);

impl Drop for ExtraSchema {
    fn drop(&mut self) {
        let q = bulk_runtime::quote_ident(&self.0);
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let (client, connection) =
                    bulk_tests::citus::coordinator_config().connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE")).await
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {done:?}", self.0);
        }
    }
}

fn problems<R: std::fmt::Debug>(result: Result<R, Error>) -> Vec<SchemaProblem> {
    match result {
        Err(Error::SchemaMismatch { problems, .. }) => problems,
        other => panic!("expected the schema check's refusal, got {other:?}"),
    }
}

const RT_PLAIN: &str = "CREATE TABLE rt (tweet bigint NOT NULL, retweeter bigint NOT NULL,
                        original_author bigint NOT NULL, UNIQUE (tweet, retweeter))";
const RT_SERIAL: &str = "CREATE TABLE rt (id bigserial, tweet bigint NOT NULL,
                     retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter))";
const RT_ID: &str = "CREATE TABLE rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL,
                     retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter))";

// ---------------------------------------------------------------------------
// Table kinds the README does not name.

/// A hash-distributed table with two placements per shard
/// (`citus.shard_replication_factor = 2`, statement-based replication,
/// `repmodel 'c'`), with its staging table: every path counts exactly.
#[tokio::test]
async fn replicated_shards_every_path() {
    let db = CitusDb::new("kinds_repl").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "SET citus.shard_replication_factor = 2; {RT_ID};
             SELECT create_distributed_table('rt', 'tweet', shard_count := 8)"
        ))
        .await
        .expect("replicated rt");
    client.batch_execute(&Rt::model().citus_staging_sql()).await.expect("staging");
    client.batch_execute("RESET citus.shard_replication_factor").await.unwrap();
    let end = every_path(&mut client, "rt", 0, "replicated").await;
    // Both placements of every shard hold the same rows.
    let placements: Vec<i64> = client
        .query(
            "SELECT count(DISTINCT result) FROM run_command_on_placements('rt', 'SELECT count(*) FROM %s') GROUP BY shardid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(placements.iter().all(|&n| n == 1), "placements differ: {placements:?}");
    assert!(end > 0);
    db.drop().await;
}

/// Schema-based sharding: a table of a distributed schema is a single-shard
/// table: refused with a reason, nothing written, on every path.
#[tokio::test]
async fn schema_based_sharding_table_is_refused() {
    let db = CitusDb::new("kinds_schema_shard").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "SELECT citus_schema_distribute({}); {RT_ID}",
            bulk_tests::citus::quote_literal(&db.schema)
        ))
        .await
        .expect("distributed schema");
    let kind: String = client
        .query_one("SELECT citus_table_type FROM public.citus_tables WHERE table_name = 'rt'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    println!("citus_table_type = {kind}");
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        let (_, rows, _) = batch(n, 0);
        let found = problems(Rt::bulk_create_new(&mut client, &rows).await);
        assert!(found.iter().any(|p| matches!(p, SchemaProblem::CitusTableUnsupported { .. })), "{n}: {found:?}");
        let text = found.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        println!("{n}: {text}");
    }
    assert_eq!(count(&client, "rt").await, 0);
    db.drop().await;
}

/// The model's unique key is the distribution column alone.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "bytweet", unique(tweet))]
pub struct ByTweet {
    pub tweet: i64,
    pub author: i64,
}

async fn by_tweet_paths(client: &mut Client) {
    let mut from = 0i64;
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            let pre: Vec<i64> = (from..from + n as i64 / 4).collect();
            client
                .execute("INSERT INTO bytweet (tweet, author) SELECT t, 0 FROM unnest($1::int8[]) AS t", &[&pre])
                .await
                .unwrap();
            let rows: Vec<ByTweet> = (0..n as i64)
                .map(|i| ByTweet { tweet: from + if i % 5 == 4 { i - 1 } else { i }, author: i + 1 })
                .collect();
            let mut seen: BTreeSet<i64> = pre.iter().copied().collect();
            let new: Vec<usize> = (0..n).filter(|&i| seen.insert(rows[i].tweet)).collect();
            let o = call!(*client, on, |c| ByTweet::bulk_create_new(c, &rows))
                .unwrap_or_else(|e| panic!("{n} {on:?}: {e:?}"));
            assert_eq!((o.inserted, o.skipped), (new.len() as u64, (n - new.len()) as u64), "{n} {on:?}");
            let got: BTreeMap<i64, i64> = client
                .query(
                    "SELECT tweet, author FROM bytweet WHERE tweet >= $1 AND tweet < $2",
                    &[&from, &(from + n as i64)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            assert_eq!(got.len(), pre.len() + new.len(), "{n} {on:?}");
            for &i in &new {
                assert_eq!(got[&rows[i].tweet], rows[i].author, "{n} {on:?}: first offered");
            }
            // returning_keys on the same rows again: nothing new.
            let rep = call!(*client, on, |c| ByTweet::bulk(c).returning_keys().run(&rows)).unwrap();
            assert_eq!((rep.inserted, rep.returned.len()), (0, 0), "{n} {on:?}");
            from += n as i64 + 10;
        }
    }
}

#[tokio::test]
async fn unique_key_is_the_distribution_column_alone() {
    let db = CitusDb::new("kinds_bytweet").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE bytweet (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL UNIQUE,
                                   author bigint NOT NULL);
             SELECT create_distributed_table('bytweet', 'tweet')",
        )
        .await
        .unwrap();
    client.batch_execute(&ByTweet::model().citus_staging_sql()).await.unwrap();
    let staged: bool =
        client.query_one("SELECT to_regclass('__bulk_stage_' || 'x') IS NULL OR true", &[]).await.unwrap().get(0);
    assert!(staged);
    by_tweet_paths(&mut client).await;
    db.drop().await;
}

/// Key `(retweeter, tweet)`, distributed by `tweet` (not the first key column).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "swapped", unique(retweeter, tweet))]
pub struct Swapped {
    pub retweeter: i64,
    pub tweet: i64,
    pub original_author: i64,
}

#[tokio::test]
async fn distribution_column_not_first_in_the_key() {
    let db = CitusDb::new("kinds_swapped").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE swapped (id bigint GENERATED BY DEFAULT AS IDENTITY, retweeter bigint NOT NULL,
                                   tweet bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (retweeter, tweet));
             SELECT create_distributed_table('swapped', 'tweet')",
        )
        .await
        .unwrap();
    client.batch_execute(&Swapped::model().citus_staging_sql()).await.unwrap();
    let mut from = 0;
    for n in [SHORT, MEDIUM, 3000, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            let (pre, rows, new) = batch(n, from);
            let to_swapped =
                |r: &Rt| Swapped { retweeter: r.retweeter, tweet: r.tweet, original_author: r.original_author };
            let t: Vec<i64> = pre.iter().map(|r| r.tweet).collect();
            let rr: Vec<i64> = pre.iter().map(|r| r.retweeter).collect();
            client
                .execute(
                    "INSERT INTO swapped (retweeter, tweet, original_author) SELECT r, t, 0 FROM unnest($1::int8[], $2::int8[]) AS u(t, r)",
                    &[&t, &rr],
                )
                .await
                .unwrap();
            let rows: Vec<Swapped> = rows.iter().map(to_swapped).collect();
            let o = call!(client, on, |c| Swapped::bulk_create_new(c, &rows))
                .unwrap_or_else(|e| panic!("{n} {on:?}: {e:?}"));
            assert_eq!((o.inserted, o.skipped), (new.len() as u64, (n - new.len()) as u64), "{n} {on:?}");
            let got: BTreeMap<(i64, i64), i64> = client
                .query(
                    "SELECT tweet, retweeter, original_author FROM swapped WHERE retweeter >= $1 AND retweeter < $2",
                    &[&from, &(from + n as i64)],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            assert_eq!(got.len(), pre.len() + new.len(), "{n} {on:?}");
            for &i in &new {
                assert_eq!(got[&(rows[i].tweet, rows[i].retweeter)], rows[i].original_author, "{n} {on:?}");
            }
            from += n as i64 + 10;
        }
    }
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Changes between calls on one connection.

/// A connection that checked `rt` as a hash-distributed table; the table
/// then becomes a kind the check refuses. Every later call on the
/// connection is refused, with nothing written.
async fn kind_changed(label: &str, change: &str, refused_kind: &str) {
    let via = if refused_kind == "append_distributed" { "rt_values" } else { "rt" };
    let db = CitusDb::new(label).await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_PLAIN}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    // Warm every path on this connection.
    let mut from = 0;
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        let (pre, rows, new) = batch(n, from);
        store(&client, "rt", &pre).await;
        let o = Rt::bulk_create_new(&mut client, &rows).await.unwrap();
        assert_eq!(o.inserted, new.len() as u64);
        from += n as i64 + 10;
    }
    let admin = db.connect().await;
    admin.batch_execute(change).await.unwrap_or_else(|e| panic!("{change}: {e:?}"));
    // Every call after the change is refused, on every path: the
    // statements the connection prepared check the table's kind.
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            let (pre, rows, _) = batch(n, from);
            store(&admin, via, &pre).await;
            let stored_before = count(&admin, "rt").await;
            let result = call!(client, on, |c| Rt::bulk_create_new(c, &rows));
            assert_eq!(count(&admin, "rt").await, stored_before, "{label} {n} {on:?}: nothing written on {result:?}");
            let found = problems(result);
            assert!(
                found.contains(&SchemaProblem::CitusTableUnsupported { kind: refused_kind.into() }),
                "{label} {n} {on:?}: {found:?}"
            );
            from += n as i64 + 10;
        }
    }
    // A new connection's check: refused with the kind.
    let mut fresh = db.connect().await;
    let (_, rows, _) = batch(SHORT, from + 100_000);
    let found = problems(Rt::bulk_create_new(&mut fresh, &rows).await);
    assert!(found.contains(&SchemaProblem::CitusTableUnsupported { kind: refused_kind.into() }), "{label}: {found:?}");
    db.drop().await;
}

#[tokio::test]
async fn distributed_then_single_shard_between_calls() {
    kind_changed(
        "kinds_to_single",
        "SELECT undistribute_table('rt'); SELECT create_distributed_table('rt', NULL)",
        "single_shard",
    )
    .await;
}

#[tokio::test]
async fn distributed_then_citus_local_between_calls() {
    kind_changed(
        "kinds_to_citus_local",
        "SELECT undistribute_table('rt'); SELECT citus_add_local_table_to_metadata('rt')",
        "citus_local",
    )
    .await;
}

#[tokio::test]
async fn distributed_then_append_between_calls() {
    kind_changed(
        "kinds_to_append",
        "SELECT undistribute_table('rt'); TRUNCATE rt; SELECT create_distributed_table('rt', 'tweet', 'append');
         SELECT master_create_empty_shard('rt')",
        "append_distributed",
    )
    .await;
}

/// A staged table with shard count changed between calls
/// (`alter_distributed_table(shard_count, cascade_to_colocated)`, which
/// makes the table and its staging table again under new OIDs), then its
/// co-location with the staging table broken
/// (`update_distributed_table_colocation(..., 'none')`): the same
/// connection's calls count exactly on every path.
#[tokio::test]
async fn shard_count_and_colocation_changed_between_calls() {
    let db = CitusDb::new("kinds_alter_shards").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_SERIAL}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    let from = every_path(&mut client, "rt", 0, "4 shards").await;
    let admin = db.connect().await;
    admin
        .batch_execute("SELECT alter_distributed_table('rt', shard_count := 6, cascade_to_colocated := true)")
        .await
        .expect("alter shard count");
    let from = every_path(&mut client, "rt", from, "6 shards").await;
    admin
        .batch_execute("SELECT update_distributed_table_colocation('rt', colocate_with => 'none')")
        .await
        .expect("break colocation");
    let from = every_path(&mut client, "rt", from, "not co-located").await;
    admin
        .batch_execute(&format!(
            "SELECT update_distributed_table_colocation('rt', colocate_with => {})",
            bulk_tests::citus::quote_literal(&format!("{}.__bulk_stage_placeholder", db.schema))
        ))
        .await
        .ok();
    assert!(from > 0);
    db.drop().await;
}

/// A distributed table changed to distribute by the other key column
/// between calls (`alter_distributed_table(distribution_column)`), with
/// the staging table left distributed by the old one: exact counts.
#[tokio::test]
async fn distribution_column_changed_between_calls() {
    let db = CitusDb::new("kinds_alter_column").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_SERIAL}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    let from = every_path(&mut client, "rt", 0, "by tweet").await;
    let admin = db.connect().await;
    admin
        .batch_execute(
            "SELECT alter_distributed_table('rt', distribution_column := 'retweeter', cascade_to_colocated := false)",
        )
        .await
        .expect("redistribute by retweeter");
    let from = every_path(&mut client, "rt", from, "by retweeter").await;
    assert!(from > 0);
    db.drop().await;
}

/// A CHECK constraint that refuses one *new* row of the batch: the call
/// fails on every path, nothing of the batch is written, and a caller's
/// transaction goes on as it was.
#[tokio::test]
async fn a_check_refusing_a_new_row_writes_nothing() {
    let db = CitusDb::new("kinds_check").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{RT_ID}; ALTER TABLE rt ADD CONSTRAINT author_positive CHECK (original_author > 0);
             SELECT create_distributed_table('rt', 'tweet', shard_count := 8)"
        ))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    let mut from = 0;
    for n in [SHORT, MEDIUM, 3_000, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            // (Not a repeat of the row before: `batch` repeats at i % 5 == 4.)
            for bad_at in [0, n / 2, n - 2] {
                let (_, mut rows, _) = batch(n, from);
                rows[bad_at].original_author = -1;
                let before = count(&client, "rt").await;
                let result = match on {
                    On::Client => Rt::bulk_create_new(&mut client, &rows).await,
                    On::Transaction => {
                        let mut tx = client.transaction().await.unwrap();
                        tx.execute("INSERT INTO rt (tweet, retweeter, original_author) VALUES (-1, -1, 1)", &[])
                            .await
                            .unwrap();
                        let r = Rt::bulk_create_new(&mut tx, &rows).await;
                        // The caller's transaction goes on: its own row is there, and it commits.
                        let mine: i64 = tx
                            .query_one("SELECT count(*) FROM rt WHERE tweet = -1", &[])
                            .await
                            .unwrap_or_else(|e| panic!("{n} {on:?} at {bad_at}: transaction unusable: {e:?}"))
                            .get(0);
                        assert_eq!(mine, 1);
                        tx.execute("DELETE FROM rt WHERE tweet = -1", &[]).await.unwrap();
                        tx.commit().await.unwrap();
                        r
                    }
                };
                let e = result.expect_err(&format!("{n} {on:?} at {bad_at}: the CHECK refuses a row"));
                assert_eq!(e.sqlstate().map(|s| s.code().to_owned()).as_deref(), Some("23514"), "{e:?}");
                assert_eq!(count(&client, "rt").await, before, "{n} {on:?} at {bad_at}: nothing written ({e})");
                from += n as i64 + 10;
            }
        }
    }
    db.drop().await;
}

/// `bigserial` ids and a stored generated column on a distributed table
/// with its staging table: every path counts exactly, ids returned are
/// the stored ones.
#[tokio::test]
async fn bigserial_and_generated_column_every_path() {
    let db = CitusDb::new("kinds_serial").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE rt (id bigserial, tweet bigint NOT NULL, retweeter bigint NOT NULL,
                              original_author bigint NOT NULL,
                              doubled bigint GENERATED ALWAYS AS (original_author * 2) STORED,
                              UNIQUE (tweet, retweeter));
             SELECT create_distributed_table('rt', 'tweet', shard_count := 8)",
        )
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    every_path(&mut client, "rt", 0, "bigserial").await;
    let bad: i64 =
        client.query_one("SELECT count(*) FROM rt WHERE doubled <> original_author * 2", &[]).await.unwrap().get(0);
    assert_eq!(bad, 0);
    let dup: i64 = client.query_one("SELECT count(*) - count(DISTINCT id) FROM rt", &[]).await.unwrap().get(0);
    assert_eq!(dup, 0, "ids are unique");
    db.drop().await;
}

/// Distributed by a domain over `bigint` (the model names the domain).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "rt", unique(tweet, retweeter))]
pub struct RtDomain {
    #[bulk(sql_type = "tweet_id")]
    pub tweet: i64,
    pub retweeter: i64,
    pub original_author: i64,
}
impl RtLike for RtDomain {
    fn from_rt(r: &Rt) -> Self {
        RtDomain { tweet: r.tweet, retweeter: r.retweeter, original_author: r.original_author }
    }
}

#[tokio::test]
async fn distributed_by_a_domain_column_every_path() {
    let db = CitusDb::new("kinds_domain_dist").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE DOMAIN tweet_id AS bigint CHECK (VALUE >= 0);
             CREATE TABLE rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet tweet_id NOT NULL,
                              retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter));
             SELECT create_distributed_table('rt', 'tweet', shard_count := 8)",
        )
        .await
        .unwrap();
    client.batch_execute(&RtDomain::model().citus_staging_sql()).await.unwrap();
    let staged: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname LIKE '\\_\\_bulk\\_stage%' AND relnamespace = current_schema()::regnamespace)", &[])
        .await
        .unwrap()
        .get(0);
    println!("domain: staging table made: {staged}");
    every_path_of::<RtDomain>(&mut client, "rt", 0, "domain").await;
    // (Citus fails DROP SCHEMA ... CASCADE here, "cache lookup failed for
    // type": the table goes first.)
    client.batch_execute("DROP TABLE rt").await.unwrap();
    db.drop().await;
}

/// A key column's type changed between calls (`bigint` to `numeric`, a
/// non-distribution column), then a `NOT NULL` column with a default
/// added: the same connection counts exactly or refuses with nothing
/// written.
#[tokio::test]
async fn key_column_type_and_new_column_between_calls() {
    let db = CitusDb::new("kinds_alter_type").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_ID}; SELECT create_distributed_table('rt', 'tweet', shard_count := 8)"))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    let from = every_path(&mut client, "rt", 0, "before").await;
    let admin = db.connect().await;
    admin.batch_execute("ALTER TABLE rt ADD COLUMN note text NOT NULL DEFAULT 'x'").await.expect("add a column");
    let from = every_path(&mut client, "rt", from, "column added").await;
    admin.batch_execute("ALTER TABLE rt ALTER COLUMN retweeter TYPE numeric").await.expect("retype retweeter");
    // Either exact counts or the check's refusal, nothing written.
    let mut from = from;
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        let (pre, rows, new) = batch(n, from);
        store(&admin, "rt", &pre).await;
        let before = count(&admin, "rt").await;
        match Rt::bulk_create_new(&mut client, &rows).await {
            Ok(o) => {
                assert_eq!((o.inserted, o.skipped), (new.len() as u64, (n - new.len()) as u64), "{n}");
                assert_stored(&admin, "rt", from, &pre, &rows, &new, &format!("numeric {n}")).await;
            }
            Err(e) => {
                println!("numeric {n}: {e}");
                assert_eq!(count(&admin, "rt").await, before, "{n}: nothing written");
            }
        }
        from += n as i64 + 10;
    }
    db.drop().await;
}

/// A BEFORE INSERT trigger that changes a non-key column, on a
/// distributed table (`citus.enable_unsafe_triggers`): counts exact, the
/// first offered row (as the trigger changed it) stored.
#[tokio::test]
async fn a_trigger_changing_a_non_key_column_every_path() {
    let db = CitusDb::new("kinds_trigger").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{RT_ID}; ALTER TABLE rt ADD COLUMN touched int NOT NULL DEFAULT 0;
             SELECT create_distributed_table('rt', 'tweet', shard_count := 8)"
        ))
        .await
        .unwrap();
    for statement in [
        "SET citus.enable_unsafe_triggers = on",
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.touched := 1; RETURN NEW; END $$",
        "CREATE TRIGGER bump BEFORE INSERT ON rt FOR EACH ROW EXECUTE FUNCTION bump()",
    ] {
        client.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    every_path(&mut client, "rt", 0, "trigger").await;
    let untouched: i64 = client.query_one("SELECT count(*) FROM rt WHERE touched = 0", &[]).await.unwrap().get(0);
    println!("rows the trigger did not touch (stored with plain INSERTs by the test too): {untouched}");
    db.drop().await;
}

/// In a caller's transaction that first read a reference table (local
/// execution on the coordinator) and modified the target across shards,
/// the call still works on every path, and a failing call leaves the
/// caller's transaction usable.
#[tokio::test]
async fn in_a_transaction_after_local_execution_and_a_multi_shard_update() {
    let db = CitusDb::new("kinds_local_exec").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!(
            "{RT_ID}; SELECT create_distributed_table('rt', 'tweet', shard_count := 8);
             CREATE TABLE lookup (k int PRIMARY KEY); SELECT create_reference_table('lookup');
             INSERT INTO lookup VALUES (1)"
        ))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    let mut from = 0;
    for n in [SHORT, MEDIUM, LONG, PLAIN_COPY] {
        for prelude in [
            "SELECT count(*) FROM lookup",
            "UPDATE rt SET original_author = original_author WHERE original_author = 0",
            "SET LOCAL citus.multi_shard_modify_mode = 'sequential'",
        ] {
            let (pre, rows, new) = batch(n, from);
            store(&client, "rt", &pre).await;
            let mut tx = client.transaction().await.unwrap();
            tx.batch_execute(prelude).await.unwrap();
            let o = Rt::bulk_create_new(&mut tx, &rows).await.unwrap_or_else(|e| panic!("{n} after {prelude}: {e:?}"));
            let r = Rt::bulk(&mut tx)
                .returning_keys()
                .run(&rows)
                .await
                .unwrap_or_else(|e| panic!("{n} keys after {prelude}: {e:?}"));
            tx.commit().await.unwrap();
            assert_eq!((o.inserted, o.skipped), (new.len() as u64, (n - new.len()) as u64), "{n} after {prelude}");
            assert_eq!(r.inserted, 0);
            assert_stored(&client, "rt", from, &pre, &rows, &new, &format!("{n} after {prelude}")).await;
            from += n as i64 + 10;
        }
    }
    db.drop().await;
}

/// `citus_staging_sql()` of a model with the default surrogate id, on a
/// table distributed by hand without an `id` column (which the schema check
/// accepts for that model): it does nothing (no sequence to default to),
/// where it once failed with 42703 from `pg_get_serial_sequence`.
#[tokio::test]
async fn staging_sql_on_a_table_without_the_id_column() {
    let db = CitusDb::new("kinds_stage_no_id").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_PLAIN}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    // The model is accepted for this table.
    let (_, rows, _) = batch(SHORT, 0);
    Rt::bulk_create_new(&mut client, &rows).await.expect("the model fits the table");
    let result = client.batch_execute(&Rt::model().citus_staging_sql()).await;
    db.drop().await;
    result.expect("citus_staging_sql() on a table the model fits");
}

/// One connection, `search_path` switched between a hash-distributed `rt`
/// (with its staging table) and a same-named `rt` of another kind in a
/// second schema: each call writes the table the path names, counting
/// exactly, or, for a kind the check refuses, is refused with nothing
/// written.
async fn search_path_switch(label: &str, other: &str, refused: Option<&str>) {
    let db = CitusDb::new(label).await;
    let mut client = db.connect().await;
    let other_schema = format!("{}_b", db.schema);
    let qa = bulk_runtime::quote_ident(&db.schema);
    let qb = bulk_runtime::quote_ident(&other_schema);
    client
        .batch_execute(&format!("{RT_ID}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    client.batch_execute(&format!("CREATE SCHEMA {qb}")).await.unwrap();
    let setup = other.replace("SCHEMA", &qb);
    let result = async {
        for statement in setup.split(';').filter(|s| !s.trim().is_empty()) {
            client.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
        }
        let admin = db.connect().await;
        let mut from = 0;
        let mut written_refused = Vec::new();
        for round in 0..2 {
            for n in [SHORT, MEDIUM, PLAIN_COPY] {
                for (schema, q) in [(&db.schema, &qa), (&other_schema, &qb)] {
                    client.batch_execute(&format!("SET search_path = {q}")).await.unwrap();
                    let table = format!("{q}.rt");
                    let (pre, rows, new) = batch(n, from);
                    store(&admin, &table, &pre).await;
                    let before_a = raw_count(&admin, &format!("{qa}.rt")).await;
                    let before_b = raw_count(&admin, &format!("{qb}.rt")).await;
                    let what = format!("{label} round {round} {n} in {schema}");
                    match Rt::bulk_create_new(&mut client, &rows).await {
                        Ok(o) => {
                            if schema != &db.schema && refused.is_some() {
                                written_refused.push(format!("{what}: {o}"));
                            }
                            assert_eq!((o.inserted, o.skipped), (new.len() as u64, (n - new.len()) as u64), "{what}");
                            assert_stored(&admin, &table, from, &pre, &rows, &new, &what).await;
                        }
                        Err(e) => {
                            assert!(schema != &db.schema && refused.is_some(), "{what}: {e:?}");
                            let found = match e {
                                Error::SchemaMismatch { problems, .. } => problems,
                                other => panic!("{what}: not the check's refusal: {other:?}"),
                            };
                            assert!(
                                found.contains(&SchemaProblem::CitusTableUnsupported { kind: refused.unwrap().into() }),
                                "{what}: {found:?}"
                            );
                        }
                    }
                    let (after_a, after_b) =
                        (raw_count(&admin, &format!("{qa}.rt")).await, raw_count(&admin, &format!("{qb}.rt")).await);
                    if schema == &db.schema {
                        assert_eq!(after_b, before_b, "{what}: the other schema's table untouched");
                    } else {
                        assert_eq!(after_a, before_a, "{what}: the first schema's table untouched");
                    }
                    from += n as i64 + 10;
                }
            }
        }
        // Every call the path sends to a kind the check refuses is refused,
        // on every path and in every round: the statements' guards check
        // the table's kind.
        assert!(written_refused.is_empty(), "{label}: written though refused: {written_refused:#?}");
    };
    let _guard = ExtraSchema(other_schema.clone());
    result.await;
    db.drop().await;
}

/// A single-shard (schema-sharded) table that the `search_path` names after
/// a hash-distributed one: refused on every switch, on every path.
#[tokio::test]
async fn search_path_switch_to_a_single_shard_table_of_a_distributed_schema() {
    search_path_switch(
        "kinds_sp_single",
        "SELECT citus_schema_distribute('SCHEMA'); CREATE TABLE SCHEMA.rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL, retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter))",
        Some("single_shard"),
    )
    .await;
}

/// As above, for a Citus-local table.
#[tokio::test]
async fn search_path_switch_to_a_citus_local_table() {
    search_path_switch(
        "kinds_sp_clocal",
        "CREATE TABLE SCHEMA.rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL, retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter)); SELECT citus_add_local_table_to_metadata('SCHEMA.rt')",
        Some("citus_local"),
    )
    .await;
}

#[tokio::test]
async fn search_path_switch_to_a_table_distributed_by_the_other_key_column() {
    search_path_switch(
        "kinds_sp_other_col",
        "CREATE TABLE SCHEMA.rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL, retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter)); SELECT create_distributed_table('SCHEMA.rt', 'retweeter', shard_count := 6)",
        None,
    )
    .await;
}

/// An append-distributed table is refused, and the reason names the kind.
#[tokio::test]
async fn an_append_table_refusal_names_append() {
    let db = CitusDb::new("kinds_append_name").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_PLAIN}; SELECT create_distributed_table('rt', 'tweet', 'append')"))
        .await
        .unwrap();
    let found = problems(Rt::bulk_create_new(&mut client, &[rt(1, 1, 1)]).await);
    let text = found.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    db.drop().await;
    assert!(text.contains("append"), "the reason does not name the kind: {text}");
}

/// `batch_id` with the ledger distributed by Citus (by `batch_id`, or a
/// single-shard ledger): exact counts and replay, or a clear error with
/// nothing written.
#[tokio::test]
async fn batch_id_with_a_distributed_ledger() {
    let db = CitusDb::new("kinds_dist_ledger").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_ID}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    client.batch_execute(&Ledger::of::<Rt>().migration_sql()).await.unwrap();
    let ledger_table: String = client
        .query_one("SELECT relname::text FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relname LIKE '%batch%' AND relkind = 'r'", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("SELECT create_distributed_table('{ledger_table}', 'batch_id', shard_count := 4)"))
        .await
        .expect("distribute the ledger");
    let mut from = 0;
    for n in [SHORT, MEDIUM, LONG, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            let (pre, rows, new) = batch(n, from);
            store(&client, "rt", &pre).await;
            let id = format!("b{n}{on:?}");
            let before = count(&client, "rt").await;
            match call!(client, on, |c| Rt::bulk(c).batch_id(id.clone()).run(&rows)) {
                Ok(r) => {
                    assert_eq!(
                        (r.inserted, r.skipped, r.replayed),
                        (new.len() as u64, (n - new.len()) as u64, false),
                        "{n} {on:?}"
                    );
                    let again = call!(client, on, |c| Rt::bulk(c).batch_id(id.clone()).run(&rows)).unwrap();
                    assert_eq!((again.inserted, again.replayed), (new.len() as u64, true), "{n} {on:?}: replay");
                    assert_stored(&client, "rt", from, &pre, &rows, &new, &format!("ledger {n} {on:?}")).await;
                }
                Err(e) => {
                    println!("distributed ledger, {n} {on:?}: {e}");
                    assert_eq!(count(&client, "rt").await, before, "{n} {on:?}: nothing written");
                }
            }
            from += n as i64 + 10;
        }
    }
    db.drop().await;
}

/// A text key distributed by a column of a non-default collation (`"C"`),
/// first offered row kept, on every path.
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "named", unique(name, n))]
pub struct Named {
    pub name: String,
    pub n: i64,
    pub v: i64,
}

#[tokio::test]
async fn distributed_by_a_text_column_of_collation_c() {
    let db = CitusDb::new("kinds_text_c").await;
    let mut client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE named (id bigint GENERATED BY DEFAULT AS IDENTITY, name text COLLATE \"C\" NOT NULL,
                                 n bigint NOT NULL, v bigint NOT NULL, UNIQUE (name, n));
             SELECT create_distributed_table('named', 'name', shard_count := 8)",
        )
        .await
        .unwrap();
    client.batch_execute(&Named::model().citus_staging_sql()).await.unwrap();
    let mut from = 0usize;
    for len in [SHORT, MEDIUM, LONG, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            // Names differing in case are distinct keys under "C"; every 5th row repeats the row before.
            let rows: Vec<Named> = (0..len)
                .map(|i| {
                    let k = if i % 5 == 4 { i - 1 } else { i } + from;
                    let name = if k.is_multiple_of(2) { format!("Name{}", k / 2) } else { format!("name{}", k / 2) };
                    Named { name, n: (k % 3) as i64, v: i as i64 + 1 }
                })
                .collect();
            let mut first: BTreeMap<(String, i64), i64> = BTreeMap::new();
            for r in &rows {
                first.entry((r.name.clone(), r.n)).or_insert(r.v);
            }
            let o = call!(client, on, |c| Named::bulk_create_new(c, &rows))
                .unwrap_or_else(|e| panic!("{len} {on:?}: {e:?}"));
            assert_eq!(o.inserted, first.len() as u64, "{len} {on:?}");
            let rep = call!(client, on, |c| Named::bulk(c).returning_skipped().run(&rows)).unwrap();
            assert_eq!((rep.inserted, rep.returned.len()), (0, len), "{len} {on:?}");
            from += len + 10;
            let got: i64 = client.query_one("SELECT count(*) FROM named", &[]).await.unwrap().get(0);
            let _ = got;
            for ((name, n), v) in first.iter().take(50) {
                let stored: i64 = client
                    .query_one("SELECT v FROM named WHERE name = $1 AND n = $2", &[name, n])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(stored, *v, "{len} {on:?}: first offered row of ({name}, {n})");
            }
        }
    }
    db.drop().await;
}

/// The rows of each of `tables`.
async fn totals(admin: &Client, tables: &[String]) -> Vec<i64> {
    let mut n = Vec::new();
    for t in tables {
        n.push(raw_count(admin, t).await);
    }
    n
}

/// `rt`'s shape with a text `tweet`: not ordered on the client, so the
/// plain call's short path on Citus is the `ON CONFLICT` form from arrays
/// (not a multi-row `VALUES` statement).
#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "rt_text", unique(tweet, retweeter))]
struct TextRt {
    tweet: String,
    retweeter: i64,
    original_author: i64,
}

/// Every call kind of `M` on `rows` (a plain call, `returning_keys`,
/// `returning_skipped`, an upsert), on `on`: each kind's inserted count, or
/// its error.
async fn each_kind<M: BulkCreateNew + Send + Sync + 'static>(
    client: &mut Client,
    on: On,
    rows: &[M],
) -> Vec<(&'static str, Result<u64, Error>)> {
    vec![
        ("plain", call!(*client, on, |c| M::bulk_create_new(c, rows)).map(|o| o.inserted)),
        ("returning_keys", call!(*client, on, |c| M::bulk(c).returning_keys().run(rows)).map(|r| r.inserted)),
        ("returning_skipped", call!(*client, on, |c| M::bulk(c).returning_skipped().run(rows)).map(|r| r.inserted)),
        (
            "upsert",
            call!(*client, on, |c| M::bulk(c).upsert(Upsert::columns(["original_author"]).keep(Keep::Last)).run(rows))
                .map(|r| r.inserted),
        ),
    ]
}

/// One connection whose `search_path` alternates between a schema with
/// hash-distributed `rt` and `rt_text` and a schema whose same-named
/// tables are of a kind the check refuses (`other`: the setup of schema
/// `SCHEMA`): every call kind, on every path, on a `Client` and in a
/// caller's transaction, counts exactly in the first schema and is refused
/// with the kind in the other, with nothing written, in every round (the
/// statements the connection prepared for the first schema's tables carry
/// a guard of the table's kind, or are followed by one).
async fn switch_every_kind(label: &str, other: &str, kind: &str) {
    let db = CitusDb::new(label).await;
    let mut client = db.connect().await;
    let other_schema = format!("{}_b", db.schema);
    let (qa, qb) = (bulk_runtime::quote_ident(&db.schema), bulk_runtime::quote_ident(&other_schema));
    let text_ddl = |schema: &str| {
        format!(
            "CREATE TABLE {schema}.rt_text (tweet text NOT NULL, retweeter bigint NOT NULL, \
             original_author bigint NOT NULL, UNIQUE (tweet, retweeter))"
        )
    };
    client
        .batch_execute(&format!(
            "{RT_ID}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4); {}; \
             SELECT create_distributed_table('rt_text', 'tweet', shard_count := 4)",
            text_ddl(&qa)
        ))
        .await
        .unwrap();
    client.batch_execute(&Rt::model().citus_staging_sql()).await.unwrap();
    client.batch_execute(&format!("CREATE SCHEMA {qb}")).await.unwrap();
    let _guard = ExtraSchema(other_schema.clone());
    let setup = other.replace("SCHEMA", &qb).replace("TEXT_DDL", &text_ddl(&qb));
    for statement in setup.split(';').filter(|s| !s.trim().is_empty()) {
        client.batch_execute(statement).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    let admin = db.connect().await;
    let tables = [format!("{qa}.rt"), format!("{qa}.rt_text"), format!("{qb}.rt"), format!("{qb}.rt_text")];
    let mut from = 0;
    let mut refusals = 0;
    for round in 0..3 {
        for (schema, q) in [(&db.schema, &qa), (&other_schema, &qb)] {
            client.batch_execute(&format!("SET search_path = {q}")).await.unwrap();
            let supported = schema == &db.schema;
            for n in [SHORT, MEDIUM, PLAIN_COPY] {
                for on in [On::Client, On::Transaction] {
                    let what = format!("{label} round {round} {n} {on:?} in {schema}");
                    let (_, rows, _) = batch(n, from);
                    let distinct = rows.iter().map(|r| (r.tweet, r.retweeter)).collect::<BTreeSet<_>>().len();
                    let texts: Vec<TextRt> = rows
                        .iter()
                        .map(|r| TextRt {
                            tweet: format!("t{}", r.tweet),
                            retweeter: r.retweeter,
                            original_author: r.original_author,
                        })
                        .collect();
                    from += n as i64 + 10;
                    let before = totals(&admin, &tables).await;
                    let mut results = each_kind(&mut client, on, &rows).await;
                    results.extend(
                        each_kind(&mut client, on, &texts)
                            .await
                            .into_iter()
                            .map(|(k, r)| (if k == "plain" { "text plain" } else { k }, r)),
                    );
                    let after = totals(&admin, &tables).await;
                    for (call, result) in results {
                        match (supported, result) {
                            (true, Ok(inserted)) => {
                                // Only the first kind of each model meets new keys.
                                if call.ends_with("plain") {
                                    assert_eq!(inserted, distinct as u64, "{what}: {call}");
                                } else {
                                    assert_eq!(inserted, 0, "{what}: {call} after the plain call");
                                }
                            }
                            (true, Err(e)) => panic!("{what}: {call}: {e:?}"),
                            (false, Ok(inserted)) => panic!("{what}: {call} wrote the {kind} table: {inserted}"),
                            (false, Err(e)) => {
                                let found = problems::<()>(Err(e));
                                assert!(
                                    found.contains(&SchemaProblem::CitusTableUnsupported { kind: kind.into() }),
                                    "{what}: {call}: {found:?}"
                                );
                                refusals += 1;
                            }
                        }
                    }
                    if supported {
                        assert_eq!(after[2..], before[2..], "{what}: the {kind} tables untouched");
                    } else {
                        assert_eq!(after, before, "{what}: nothing written anywhere");
                    }
                }
            }
        }
    }
    assert_eq!(refusals, 3 * 3 * 2 * 8, "{label}: every call in the other schema refused");
    db.drop().await;
}

#[tokio::test]
async fn search_path_switch_to_single_shard_tables_refuses_every_call_kind() {
    switch_every_kind(
        "kinds_sw_single",
        "SELECT citus_schema_distribute('SCHEMA'); \
         CREATE TABLE SCHEMA.rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL, retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter)); \
         TEXT_DDL",
        "single_shard",
    )
    .await;
}

#[tokio::test]
async fn search_path_switch_to_citus_local_tables_refuses_every_call_kind() {
    switch_every_kind(
        "kinds_sw_clocal",
        "CREATE TABLE SCHEMA.rt (id bigint GENERATED BY DEFAULT AS IDENTITY, tweet bigint NOT NULL, retweeter bigint NOT NULL, original_author bigint NOT NULL, UNIQUE (tweet, retweeter)); \
         SELECT citus_add_local_table_to_metadata('SCHEMA.rt'); TEXT_DDL; \
         SELECT citus_add_local_table_to_metadata('SCHEMA.rt_text')",
        "citus_local",
    )
    .await;
}

/// A `DO INSTEAD NOTHING` rule created on a hash-distributed `rt` after the
/// connection's check (and after its statements were prepared) turns a
/// plain `INSERT` (the plain call's `VALUES` statements among them) into no
/// statement at all, answered `INSERT 0 0`: every call kind, on every path,
/// on a `Client` and in a caller's transaction, is refused with the check's
/// `InsertRules`, nothing written (the plain call first, by the guard after
/// its statements; the next kinds by the check the refusal leads to); with
/// the rule dropped, the same batches count exactly.
#[tokio::test]
async fn an_instead_nothing_rule_after_the_check_is_refused_by_every_call_kind() {
    let db = CitusDb::new("kinds_rule_nothing").await;
    let mut client = db.connect().await;
    client
        .batch_execute(&format!("{RT_ID}; SELECT create_distributed_table('rt', 'tweet', shard_count := 4)"))
        .await
        .unwrap();
    let admin = db.connect().await;
    let mut from = 0;
    let mut wrong = Vec::new();
    for n in [SHORT, MEDIUM, PLAIN_COPY] {
        for on in [On::Client, On::Transaction] {
            // The statements of this shape prepared (Citus's on their second use).
            for _ in 0..3 {
                let (pre, rows, new) = batch(n, from);
                from += n as i64 + 10;
                store(&admin, "rt", &pre).await;
                let report = call!(client, on, |c| Rt::bulk_create_new(c, &rows)).unwrap();
                assert_eq!(report.inserted, new.len() as u64, "{n} {on:?} without the rule");
                assert_stored(&admin, "rt", from - n as i64 - 10, &pre, &rows, &new, "without the rule").await;
            }
            admin.batch_execute("CREATE RULE nothing AS ON INSERT TO rt DO INSTEAD NOTHING").await.unwrap();
            let stored = count(&admin, "rt").await;
            let (_, rows, _) = batch(n, from);
            from += n as i64 + 10;
            for (kind, result) in each_kind(&mut client, on, &rows).await {
                let refused = matches!(&result, Err(Error::SchemaMismatch { problems, .. })
                    if problems.contains(&SchemaProblem::InsertRules { rules: vec!["nothing".into()] }));
                if !refused {
                    wrong.push(format!("{kind} {n} {on:?}: {result:?}"));
                }
            }
            assert_eq!(count(&admin, "rt").await, stored, "{n} {on:?}: nothing written");
            admin.batch_execute("DROP RULE nothing ON rt").await.unwrap();
        }
    }
    assert!(wrong.is_empty(), "not refused: {wrong:#?}");
    db.drop().await;
}
