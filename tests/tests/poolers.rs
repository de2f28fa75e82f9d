//! Poolers and resets: a pooler in transaction mode hands each transaction
//! a different backend, whose session has neither the scratch table nor the
//! prepared statement; the call must notice and work with exact counts.

use bulk_runtime::{BulkCreateNew, Ledger, Report, Upsert};
use bulk_tests::pgbouncer::Pgbouncer;
use bulk_tests::{COPY_BATCH, Contended, TestDb, contended_batch, count, distinct_keys};
use tokio_postgres::Client;

async fn setup(name: &str) -> TestDb {
    let db = TestDb::new(name).await;
    db.connect().await.batch_execute(&Contended::model().migration_sql()).await.unwrap();
    db
}

fn rows(from: u64, n: usize, tag: &str) -> Vec<Contended> {
    (0..n as u64).map(|k| Contended::key(from + k, format!("{tag} {k}"))).collect()
}

/// Pins one server connection of the pool: opens a transaction and returns
/// the backend's pid.
async fn pin(client: &Client) -> i32 {
    client.batch_execute("BEGIN").await.unwrap();
    // Unnamed: a pinned backend may hold another process's statements of
    // the names this process prepares under.
    client.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0)
}

async fn unpin(client: &Client) {
    client.batch_execute("COMMIT").await.unwrap();
}

/// Prepared statements of the bulk call left on the pooler's `pool_size`
/// backends: pins each of them and counts.
async fn left_behind(bouncer: &Pgbouncer, pool_size: usize) -> usize {
    let mut pins = Vec::new();
    let mut pids = std::collections::BTreeSet::new();
    let mut total = 0;
    for _ in 0..pool_size {
        let pin_client = bouncer.connect().await;
        pids.insert(pin(&pin_client).await);
        let n: i64 = pin_client
            .query_typed("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'INSERT%'", &[])
            .await
            .unwrap()[0]
            .get(0);
        total += n as usize;
        pins.push(pin_client);
    }
    assert_eq!(pids.len(), pool_size, "each pin holds another backend");
    for p in &pins {
        unpin(p).await;
    }
    total
}

#[tokio::test]
async fn transaction_pooler_switching_backends_between_calls() {
    // A pool of two server connections. While a pinning client holds one in an
    // open transaction, the writer's next transaction must take the other, so
    // each call below runs on a known backend, alternating: every second call
    // finds a backend whose session has never seen the model (no scratch
    // table, no prepared statement) or has a stale one.
    let db = setup("pooler_switch").await;
    let bouncer = Pgbouncer::start(&db, "transaction", 2).await;
    let mut writer = bouncer.connect().await;
    let pins = [bouncer.connect().await, bouncer.connect().await];
    let mut next = 0u64;
    let mut last: Vec<Contended> = Vec::new();
    let mut backends = Vec::new();
    for step in 0..8usize {
        // Pin the backend the writer did not use last.
        let pinned = pin(&pins[step % 2]).await;
        if step > 0 {
            unpin(&pins[(step + 1) % 2]).await;
        }
        backends.push(pinned);
        // Short batches (the prepared statement) and long ones (COPY into the
        // scratch table), some inside a caller's transaction; each repeats
        // half of the keys the call before stored.
        let n = if step % 4 < 2 { 10 } else { COPY_BATCH };
        let batch = rows(next, n, "p");
        let repeats = &last[..last.len() / 2];
        let offered: Vec<Contended> = repeats.iter().chain(&batch).cloned().collect();
        let o = if step % 3 == 2 {
            let mut tx = writer.transaction().await.unwrap();
            let o = Contended::bulk_create_new(&mut tx, &offered).await.unwrap();
            tx.commit().await.unwrap();
            o
        } else {
            Contended::bulk_create_new(&mut writer, &offered).await.unwrap()
        };
        let skipped = repeats.len() as u64;
        assert_eq!(
            o,
            Report { offered: n as u64 + skipped, inserted: n as u64, skipped, ..Report::default() },
            "step {step}"
        );
        next += n as u64;
        last = batch;
    }
    unpin(&pins[1]).await;
    // The writer's statement went stale at each switch; it stopped preparing
    // it after the second time, so at most two statements of each form of
    // the insert (plain, and ON CONFLICT for the shortest batches) were left
    // behind.
    let left = left_behind(&bouncer, 2).await;
    assert!(left <= 2 * 2, "{left} statements left on the pooler's backends");
    let distinct: std::collections::BTreeSet<i32> = backends.iter().copied().collect();
    assert_eq!(distinct.len(), 2, "the pins held both server connections in turn: {backends:?}");
    let direct = db.connect().await;
    assert_eq!(count(&direct, "contended").await, next as i64);
    db.drop().await;
}

