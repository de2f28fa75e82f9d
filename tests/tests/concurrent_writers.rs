//! Concurrency and dropped futures on one PostgreSQL server, beyond
//! `concurrency.rs`, `exactly_once.rs`, `input_and_drops.rs`, `faults.rs`,
//! `pools.rs` and `isolation.rs`.
//!
//! - 8 writers with overlapping shuffled batches of every length at once
//!   (under 128 rows, 128..5,000, the COPY path) on text keys under a
//!   deterministic ICU collation (whose order differs from the database's
//!   `C.UTF-8`) and under a nondeterministic (case-insensitive) one, and on a
//!   composite `NULLS NOT DISTINCT` key of a nullable integer and a uuid.
//! - Concurrent `returning_keys` / `returning_skipped` with repeats, and
//!   concurrent upserts (`only_if_changed`, `Keep::First` / `Keep::Last`)
//!   whose counts can be predicted exactly.
//! - One batch id offered by 8 writers at once (every kind that replays the
//!   others), and a batch id claimed under `REPEATABLE READ` /
//!   `SERIALIZABLE` while another transaction holds it.
//! - Writers whose sessions default to `REPEATABLE READ` / `SERIALIZABLE`
//!   (no caller transaction) and writers in callers' transactions of those
//!   levels: every error is retryable, and the retries count exactly.
//! - A call dropped while its insert waits on a key another writer holds,
//!   on every path, on a `Client` and in a caller's transaction: all or
//!   nothing, and the same connection takes the next call.
//! - A batch id call dropped while it waits on another transaction's claim;
//!   8 new connections' first calls at once; 8 writers whose calls are cut
//!   by random timeouts and rerun at once on the same connection.
//! - `migration_sql()` run again and again while 8 writers write.
//!
//! No probe here found a defect (every one passes against this build).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bulk_runtime::{BulkCreateNew, Error, Keep, Ledger, Report, Upsert};
use bulk_tests::{COPY_BATCH, Contended, Rng, TestDb, contended_batch, count, distinct_keys};
use tokio_postgres::{Client, IsolationLevel};

/// A call's batch, and each stored key (as the table compares it) with the
/// position of the row the call stored for it.
type KeysOfCall<'a> = (&'a Vec<Word>, HashMap<String, usize>);

/// A call's round, writer, batch, the positions it reported inserted, and
/// its report.
type ReportedCall = (u64, u64, Vec<Contended>, Vec<usize>, Report);

const WRITERS: u64 = 8;

/// Batch lengths per writer in a round: every path at once (under 128 rows,
/// the short path's plain form, the COPY path), rotating with the round.
fn lengths(round: u64) -> [usize; WRITERS as usize] {
    const L: [usize; WRITERS as usize] = [60, 700, COPY_BATCH + 200, 127, 2_000, COPY_BATCH + 900, 128, 4_999];
    std::array::from_fn(|w| L[(w + round as usize) % L.len()])
}

/// Writers' connections: a deadlock is detected after 50 ms.
async fn writer_clients(db: &TestDb, settings: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        let client = db.connect().await;
        client.batch_execute(&format!("SET deadlock_timeout = '50ms'; {settings}")).await.unwrap();
        clients.push(client);
    }
    clients
}

/// The plain call of a concrete model, boxed as a `Send` future (a generic
/// caller cannot see that the trait's future is `Send`).
trait PlainCall: Sized {
    fn plain<'a>(
        client: &'a mut Client,
        rows: &'a [Self],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Report, Error>> + Send + 'a>>;
}

macro_rules! plain_call {
    ($($t:ty),*) => {$(
        impl PlainCall for $t {
            fn plain<'a>(
                client: &'a mut Client,
                rows: &'a [Self],
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Report, Error>> + Send + 'a>> {
                Box::pin(<$t>::bulk_create_new(client, rows))
            }
        }
    )*};
}

plain_call!(Word, Pair, Contended);

/// One call of a run: its round, its writer, its batch and what it reported.
type Call<T> = (u64, u64, Vec<T>, Report);

/// Runs `rounds` rounds of plain calls: in each, all writers start together,
/// writer `w` offering `make(round, w)`. Every error fails the test, naming
/// the call.
async fn run_plain<T, F>(clients: Vec<Client>, rounds: u64, make: F) -> Vec<Call<T>>
where
    T: PlainCall + Send + Sync + Clone + 'static,
    F: Fn(u64, u64) -> Vec<T> + Send + Sync + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let (barrier, make) = (barrier.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for round in 0..rounds {
                let batch = make(round, w as u64);
                barrier.wait().await;
                match T::plain(&mut client, &batch).await {
                    Ok(o) => calls.push((round, w as u64, batch, o)),
                    Err(e) => panic!(
                        "writer {w}, round {round} ({} rows): {e} (sqlstate {:?}, retryable {})",
                        batch.len(),
                        e.sqlstate(),
                        e.is_retryable()
                    ),
                }
            }
            calls
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

// ---------------------------------------------------------------------------
// Text keys under ICU collations, 8 writers, every path at once.

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "word", unique(w), id = false)]
struct Word {
    w: String,
    payload: String,
}

/// The spellings of key number `k`: under the case-insensitive collation
/// the first two are one key; under `en-x-icu` all three are distinct keys,
/// which sort otherwise than under `C` (`W` < `w` < `é` in bytes; `é` < `w`
/// < `W` ... in ICU's order).
fn spellings(k: u64) -> [String; 3] {
    [format!("w{k:05}"), format!("W{k:05}"), format!("\u{e9}{k:05}")]
}