#[tokio::test]
async fn concurrent_writers_through_a_transaction_pooler() {
    let db = setup("pooler_concurrent").await;
    let bouncer = Pgbouncer::start(&db, "transaction", 3).await;
    let seed = bulk_tests::seed("concurrent_writers_through_a_transaction_pooler");
    let writers = 6u64;
    let rounds = 4u64;
    let mut tasks = Vec::new();
    let mut batches = Vec::new();
    for w in 0..writers {
        let mine: Vec<Vec<Contended>> = (0..rounds)
            .map(|r| contended_batch(seed, r, w, if (w + r) % 2 == 0 { 800 } else { COPY_BATCH }, 6_000))
            .collect();
        batches.extend(mine.clone());
        let mut client = bouncer.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut total = Report::default();
            for (r, batch) in mine.iter().enumerate() {
                match Contended::bulk_create_new(&mut client, batch).await {
                    Ok(o) => total += o,
                    Err(e) => panic!("writer {w}, round {r}: {e}"),
                }
            }
            total
        }));
    }
    let mut total = Report::default();
    for t in tasks {
        total += t.await.unwrap();
    }
    let keys = distinct_keys(&batches);
    assert_eq!(total.offered, batches.iter().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!(total.inserted, keys.len() as u64);
    assert_eq!(count(&db.connect().await, "contended").await, keys.len() as i64);
    // Each client prepares the short-batch insert in two forms (plain, and
    // ON CONFLICT after a conflict with another writer), each at most twice.
    let left = left_behind(&bouncer, 3).await;
    assert!(left <= 2 * 2 * writers as usize, "{left} statements left: at most two per client and form");
    db.drop().await;
}

/// New connections through a pooler in transaction mode, after this
/// process checked the table on a direct connection: each one's first call
/// goes without the check (its `BEGIN`, insert and `COMMIT` keep to one
/// backend), concurrently and on overlapping keys; every count is exact and
/// each key is stored once.
#[tokio::test]
async fn first_calls_of_new_connections_through_a_transaction_pooler() {
    let db = setup("pooler_first_calls").await;
    let mut direct = db.connect().await;
    Contended::bulk_create_new(&mut direct, &rows(1_000_000, 1, "direct")).await.unwrap();
    let bouncer = Pgbouncer::start(&db, "transaction", 2).await;
    let seed = bulk_tests::seed("first_calls_of_new_connections_through_a_transaction_pooler");
    let mut tasks = Vec::new();
    let mut batches = Vec::new();
    for w in 0..12u64 {
        let mine: Vec<Vec<Contended>> =
            (0..2).map(|r| contended_batch(seed, r, w, if w % 2 == 0 { 10 } else { 300 }, 2_000)).collect();
        batches.extend(mine.clone());
        tasks.push(tokio::spawn({
            let bouncer_client = bouncer.connect();
            let client = bouncer_client.await;
            async move {
                let mut client = client;
                let mut total = Report::default();
                for (r, batch) in mine.iter().enumerate() {
                    match Contended::bulk_create_new(&mut client, batch).await {
                        Ok(o) => total += o,
                        Err(e) => panic!("writer {w}, call {r}: {e}"),
                    }
                }
                total
            }
        }));
    }
    let mut total = Report::default();
    for t in tasks {
        total += t.await.unwrap();
    }
    let keys = distinct_keys(&batches);
    assert_eq!(total.offered, batches.iter().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!(total.inserted, keys.len() as u64);
    assert_eq!(count(&db.connect().await, "contended").await, keys.len() as i64 + 1);
    db.drop().await;
}

#[tokio::test]
async fn session_pooler_resets_the_backend_between_clients() {
    // A session pooler with one server connection runs DISCARD ALL when a
    // client leaves: the next client gets the same backend without the
    // scratch table, and the calls recreate it (the short batches run
    // unnamed behind any pooler: see the test below).
    let db = setup("pooler_session").await;
    let bouncer = Pgbouncer::start(&db, "session", 1).await;
    let mut pids = Vec::new();
    for round in 0..3u64 {
        let mut client = bouncer.connect().await;
        // DISCARD ALL also reset the search_path the pooler's connect_query set.
        client.batch_execute(&format!("SET search_path = {}", bulk_runtime::quote_ident(&db.schema))).await.unwrap();
        pids.push(client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0));
        let base = round * 100_000;
        for (i, n) in [COPY_BATCH, 20, COPY_BATCH, 20].into_iter().enumerate() {
            let batch = rows(base + i as u64 * 10_000, n, "s");
            let o = Contended::bulk_create_new(&mut client, batch.iter().chain(&batch[..n / 2])).await.unwrap();
            assert_eq!((o.inserted, o.skipped), (n as u64, (n / 2) as u64), "client {round}, call {i}");
        }
        let scratch: i64 = client
            .query_one("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(scratch, 1, "one scratch table in the session");
    }
    assert!(pids.windows(2).all(|w| w[0] == w[1]), "the same backend each time: {pids:?}");
    assert_eq!(count(&db.connect().await, "contended").await, 3 * (2 * COPY_BATCH + 40) as i64);
    db.drop().await;
}

/// Another process's prepared statements on a transaction pooler's backend,
/// of the names this process's tokio-postgres gives its own (`s0`, `s1`,
/// ... from a counter of each process; here prepared with SQL `PREPARE`
/// under the names this process gives next), taking the short path's
/// parameters and writing elsewhere. The writer's first calls run on the
/// other backend; its later ones land on this one. A connection behind a
/// pooler runs its statements unnamed, so no call binds the other
/// process's statement: every row goes to the model's table, with exact
/// counts, and none to the other process's.
#[tokio::test]
async fn another_process_statements_of_the_same_names_through_a_transaction_pooler() {
    let db = setup("pooler_names").await;
    let direct = db.connect().await;
    direct.batch_execute("CREATE TABLE decoy (a int4, b int8, payload text)").await.unwrap();
    let bouncer = Pgbouncer::start(&db, "transaction", 2).await;
    let mut writer = bouncer.connect().await;
    let (pins, other) = ([bouncer.connect().await, bouncer.connect().await], bouncer.connect().await);
    // The name this process's next prepared statement takes.
    let probe = format!("{:?}", direct.prepare("SELECT 1").await.unwrap());
    let next: usize = probe
        .split("name: \"s")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("a statement name in {probe}"))
        + 1;
    let first = pin(&pins[0]).await;
    let mut offered = 0u64;
    for round in 0..3u64 {
        let o = Contended::bulk_create_new(&mut writer, &rows(round * 10, 10, "first")).await.unwrap();
        assert_eq!((o.offered, o.inserted), (10, 10));
        offered += 10;
    }
    // The other backend, now the only one free, gets the other process's statements.
    let second = pin(&pins[1]).await;
    unpin(&pins[0]).await;
    let prepares: Vec<String> = (next..next + 3000)
        .map(|n| format!("PREPARE s{n} (int4[], int8[], text[]) AS INSERT INTO decoy SELECT * FROM unnest($1, $2, $3)"))
        .collect();
    other.batch_execute(&prepares.join(";\n")).await.expect("the other process's statements");
    for round in 3..8u64 {
        let o = Contended::bulk_create_new(&mut writer, &rows(round * 10, 10, "later")).await.unwrap();
        assert_eq!((o.offered, o.inserted, o.skipped), (10, 10, 0), "round {round}");
        offered += 10;
    }
    unpin(&pins[1]).await;
    assert_ne!(first, second, "the pins held both server connections in turn");
    assert_eq!(count(&direct, "decoy").await, 0, "no row went to the other process's table");
    assert_eq!(count(&direct, "contended").await as u64, offered, "every row in the model's table");
    assert_eq!(left_behind(&bouncer, 2).await, 0, "no statement of the writer left on the pooler's backends");
    db.drop().await;
}