async fn text_key_writers(name: &str, collation_ddl: &str, column_collation: &str, case_insensitive: bool) {
    let db = TestDb::new(name).await;
    let admin = db.connect().await;
    admin
        .batch_execute(&format!(
            "{collation_ddl} CREATE TABLE word (w text COLLATE {column_collation} NOT NULL, payload text NOT NULL, \
             CONSTRAINT word_w_key UNIQUE (w))"
        ))
        .await
        .unwrap();
    let seed = bulk_tests::seed(name);
    let universe = 4_000u64;
    let make = move |round: u64, w: u64| -> Vec<Word> {
        let mut rng = Rng::new(seed ^ round.wrapping_mul(0x9e37) ^ w.wrapping_mul(0x1_0000_0001));
        let len = lengths(round)[w as usize];
        let base = round * universe / 2;
        (0..len)
            .map(|i| {
                let k = base + rng.below(universe);
                let s = rng.below(3) as usize;
                Word { w: spellings(k)[s].clone(), payload: format!("w{w} r{round} #{i}") }
            })
            .collect()
    };
    let clients = writer_clients(&db, "").await;
    let calls = run_plain(clients, 3, make).await;

    // The key as the table compares it.
    let norm = |s: &str| if case_insensitive { s.to_lowercase() } else { s.to_owned() };
    let mut all_keys = BTreeSet::new();
    let mut total = 0u64;
    let mut by_call: HashMap<(u64, u64), KeysOfCall<'_>> = HashMap::new();
    for (round, w, batch, o) in &calls {
        assert_eq!(o.offered, batch.len() as u64);
        assert_eq!(o.inserted + o.skipped, o.offered, "w{w} r{round}: {o:?}");
        total += o.inserted;
        let mut first = HashMap::new();
        for (i, row) in batch.iter().enumerate() {
            all_keys.insert(norm(&row.w));
            first.entry(norm(&row.w)).or_insert(i);
        }
        by_call.insert((*round, *w), (batch, first));
    }
    let stored: Vec<(String, String)> =
        admin.query("SELECT w, payload FROM word", &[]).await.unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored.len(), all_keys.len(), "one row per distinct key offered");
    assert_eq!(total, all_keys.len() as u64, "the inserted counts add up to the distinct keys");
    let mut per_call: HashMap<(u64, u64), u64> = HashMap::new();
    for (key, payload) in &stored {
        let mut parts = payload.split(' ');
        let w: u64 = parts.next().unwrap()[1..].parse().unwrap();
        let r: u64 = parts.next().unwrap()[1..].parse().unwrap();
        let i: usize = parts.next().unwrap()[1..].parse().unwrap();
        let (batch, first) = &by_call[&(r, w)];
        assert_eq!(&batch[i].w, key, "stored exactly as offered");
        assert_eq!(first[&norm(key)], i, "the first offered row of {key:?} in the batch that stored it");
        *per_call.entry((r, w)).or_default() += 1;
    }
    for (round, w, _, o) in &calls {
        assert_eq!(
            o.inserted,
            per_call.get(&(*round, *w)).copied().unwrap_or(0),
            "w{w} r{round} reported what it stored"
        );
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_on_a_text_key_under_a_deterministic_icu_collation() {
    text_key_writers("cw_icu_det", "", "\"en-x-icu\"", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_on_a_text_key_under_a_case_insensitive_collation() {
    text_key_writers(
        "cw_icu_ci",
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);",
        "ci",
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------
// A composite NULLS NOT DISTINCT key of a nullable integer and a uuid.

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "pair", unique(a, u), nulls_not_distinct)]
struct Pair {
    a: Option<i32>,
    u: uuid::Uuid,
    payload: String,
}

fn pair_of(k: u64, payload: String) -> Pair {
    let a = match k % 4 {
        0 => None,
        r => Some(r as i32 - 2),
    };
    // A bijection of k / 4 onto uuids spread over the whole range.
    let x = (k / 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) as u128;
    Pair { a, u: uuid::Uuid::from_u128((x << 64) | (k / 4) as u128), payload }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_on_a_nullable_composite_key_with_a_uuid() {
    let db = TestDb::new("cw_pair").await;
    let admin = db.connect().await;
    admin.batch_execute(&Pair::model().migration_sql()).await.unwrap();
    let seed = bulk_tests::seed("cw_pair");
    let universe = 12_000u64;
    let make = move |round: u64, w: u64| -> Vec<Pair> {
        let mut rng = Rng::new(seed ^ round.wrapping_mul(0x9e37) ^ w.wrapping_mul(0x1_0000_0001));
        let base = round * universe / 2;
        (0..lengths(round)[w as usize])
            .map(|i| pair_of(base + rng.below(universe), format!("w{w} r{round} #{i}")))
            .collect()
    };
    let clients = writer_clients(&db, "").await;
    let calls = run_plain(clients, 3, make).await;
    let mut keys = BTreeSet::new();
    let mut total = 0;
    for (round, w, batch, o) in &calls {
        assert_eq!((o.offered, o.inserted + o.skipped), (batch.len() as u64, batch.len() as u64), "w{w} r{round}");
        total += o.inserted;
        keys.extend(batch.iter().map(|p| (p.a, p.u)));
    }
    assert_eq!(count(&admin, "pair").await, keys.len() as i64, "one row per distinct key (NULL is one value)");
    assert_eq!(total, keys.len() as u64, "the inserted counts add up to the distinct keys");
    let nulls: i64 = admin.query_one("SELECT count(*) FROM pair WHERE a IS NULL", &[]).await.unwrap().get(0);
    assert_eq!(nulls as usize, keys.iter().filter(|(a, _)| a.is_none()).count());
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Concurrent returning_keys / returning_skipped, with repeats in batches.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_returning_calls_report_each_new_key_exactly_once() {
    let db = TestDb::new("cw_returning").await;
    let admin = db.connect().await;
    admin.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    let seed = bulk_tests::seed("cw_returning");
    let universe = 9_000u64;
    let mut clients = writer_clients(&db, "").await;
    // Per call: the batch and the positions it reports inserted.
    let mut inserted_positions: Vec<ReportedCall> = Vec::new();
    for round in 0..3u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
        let mut tasks = Vec::new();
        for (w, mut client) in clients.drain(..).enumerate() {
            let barrier = barrier.clone();
            let w = w as u64;
            tasks.push(tokio::spawn(async move {
                let batch = contended_batch(seed, round, w, lengths(round)[w as usize], universe);
                barrier.wait().await;
                let (positions, report) = if w.is_multiple_of(2) {
                    let r = Contended::bulk(&mut client).returning_keys().run(&batch).await.unwrap_or_else(|e| {
                        panic!("w{w} r{round}: {e}");
                    });
                    for n in &r.returned {
                        assert_eq!(n.key, (batch[n.index].a, batch[n.index].b), "w{w} r{round}: key of index");
                    }
                    (r.returned.iter().map(|n| n.index).collect::<Vec<_>>(), r.outcome())
                } else {
                    let r = Contended::bulk(&mut client).returning_skipped().run(&batch).await.unwrap_or_else(|e| {
                        panic!("w{w} r{round}: {e}");
                    });
                    let skipped: BTreeSet<usize> = r.returned.iter().copied().collect();
                    assert_eq!(skipped.len(), r.returned.len(), "w{w} r{round}: a position reported twice");
                    ((0..batch.len()).filter(|i| !skipped.contains(i)).collect(), r.outcome())
                };
                (client, (round, w, batch, positions, report))
            }));
        }
        for t in tasks {
            let (client, call) = t.await.unwrap();
            clients.push(client);
            inserted_positions.push(call);
        }
    }
    let mut reported: BTreeMap<u64, (u64, u64, usize)> = BTreeMap::new();
    for (round, w, batch, positions, o) in &inserted_positions {
        assert_eq!(o.inserted as usize, positions.len(), "w{w} r{round}: {o:?}");
        assert_eq!(o.inserted + o.skipped, batch.len() as u64);
        let mut first = HashMap::new();
        for (i, c) in batch.iter().enumerate() {
            first.entry(c.number()).or_insert(i);
        }
        for &i in positions {
            assert_eq!(first[&batch[i].number()], i, "w{w} r{round}: reported position {i} is not its key's first row");
            if let Some(other) = reported.insert(batch[i].number(), (*round, *w, i)) {
                panic!("key {} reported new by w{w} r{round} and by {other:?}", batch[i].number());
            }
        }
    }
    let keys = distinct_keys(inserted_positions.iter().map(|(_, _, b, _, _)| b));
    assert_eq!(reported.len(), keys.len(), "every distinct key reported new once");
    let stored: Vec<(i32, i64, String)> = admin
        .query("SELECT a, b, payload FROM contended", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(stored.len(), keys.len());
    for (a, b, payload) in stored {
        let k = b as u64 * 7 + a as u64;
        let (round, w, i) = reported[&k];
        assert_eq!(payload, format!("w{w} r{round} #{i}"), "key {k}: the stored row is the one reported");
    }
    db.drop().await;
}

// ---------------------------------------------------------------------------
// Concurrent upserts whose counts are predictable.

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "level", unique(a, b))]
struct Level {
    a: i32,
    b: i64,
    qty: i64,
    payload: String,
}

/// 8 writers upsert `qty` with `only_if_changed` (even writers keep the
/// first row of a repeated key, odd ones the last). In round `r` every
/// writer offers key `k` with `qty = k + r`: the first writer to reach a
/// key stored in an earlier round updates it, every other one finds it
/// unchanged; a key new in the round is inserted by exactly one writer and
/// unchanged for the others. So per round, `inserted + updated` = the
/// round's distinct keys, and per call `inserted + updated + unchanged` =
/// its distinct keys, `skipped` = its repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upserts_with_equal_values_count_exactly() {
    let db = TestDb::new("cw_upsert").await;
    let admin = db.connect().await;
    admin.batch_execute(&Level::model().migration_sql()).await.unwrap();
    let seed = bulk_tests::seed("cw_upsert");
    let universe = 9_000u64;
    let mut clients = writer_clients(&db, "").await;
    let mut stored_keys: BTreeSet<u64> = BTreeSet::new();
    let mut failures = Vec::new();
    for round in 0..4u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
        let mut tasks = Vec::new();
        for (w, mut client) in clients.drain(..).enumerate() {
            let barrier = barrier.clone();
            let w = w as u64;
            tasks.push(tokio::spawn(async move {
                let batch: Vec<Level> = contended_batch(seed, round, w, lengths(round)[w as usize], universe)
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| Level {
                        a: c.a,
                        b: c.b,
                        qty: c.number() as i64 + round as i64,
                        payload: format!("w{w} r{round} #{i}"),
                    })
                    .collect();
                let keep = if w.is_multiple_of(2) { Keep::First } else { Keep::Last };
                barrier.wait().await;
                let r = Level::bulk(&mut client)
                    .upsert(Upsert::columns(["qty"]).only_if_changed().keep(keep))
                    .run(&batch)
                    .await
                    .unwrap_or_else(|e| panic!("w{w} r{round}: {e}"));
                (client, (w, batch, r))
            }));
        }
        let mut sum = Report::default();
        let mut round_keys = BTreeSet::new();
        for t in tasks {
            let (client, (w, batch, r)) = t.await.unwrap();
            clients.push(client);
            let distinct: BTreeSet<u64> = batch.iter().map(|l| l.b as u64 * 7 + l.a as u64).collect();
            round_keys.extend(distinct.iter().copied());
            if (r.inserted + r.updated + r.unchanged, r.skipped)
                != (distinct.len() as u64, (batch.len() - distinct.len()) as u64)
            {
                failures.push(format!("round {round} w{w}: {r:?} for {} distinct of {}", distinct.len(), batch.len()));
            }
            sum += r;
        }
        let new = round_keys.difference(&stored_keys).count() as u64;
        let old = round_keys.len() as u64 - new;
        if (sum.inserted, sum.updated) != (new, old) {
            failures.push(format!(
                "round {round}: inserted {} updated {} unchanged {}, expected inserted {new} updated {old}",
                sum.inserted, sum.updated, sum.unchanged
            ));
        }
        let qty: HashMap<u64, i64> = admin
            .query("SELECT a, b, qty FROM level", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i64>(1) as u64 * 7 + r.get::<_, i32>(0) as u64, r.get(2)))
            .collect();
        let wrong = round_keys.iter().filter(|k| qty.get(k) != Some(&(**k as i64 + round as i64))).count();
        stored_keys.extend(round_keys);
        assert_eq!(wrong, 0, "round {round}: a key offered in the round keeps an older qty");
    }
    assert_eq!(count(&admin, "level").await as usize, stored_keys.len());
    // The inserted row of each key is the kept row of the writer that inserted it.
    let rows: Vec<(i32, i64, String)> = admin
        .query("SELECT a, b, payload FROM level", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    for (a, b, payload) in rows {
        let mut parts = payload.split(' ');
        let w: u64 = parts.next().unwrap()[1..].parse().unwrap();
        let r: u64 = parts.next().unwrap()[1..].parse().unwrap();
        let i: usize = parts.next().unwrap()[1..].parse().unwrap();
        let batch = contended_batch(seed, r, w, lengths(r)[w as usize], universe);
        let of_key: Vec<usize> =
            batch.iter().enumerate().filter(|(_, c)| (c.a, c.b) == (a, b)).map(|(i, _)| i).collect();
        let kept = if w.is_multiple_of(2) { of_key[0] } else { *of_key.last().unwrap() };
        assert_eq!(i, kept, "key ({a}, {b}): stored from row {i} of w{w} r{r}, its kept row is {kept}");
    }
    assert!(failures.is_empty(), "{failures:#?}");
    db.drop().await;
}