/// A session pooler answers the startup with its own process id, as a
/// transaction pooler does, and the client cannot tell the two apart: its
/// short batches run unnamed there too (a schema check in each one's round
/// trip), with exact counts, and leave no prepared statement on the
/// session's backend. (Only the scratch table of the COPY path is reused
/// for the client's session; see README, "Connection poolers".)
#[tokio::test]
async fn a_session_pooler_runs_short_batches_unnamed_with_exact_counts() {
    let db = setup("pooler_session_unnamed").await;
    let bouncer = Pgbouncer::start(&db, "session", 1).await;
    let mut client = bouncer.connect().await;
    client.batch_execute(&format!("SET search_path = {}", bulk_runtime::quote_ident(&db.schema))).await.unwrap();
    let pid: i32 = client.query_typed("SELECT pg_backend_pid()", &[]).await.unwrap()[0].get(0);
    for call in 0..6u64 {
        let batch = rows(call * 100, 20, "session");
        let o = Contended::bulk_create_new(&mut client, batch.iter().chain(&batch[..10])).await.unwrap();
        assert_eq!((o.offered, o.inserted, o.skipped), (30, 20, 10), "call {call}");
    }
    let (same, prepared): (i32, i64) = {
        let row = &client
            .query_typed(
                "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'INSERT%')",
                &[],
            )
            .await
            .unwrap()[0];
        (row.get(0), row.get(1))
    };
    assert_eq!(same, pid, "the session kept its backend");
    assert_eq!(prepared, 0, "no short-batch statement prepared on the session's backend");
    assert_eq!(count(&db.connect().await, "contended").await, 6 * 20);
    db.drop().await;
}

/// `batch_id` through a transaction pooler: each call claims its id, writes
/// its rows and records its counts in one transaction, so one backend; a
/// replay on the other backend (the session that recorded it long gone to
/// another client) returns the recorded counts and writes nothing, on the
/// short and the COPY path, for the plain call and an upsert.
#[tokio::test]
async fn batch_ids_through_a_transaction_pooler_replay_on_another_backend() {
    let db = setup("pooler_batch_id").await;
    db.connect().await.batch_execute(&Ledger::of::<Contended>().migration_sql()).await.unwrap();
    let bouncer = Pgbouncer::start(&db, "transaction", 2).await;
    let mut writer = bouncer.connect().await;
    let pins = [bouncer.connect().await, bouncer.connect().await];
    let mut next = 0u64;
    let mut backends = Vec::new();
    for (step, n) in [10, COPY_BATCH, 10, COPY_BATCH].into_iter().enumerate() {
        let batch = rows(next, n, "b");
        let id = format!("batch {step}");
        let upsert = step >= 2;
        // The first time on one backend, the second on the other.
        backends.push(pin(&pins[0]).await);
        let first = with_batch_id(&mut writer, &id, upsert, &batch).await;
        backends.push(pin(&pins[1]).await);
        unpin(&pins[0]).await;
        let again = with_batch_id(&mut writer, &id, upsert, &batch).await;
        unpin(&pins[1]).await;
        assert_eq!((first.replayed, first.offered, first.inserted), (false, n as u64, n as u64), "step {step}");
        assert!(again.replayed, "step {step}: {again:?}");
        assert_eq!((again.offered, again.inserted, again.skipped), (first.offered, first.inserted, first.skipped));
        next += n as u64;
    }
    assert_eq!(backends.iter().collect::<std::collections::BTreeSet<_>>().len(), 2, "{backends:?}");
    let direct = db.connect().await;
    assert_eq!(count(&direct, "contended").await, next as i64);
    assert_eq!(count(&direct, "bulk_batches").await, 4);
    db.drop().await;
}

async fn with_batch_id(writer: &mut Client, id: &str, upsert: bool, batch: &[Contended]) -> Report {
    let bulk = Contended::bulk(writer).batch_id(id);
    match upsert {
        true => bulk.upsert(Upsert::columns(["payload"])).run(batch).await.unwrap(),
        false => bulk.run(batch).await.unwrap(),
    }
}