// ---------------------------------------------------------------------------
// One batch id, 8 writers at once.

/// The batch of attempt `a`: `len` rows over `2 * len` keys of its own
/// (disjoint from the other attempts'), repeating some.
fn id_batch(a: u64, len: usize) -> Vec<Contended> {
    contended_batch(a, 0, 0, len, len as u64 * 2)
        .into_iter()
        .map(|c| Contended::key(c.number() + a * 10 * len as u64, c.payload))
        .collect()
}

async fn one_id_eight_writers(name: &str, len: usize) {
    let db = TestDb::new(name).await;
    let admin = db.connect().await;
    admin.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    admin.batch_execute(&Ledger::of::<Contended>().migration_sql()).await.unwrap();
    let mut clients = writer_clients(&db, "").await;
    for attempt in 0..3u64 {
        let batch = Arc::new(id_batch(attempt, len));
        let id = format!("poll {attempt}");
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
        let mut tasks = Vec::new();
        for (w, mut client) in clients.drain(..).enumerate() {
            let (barrier, batch, id) = (barrier.clone(), batch.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = match w % 3 {
                    0 => Contended::bulk(&mut client).batch_id(id).run(batch.iter()).await,
                    1 => Contended::bulk(&mut client).batch_id(id).returning_keys().run(batch.iter()).await.map(|r| {
                        if !r.replayed {
                            assert_eq!(r.returned.len() as u64, r.inserted);
                        }
                        r.outcome()
                    }),
                    _ => {
                        Contended::bulk(&mut client).batch_id(id).returning_skipped().run(batch.iter()).await.map(|r| {
                            if !r.replayed {
                                assert_eq!(r.returned.len() as u64, r.skipped);
                            }
                            r.outcome()
                        })
                    }
                };
                (client, w, r)
            }));
        }
        let mut applied = Vec::new();
        let mut replays = Vec::new();
        for t in tasks {
            let (client, w, r) = t.await.unwrap();
            clients.push(client);
            let r = r.unwrap_or_else(|e| panic!("attempt {attempt} writer {w}: {e}"));
            if r.replayed { replays.push(r) } else { applied.push(r) }
        }
        let distinct = distinct_keys([&*batch]).len() as u64;
        assert_eq!(applied.len(), 1, "attempt {attempt}: exactly one call applies the batch: {applied:?}");
        assert_eq!(applied[0].inserted, distinct, "attempt {attempt}");
        for r in &replays {
            assert_eq!(
                (r.offered, r.inserted, r.skipped),
                (applied[0].offered, applied[0].inserted, applied[0].skipped),
                "attempt {attempt}: a replay reports the applied counts"
            );
        }
        // Each attempt's keys are its own: 2 * len keys from attempt * len.
        let stored = count(&admin, "contended").await;
        let all: Vec<Vec<Contended>> = (0..=attempt).map(|a| id_batch(a, len)).collect();
        let ledger: Vec<(String, i64, i64)> = admin
            .query("SELECT batch_id, inserted, skipped FROM bulk_batches ORDER BY batch_id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            stored as usize,
            distinct_keys(&all).len(),
            "attempt {attempt}: applied {applied:?}, distinct {distinct}, replays {}, ledger {ledger:?}",
            replays.len()
        );
    }
    let ledger: i64 = admin.query_one("SELECT count(*) FROM bulk_batches", &[]).await.unwrap().get(0);
    assert_eq!(ledger, 3);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_id_from_eight_writers_at_once_applies_once() {
    one_id_eight_writers("cw_id8_short", 60).await;
    one_id_eight_writers("cw_id8_plain", 900).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_id_from_eight_writers_at_once_applies_once_through_copy() {
    one_id_eight_writers("cw_id8_copy", COPY_BATCH).await;
}

// ---------------------------------------------------------------------------
// A batch id claimed under REPEATABLE READ / SERIALIZABLE while another
// transaction holds it.

/// A holds the id in its (READ COMMITTED) transaction; B, in a caller's
/// transaction of `level` whose snapshot predates A's commit, calls with the
/// same id and waits; A commits. B cannot see A's ledger row: the README
/// promises that such a conflict is a retryable error (the retry helper
/// reruns it in a fresh transaction), and the retry replays A's counts.
async fn id_claimed_under(level: IsolationLevel, len: usize) {
    let name = format!("cw_id_{level:?}_{len}").to_lowercase();
    let db = TestDb::new(&name).await;
    let mut a = db.connect().await;
    a.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    a.batch_execute(&Ledger::of::<Contended>().migration_sql()).await.unwrap();
    let batch: Vec<Contended> = contended_batch(1, 0, 0, len, len as u64 * 2);
    let distinct = distinct_keys([&batch]).len() as u64;
    let mut b = db.connect().await;
    // Warm B up (scratch table, statements) on keys of their own.
    Contended::bulk_create_new(&mut b, (0..COPY_BATCH as u64).map(|k| Contended::key(10_000_000 + k, "warm".into())))
        .await
        .unwrap();
    Contended::bulk_create_new(&mut b, [Contended::key(20_000_000, "warm".into())]).await.unwrap();

    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    // A claims the id in its transaction and holds it until told to commit.
    let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
    let (commit_tx, commit_rx) = tokio::sync::oneshot::channel::<()>();
    let a_batch = batch.clone();
    let holder = tokio::spawn(async move {
        let mut tx = a.transaction().await.unwrap();
        let first = Contended::bulk(&mut tx).batch_id("x").run(&a_batch).await.unwrap();
        claimed_tx.send(first).unwrap();
        commit_rx.await.unwrap();
        tx.commit().await.unwrap();
    });
    let first = claimed_rx.await.unwrap();
    assert_eq!(first.inserted, distinct);

    let b_batch = batch.clone();
    let call = tokio::spawn(async move {
        let outcome = {
            let mut tx = b.build_transaction().isolation_level(level).start().await.unwrap();
            // The snapshot is taken now, before A commits.
            let _: i64 = tx.query_one("SELECT count(*) FROM contended", &[]).await.unwrap().get(0);
            let r = Contended::bulk(&mut tx).batch_id("x").run(&b_batch).await;
            if r.is_ok() {
                tx.commit().await.unwrap();
            }
            r
        };
        (b, outcome)
    });
    let admin = db.connect().await;
    assert!(
        bulk_tests::eventually(2_000, || async {
            admin
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", &[&b_pid])
                .await
                .unwrap()
                .is_some()
        })
        .await,
        "B waits for A's claim"
    );
    commit_tx.send(()).unwrap();
    holder.await.unwrap();
    let (mut b, outcome) = call.await.unwrap();
    match outcome {
        Ok(r) => {
            // Seeing A's row is not possible under this snapshot; a replay
            // would be fine too, a second application is not.
            assert!(r.replayed, "{level:?}, {len} rows: B applied the batch a second time: {r:?}");
        }
        Err(e) => {
            assert!(
                e.is_retryable(),
                "{level:?}, {len} rows: B's error is not retryable (sqlstate {:?}): {e}",
                e.sqlstate()
            );
            // The retry, in a fresh transaction, replays A's counts.
            let mut tx = b.build_transaction().isolation_level(level).start().await.unwrap();
            let r = Contended::bulk(&mut tx).batch_id("x").run(&batch).await.unwrap();
            tx.commit().await.unwrap();
            assert!(r.replayed, "{level:?}, {len} rows: {r:?}");
            assert_eq!((r.inserted, r.skipped), (first.inserted, first.skipped));
        }
    }
    assert_eq!(count(&admin, "contended").await as u64, distinct + 1 + COPY_BATCH as u64);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_id_held_by_another_transaction_under_repeatable_read_is_retryable() {
    for len in [50, 700, COPY_BATCH] {
        id_claimed_under(IsolationLevel::RepeatableRead, len).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_id_held_by_another_transaction_under_serializable_is_retryable() {
    for len in [50, 700, COPY_BATCH] {
        id_claimed_under(IsolationLevel::Serializable, len).await;
    }
}

// ---------------------------------------------------------------------------
// Writers under REPEATABLE READ / SERIALIZABLE: only retryable errors.

#[derive(Clone, Copy, Debug)]
enum Iso {
    /// The session's default (`default_transaction_isolation`), no caller transaction.
    SessionDefault(IsolationLevel),
    /// A caller's transaction of that level.
    CallerTx(IsolationLevel),
}

fn level_name(l: IsolationLevel) -> &'static str {
    match l {
        IsolationLevel::Serializable => "serializable",
        IsolationLevel::RepeatableRead => "repeatable read",
        _ => "read committed",
    }
}

/// One attempt of writer `w`'s call, kind by writer: plain, returning_keys,
/// upsert. Returns the inserted count.
async fn iso_attempt(client: &mut Client, iso: Iso, w: u64, batch: &[Contended]) -> Result<u64, Error> {
    async fn call<C: bulk_runtime::Connection + ?Sized>(c: &mut C, w: u64, batch: &[Contended]) -> Result<u64, Error> {
        match w % 3 {
            0 => Contended::bulk_create_new(c, batch).await.map(|r| r.inserted),
            1 => Contended::bulk(c).returning_keys().run(batch).await.map(|r| {
                assert_eq!(r.returned.len() as u64, r.inserted);
                r.inserted
            }),
            _ => Contended::bulk(c)
                .upsert(Upsert::columns(["payload"]).only_if_changed())
                .run(batch)
                .await
                .map(|r| r.inserted),
        }
    }
    match iso {
        Iso::SessionDefault(_) => call(client, w, batch).await,
        Iso::CallerTx(level) => {
            let mut tx = client.build_transaction().isolation_level(level).start().await.map_err(|e| {
                panic!("begin: {e}");
            })?;
            let n = call(&mut tx, w, batch).await?;
            match tx.commit().await {
                Ok(()) => Ok(n),
                // A serialization failure at commit (the caller's own
                // statement, not the call's): the rows are not stored; the
                // caller retries.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) => {
                    Err(Error::Usage { model: "commit", message: COMMIT_FAILED.into() })
                }
                Err(e) => panic!("commit: {e:?}"),
            }
        }
    }
}

const COMMIT_FAILED: &str = "40001 at the caller's commit";

async fn writers_under(name: &str, iso: Iso) {
    let db = TestDb::new(name).await;
    let admin = db.connect().await;
    admin.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    let settings = match iso {
        Iso::SessionDefault(l) => format!("SET default_transaction_isolation = '{}';", level_name(l)),
        Iso::CallerTx(_) => String::new(),
    };
    let mut clients = writer_clients(&db, &settings).await;
    let seed = bulk_tests::seed(name);
    let universe = 8_000u64;
    let mut total = 0u64;
    let mut batches = Vec::new();
    let mut bad = Vec::new();
    let mut retries = 0u64;
    for round in 0..3u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
        let mut tasks = Vec::new();
        for (w, mut client) in clients.drain(..).enumerate() {
            let barrier = barrier.clone();
            let w = w as u64;
            tasks.push(tokio::spawn(async move {
                let batch = contended_batch(seed, round, w, lengths(round)[w as usize], universe);
                barrier.wait().await;
                let mut errors = Vec::new();
                let mut inserted = None;
                for attempt in 0..40u32 {
                    match iso_attempt(&mut client, iso, w, &batch).await {
                        Ok(n) => {
                            inserted = Some(n);
                            break;
                        }
                        Err(e) => {
                            let at_commit = e.to_string().contains(COMMIT_FAILED);
                            let retryable = e.is_retryable() || at_commit;
                            errors.push((retryable, e.sqlstate().map(|s| s.code().to_owned()), e.to_string()));
                            if !retryable {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5 + u64::from(attempt) * 5)).await;
                        }
                    }
                }
                (client, batch, inserted, errors)
            }));
        }
        for t in tasks {
            let (client, batch, inserted, errors) = t.await.unwrap();
            clients.push(client);
            retries += errors.len() as u64;
            for (retryable, code, msg) in &errors {
                if !retryable {
                    bad.push(format!("round {round}, {} rows: not retryable: {code:?} {msg}", batch.len()));
                }
            }
            if inserted.is_none() && errors.iter().all(|e| e.0) {
                bad.push(format!(
                    "round {round}: {} rows: gave up after {} retryable errors",
                    batch.len(),
                    errors.len()
                ));
            }
            total += inserted.unwrap_or(0);
            batches.push(batch);
        }
    }
    println!("{name}: {retries} retried errors");
    assert!(bad.is_empty(), "{iso:?}: {bad:#?}");
    let keys = distinct_keys(&batches);
    assert_eq!(count(&admin, "contended").await as usize, keys.len(), "{iso:?}");
    assert_eq!(total, keys.len() as u64, "{iso:?}: the successful attempts' inserted counts add up");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_whose_sessions_default_to_repeatable_read_fail_only_retryably() {
    writers_under("cw_rr_default", Iso::SessionDefault(IsolationLevel::RepeatableRead)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_whose_sessions_default_to_serializable_fail_only_retryably() {
    writers_under("cw_ser_default", Iso::SessionDefault(IsolationLevel::Serializable)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_in_repeatable_read_transactions_fail_only_retryably() {
    writers_under("cw_rr_tx", Iso::CallerTx(IsolationLevel::RepeatableRead)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_in_serializable_transactions_fail_only_retryably() {
    writers_under("cw_ser_tx", Iso::CallerTx(IsolationLevel::Serializable)).await;
}

// ---------------------------------------------------------------------------
// A call dropped while its insert waits on a key another writer holds.

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "held", unique(k))]
struct Held {
    k: i64,
    note: String,
}

/// Waits until backend `pid` waits on a lock (a row or transaction lock).
async fn waits_on_a_lock(admin: &Client, pid: i32) {
    let found = bulk_tests::eventually(4_000, || async {
        admin
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' AND wait_event_type = 'Lock'",
                &[&pid],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(found, "backend {pid} never waited on a lock");
}

async fn stored_between(client: &impl tokio_postgres::GenericClient, from: i64, to: i64) -> i64 {
    client.query_one("SELECT count(*) FROM held WHERE k >= $1 AND k < $2", &[&from, &to]).await.unwrap().get(0)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Plain,
    Upsert,
    Keys,
    Skipped,
    BatchId,
    /// The plain call as a new connection's first call (after the process
    /// has checked the model).
    First,
}

/// The call of `kind` on `conn`: its inserted count.
async fn held_call<C: bulk_runtime::Connection + ?Sized>(
    kind: Kind,
    conn: &mut C,
    batch: &[Held],
    id: &str,
) -> Result<u64, Error> {
    match kind {
        Kind::Plain | Kind::First => Held::bulk_create_new(conn, batch).await.map(|r| r.inserted),
        Kind::Upsert => Held::bulk(conn).upsert(Upsert::columns(["note"])).run(batch).await.map(|r| r.inserted),
        Kind::Keys => Held::bulk(conn).returning_keys().run(batch).await.map(|r| r.inserted),
        Kind::Skipped => Held::bulk(conn).returning_skipped().run(batch).await.map(|r| r.inserted),
        Kind::BatchId => Held::bulk(conn).batch_id(id.to_owned()).run(batch).await.map(|r| r.inserted),
    }
}

/// For each path, blocker outcome and place (a `Client`, a caller's
/// transaction): a blocker holds key `held` uncommitted; the call's insert
/// meets it and waits; the call is dropped; the blocker commits or rolls
/// back; the dropped call's rows are all there or none (of its new keys),
/// nothing is left open, and the same connection's next call of the same
/// batch counts exactly.
async fn dropped_while_waiting(nested: bool, kind: Kind) {
    let name = format!("cw_drop_wait_{nested}_{kind:?}").to_lowercase();
    let db = TestDb::new(&name).await;
    let admin = db.connect().await;
    admin.batch_execute(&Held::model().migration_sql()).await.unwrap();
    admin.batch_execute(&Ledger::of::<Held>().migration_sql()).await.unwrap();
    let mut client = db.connect().await;
    // Warm up both paths on keys of their own.
    Held::bulk_create_new(&mut client, (0..COPY_BATCH as i64).map(|k| Held { k: -1 - k, note: "warm".into() }))
        .await
        .unwrap();
    Held::bulk_create_new(&mut client, (0..300).map(|k| Held { k: -100_000 - k, note: "warm".into() })).await.unwrap();
    Held::bulk_create_new(&mut client, [Held { k: -200_000, note: "warm".into() }]).await.unwrap();
    let mut pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let mut failures = Vec::new();
    let mut round = 0i64;
    let lens: &[usize] =
        if kind == Kind::First { &[3, 48, 49, 127, 128, 700] } else { &[50, 127, 128, 700, 4_999, COPY_BATCH + 50] };
    for &len in lens {
        for blocker_commits in [true, false] {
            round += 1;
            let id = format!("batch {round}");
            if kind == Kind::First {
                client = db.connect().await;
                pid = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
            }
            let base = round * 1_000_000;
            // Keys in reverse order, every fifth repeated; the held key in the middle.
            let mut batch: Vec<Held> =
                (0..len as i64).rev().map(|i| Held { k: base + i, note: "new".into() }).collect();
            for i in (0..len as i64).step_by(5) {
                batch.push(Held { k: base + i, note: "repeat".into() });
            }
            let held = base + len as i64 / 2;
            let blocker = db.connect().await;
            blocker.batch_execute("BEGIN").await.unwrap();
            blocker.execute("INSERT INTO held (k, note) VALUES ($1, 'blocker')", &[&held]).await.unwrap();

            let what = format!("{kind:?}, {len} rows, blocker commits={blocker_commits}, nested={nested}");
            let before_tx_rows;
            let dropped_rows: i64;
            if nested {
                let mut tx = client.transaction().await.unwrap();
                before_tx_rows = stored_between(&tx, base, base + 1_000_000).await;
                let done = {
                    let call = held_call(kind, &mut tx, &batch, &id);
                    tokio::select! {
                        r = call => Some(r),
                        () = waits_on_a_lock(&admin, pid) => None,
                    }
                };
                if let Some(r) = done {
                    failures.push(format!("{what}: the call did not wait on the held key: {r:?}"));
                }
                if blocker_commits {
                    blocker.batch_execute("COMMIT").await.unwrap();
                } else {
                    blocker.batch_execute("ROLLBACK").await.unwrap();
                }
                let in_tx = match tx
                    .query_one("SELECT count(*) FROM held WHERE k >= $1 AND k < $2", &[&base, &(base + 1_000_000)])
                    .await
                {
                    Ok(r) => r.get::<_, i64>(0),
                    Err(e) => {
                        failures.push(format!("{what}: the caller's transaction after the drop: {e:?}"));
                        db.drop().await;
                        panic!("{failures:#?}");
                    }
                };
                // The blocker's committed key is visible (READ COMMITTED).
                let blocker_row = i64::from(blocker_commits);
                dropped_rows = in_tx - before_tx_rows - blocker_row;
                if dropped_rows != 0 {
                    failures.push(format!(
                        "{what}: {dropped_rows} rows of the dropped call in the caller's transaction (it never released)"
                    ));
                }
                match held_call(kind, &mut tx, &batch, &id).await {
                    Ok(inserted) => {
                        let expected = len as u64 - blocker_row as u64 - dropped_rows as u64;
                        if inserted != expected {
                            failures.push(format!(
                                "{what}: next call in the transaction inserted {inserted} of {expected}"
                            ));
                        }
                    }
                    Err(e) => failures.push(format!("{what}: next call in the transaction: {e}")),
                }
                tx.commit().await.unwrap();
            } else {
                let done = {
                    let call = held_call(kind, &mut client, &batch, &id);
                    tokio::select! {
                        r = call => Some(r),
                        () = waits_on_a_lock(&admin, pid) => None,
                    }
                };
                if let Some(r) = done {
                    failures.push(format!("{what}: the call did not wait on the held key: {r:?}"));
                }
                if blocker_commits {
                    blocker.batch_execute("COMMIT").await.unwrap();
                } else {
                    blocker.batch_execute("ROLLBACK").await.unwrap();
                }
                // What the dropped call left, seen from its own connection
                // (behind whatever its drop queued).
                let n = match client
                    .query_one(
                        "SELECT count(*) FROM held WHERE k >= $1 AND k < $2 AND note <> 'blocker'",
                        &[&base, &(base + 1_000_000)],
                    )
                    .await
                {
                    Ok(r) => r.get::<_, i64>(0),
                    Err(e) => {
                        failures.push(format!("{what}: the connection after the drop: {e:?}"));
                        db.drop().await;
                        panic!("{failures:#?}");
                    }
                };
                let open: bool = admin
                    .query_one("SELECT xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = $1", &[&pid])
                    .await
                    .unwrap()
                    .get(0);
                if open {
                    failures.push(format!("{what}: a transaction is left open after the drop"));
                }
                let new_keys = len as i64 - i64::from(blocker_commits);
                if n != 0 && n != new_keys {
                    failures.push(format!("{what}: half-written: {n} of its {new_keys} new keys"));
                }
                // These commit only after their last statement's answer.
                let commits_late = matches!(kind, Kind::Upsert | Kind::BatchId | Kind::First)
                    || (matches!(kind, Kind::Keys | Kind::Skipped) && len >= COPY_BATCH);
                if commits_late && n != 0 {
                    failures.push(format!("{what}: dropped before its last answer, yet {n} rows stored"));
                }
                match held_call(kind, &mut client, &batch, &id).await {
                    Ok(inserted) => {
                        let expected = (new_keys - n) as u64;
                        let replayed_ok = kind == Kind::BatchId && n != 0 && inserted == new_keys as u64;
                        if inserted != expected && !replayed_ok {
                            failures.push(format!("{what}: next call inserted {inserted}, expected {expected}"));
                        }
                    }
                    Err(e) => failures.push(format!("{what}: next call: {e}")),
                }
            }
            let stored = stored_between(&admin, base, base + 1_000_000).await;
            if stored != len as i64 {
                failures.push(format!("{what}: {stored} of {len} keys stored at the end"));
            }
        }
    }
    db.drop().await;
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_waiting_on_another_writers_key_on_a_client() {
    for kind in [Kind::Plain, Kind::Upsert, Kind::Keys, Kind::Skipped, Kind::BatchId, Kind::First] {
        dropped_while_waiting(false, kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_waiting_on_another_writers_key_in_a_transaction() {
    for kind in [Kind::Plain, Kind::Upsert, Kind::Keys, Kind::Skipped, Kind::BatchId] {
        dropped_while_waiting(true, kind).await;
    }
}

// ---------------------------------------------------------------------------
// migration_sql() again and again while writers write.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_sql_run_while_eight_writers_write() {
    let db = TestDb::new("cw_migrate").await;
    let admin = db.connect().await;
    admin.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    let seed = bulk_tests::seed("cw_migrate");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let migrator = {
        let client = db.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut runs = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .batch_execute(&Contended::model().migration_sql())
                    .await
                    .unwrap_or_else(|e| panic!("migration run {runs}: {e:?}"));
                client.batch_execute(&Ledger::of::<Contended>().migration_sql()).await.unwrap();
                runs += 1;
            }
            runs
        })
    };
    let clients = writer_clients(&db, "").await;
    let universe = 10_000u64;
    let calls =
        run_plain(clients, 3, move |round, w| contended_batch(seed, round, w, lengths(round)[w as usize], universe))
            .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = migrator.await.unwrap();
    assert!(runs > 0);
    let keys = distinct_keys(calls.iter().map(|(_, _, b, _)| b));
    let total: u64 = calls.iter().map(|(_, _, _, o)| o.inserted).sum();
    assert_eq!(count(&admin, "contended").await as usize, keys.len());
    assert_eq!(total, keys.len() as u64);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// A batch id call dropped while it waits for another transaction's claim.

/// A holds batch id `x` in its open transaction; B's call with the same id
/// waits on A's claim and is dropped there (a timeout). Then A commits or
/// rolls back. B's connection takes the next call at once (nothing of the
/// dropped call holds a lock or a transaction), which replays A's counts
/// (A committed) or applies the batch (A rolled back); a third writer is
/// never blocked by the dropped call.
async fn id_call_dropped_while_waiting(len: usize) {
    let db = TestDb::new(&format!("cw_id_drop_{len}")).await;
    let admin = db.connect().await;
    admin.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    admin.batch_execute(&Ledger::of::<Contended>().migration_sql()).await.unwrap();
    let mut b = db.connect().await;
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    for (round, a_commits) in [(0u64, true), (1, false)] {
        let batch = id_batch(round, len);
        let distinct = distinct_keys([&batch]).len() as u64;
        let id = format!("held {round}");
        let (claimed_tx, claimed_rx) = tokio::sync::oneshot::channel();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let mut a = db.connect().await;
        let (a_batch, a_id) = (batch.clone(), id.clone());
        let holder = tokio::spawn(async move {
            let mut tx = a.transaction().await.unwrap();
            let first = Contended::bulk(&mut tx).batch_id(a_id).run(&a_batch).await.unwrap();
            claimed_tx.send(first).unwrap();
            end_rx.await.unwrap();
            if a_commits { tx.commit().await.unwrap() } else { tx.rollback().await.unwrap() }
        });
        let first = claimed_rx.await.unwrap();
        assert_eq!(first.inserted, distinct);
        let dropped = {
            let call = Contended::bulk(&mut b).batch_id(id.clone()).run(&batch);
            tokio::select! {
                r = call => Some(r),
                () = waits_on_a_lock(&admin, b_pid) => None,
            }
        };
        assert!(dropped.is_none(), "B did not wait on A's claim: {dropped:?}");
        end_tx.send(()).unwrap();
        holder.await.unwrap();
        // A third writer with the same id is not blocked by B's dropped call.
        let mut c = db.connect().await;
        c.batch_execute("SET lock_timeout = '5s'").await.unwrap();
        let third = Contended::bulk(&mut c).batch_id(id.clone()).run(&batch).await;
        let next =
            tokio::time::timeout(Duration::from_secs(10), Contended::bulk(&mut b).batch_id(id.clone()).run(&batch))
                .await
                .unwrap_or_else(|_| panic!("{len} rows, A commits={a_commits}: B's next call hangs"))
                .unwrap_or_else(|e| panic!("{len} rows, A commits={a_commits}: B's next call: {e}"));
        let third = third.unwrap_or_else(|e| panic!("{len} rows, A commits={a_commits}: a third writer: {e}"));
        assert!(!bulk_tests::in_transaction(&admin, b_pid).await, "B's transaction is closed");
        // Exactly one of A, C and B's next call applied the batch.
        let applied = u64::from(a_commits) + u64::from(!third.replayed) + u64::from(!next.replayed);
        assert_eq!(applied, 1, "{len} rows, A commits={a_commits}: third {third:?}, next {next:?}");
        for r in [third, next] {
            assert_eq!((r.inserted, r.skipped), (first.inserted, first.skipped), "{len} rows, A commits={a_commits}");
        }
    }
    let all: Vec<Vec<Contended>> = (0..2).map(|a| id_batch(a, len)).collect();
    assert_eq!(count(&admin, "contended").await as usize, distinct_keys(&all).len());
    let ledger: i64 = admin.query_one("SELECT count(*) FROM bulk_batches", &[]).await.unwrap().get(0);
    assert_eq!(ledger, 2);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_id_call_dropped_while_waiting_for_another_claim() {
    for len in [50, 700, COPY_BATCH] {
        id_call_dropped_while_waiting(len).await;
    }
}

// ---------------------------------------------------------------------------
// 8 new connections' first calls at once, round after round.

#[derive(BulkCreateNew, Debug, Clone, PartialEq)]
#[bulk(table = "fresh", unique(a, b))]
struct Fresh {
    a: i32,
    b: i64,
    payload: String,
}

plain_call!(Fresh);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_new_connections_first_calls_at_once() {
    let db = TestDb::new("cw_fresh").await;
    let mut admin = db.connect().await;
    admin.batch_execute(&Fresh::model().migration_sql()).await.unwrap();
    // The process passes a check of the model.
    Fresh::bulk_create_new(&mut admin, [Fresh { a: -1, b: -1, payload: "warm".into() }]).await.unwrap();
    let seed = bulk_tests::seed("cw_fresh");
    const LENS: [usize; 8] = [3, 48, 49, 127, 128, 300, 2_000, 48];
    let universe = 1_500u64;
    let mut all = Vec::new();
    for round in 0..6u64 {
        // New connections each round: every call is its connection's first.
        let clients = writer_clients(&db, "").await;
        let calls = run_plain(clients, 1, move |_, w| {
            contended_batch(seed, round, w, LENS[(w + round) as usize % 8], universe)
                .into_iter()
                .map(|c| Fresh { a: c.a, b: c.b, payload: c.payload })
                .collect()
        })
        .await;
        all.extend(calls);
    }
    let keys: BTreeSet<(i32, i64)> = all.iter().flat_map(|(_, _, b, _)| b.iter().map(|f| (f.a, f.b))).collect();
    let total: u64 = all.iter().map(|(_, _, _, o)| o.inserted).sum();
    for (_, w, b, o) in &all {
        assert_eq!((o.offered, o.inserted + o.skipped), (b.len() as u64, b.len() as u64), "writer {w}");
    }
    assert_eq!(count(&admin, "fresh").await as usize, keys.len() + 1);
    assert_eq!(total, keys.len() as u64);
    db.drop().await;
}

// ---------------------------------------------------------------------------
// 8 writers whose calls are cut by random timeouts, each rerun at once on
// the same connection.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_cut_by_random_timeouts_rerun_on_the_same_connection() {
    let db = TestDb::new("cw_cut").await;
    let admin = db.connect().await;
    admin.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    let seed = bulk_tests::seed("cw_cut");
    let universe = 8_000u64;
    let mut clients = writer_clients(&db, "").await;
    // (round, writer, attempt) -> inserted, for the calls that completed;
    // the dropped attempts, whose stored rows are counted from the payloads.
    let mut completed: HashMap<(u64, u64, u64), u64> = HashMap::new();
    let mut dropped: BTreeSet<(u64, u64, u64)> = BTreeSet::new();
    let mut batches = Vec::new();
    for round in 0..6u64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
        let mut tasks = Vec::new();
        for (w, mut client) in clients.drain(..).enumerate() {
            let barrier = barrier.clone();
            let w = w as u64;
            tasks.push(tokio::spawn(async move {
                let len = lengths(round)[w as usize];
                let mut rng = Rng::new(seed ^ (round << 8) ^ w);
                let base = contended_batch(seed, round, w, len, universe);
                let mut done = Vec::new();
                let mut cut = Vec::new();
                barrier.wait().await;
                for attempt in 0..3u64 {
                    let batch: Vec<Contended> = base
                        .iter()
                        .enumerate()
                        .map(|(i, c)| Contended { payload: format!("w{w} r{round} a{attempt} #{i}"), ..c.clone() })
                        .collect();
                    // The last attempt runs to its end; the others get 1..120 ms.
                    let limit = Duration::from_millis(if attempt == 2 { 60_000 } else { 1 + rng.below(120) });
                    match tokio::time::timeout(limit, Contended::bulk_create_new(&mut client, &batch)).await {
                        Ok(Ok(o)) => done.push((attempt, o, batch)),
                        Ok(Err(e)) => panic!("w{w} r{round} a{attempt}: {e}"),
                        Err(_) => cut.push(attempt),
                    }
                }
                (client, w, done, cut, base)
            }));
        }
        for t in tasks {
            let (client, w, done, cut, base) = t.await.unwrap();
            clients.push(client);
            for (attempt, o, batch) in done {
                assert_eq!((o.offered, o.inserted + o.skipped), (batch.len() as u64, batch.len() as u64));
                completed.insert((round, w, attempt), o.inserted);
            }
            dropped.extend(cut.into_iter().map(|a| (round, w, a)));
            batches.push(base);
        }
    }
    println!("{} calls completed, {} dropped", completed.len(), dropped.len());
    let stored: Vec<String> =
        admin.query("SELECT payload FROM contended", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let mut per_attempt: HashMap<(u64, u64, u64), u64> = HashMap::new();
    for p in &stored {
        let mut parts = p.split(' ');
        let w: u64 = parts.next().unwrap()[1..].parse().unwrap();
        let r: u64 = parts.next().unwrap()[1..].parse().unwrap();
        let a: u64 = parts.next().unwrap()[1..].parse().unwrap();
        *per_attempt.entry((r, w, a)).or_default() += 1;
    }
    let keys = distinct_keys(&batches);
    assert_eq!(stored.len(), keys.len(), "one row per distinct key");
    for (call, inserted) in &completed {
        assert_eq!(
            per_attempt.get(call).copied().unwrap_or(0),
            *inserted,
            "completed call {call:?} reported what it stored"
        );
    }
    for call in per_attempt.keys() {
        assert!(completed.contains_key(call) || dropped.contains(call), "rows of an unknown call {call:?}");
    }
    db.drop().await;
}
