//! `first-parts [REPS] [SIZES]`: what each piece of a new connection's
//! first call costs the server, as the `fresh-cpu` mode measures it (the
//! backend's CPU time from `/proc/<pid>/schedstat`, each variant on a new
//! connection, interleaved): Django's `unnest ... ON CONFLICT DO NOTHING`
//! alone; the same inside `BEGIN` ... `COMMIT` (`BEGIN` sent with it, as the
//! first call does); the same returning every column, alone and inside the
//! transaction; the same three with a multi-row `VALUES`; and the call
//! itself. The server must run on this machine, readable by this user.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use super::fresh_cpu::cpu_ns;
use super::{Mix, Retweet, Rng, TABLE, UPSERT_COLS, columns, connect, make_case, median, reset, setup};
use bulk_runtime::BulkCreateNew;

const VARIANTS: [&str; 7] = [
    "unnest",
    "BEGIN; unnest; COMMIT",
    "unnest RETURNING",
    "BEGIN; unnest RETURNING; COMMIT",
    "VALUES",
    "BEGIN; VALUES RETURNING; COMMIT",
    "bulk_create_new (first call)",
];

/// Runs `variant` on `client`; returns the rows it inserted.
async fn run(variant: &str, client: &Client, batch: &[Retweet]) -> u64 {
    let returning = if variant.contains("RETURNING") {
        format!(" RETURNING {}", &UPSERT_COLS[1..UPSERT_COLS.len() - 1])
    } else {
        String::new()
    };
    let (a, b, c) = columns(batch.iter());
    let sql = if variant.contains("unnest") {
        format!(
            "INSERT INTO {TABLE} {UPSERT_COLS} SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) \
             ON CONFLICT (tweet, retweeter) DO NOTHING{returning}"
        )
    } else {
        let mut sql = format!("INSERT INTO {TABLE} {UPSERT_COLS} VALUES ");
        for i in 0..batch.len() {
            let n = 3 * i;
            sql.push_str(&format!("{}(${}, ${}, ${})", if i == 0 { "" } else { ", " }, n + 1, n + 2, n + 3));
        }
        sql.push_str(&format!(" ON CONFLICT (tweet, retweeter) DO NOTHING{returning}"));
        sql
    };
    let params: Vec<(&(dyn ToSql + Sync), Type)> = if variant.contains("unnest") {
        vec![(&a, Type::INT8_ARRAY), (&b, Type::INT8_ARRAY), (&c, Type::INT8_ARRAY)]
    } else {
        batch
            .iter()
            .flat_map(|r| [&r.tweet as _, &r.retweeter as _, &r.original_author as _])
            .map(|v| (v, Type::INT8))
            .collect()
    };
    let insert = async {
        let rows = client.query_typed_raw(&sql, params.iter().map(|(v, t)| (*v, t.clone()))).await.unwrap();
        let mut rows = std::pin::pin!(rows);
        while rows.try_next().await.unwrap().is_some() {}
        rows.rows_affected().unwrap_or(0)
    };
    if variant.starts_with("BEGIN") {
        let (begun, n) = futures_util::future::join(client.batch_execute("BEGIN"), insert).await;
        begun.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
        n
    } else if returning.is_empty() {
        client.execute_typed(&sql, &params).await.unwrap()
    } else {
        insert.await
    }
}

/// Runs the mode: `reps` interleaved rounds per size in `sizes` and mix.
pub(super) async fn parts(reps: usize, sizes: &[usize]) {
    let admin = connect().await;
    setup(&admin).await;
    // The process's first call checks; the measured ones rely on it.
    let mut first = connect().await;
    Retweet::bulk_create_new(&mut first, &[Retweet { tweet: -1, retweeter: -1, original_author: 0 }]).await.unwrap();
    let mut rng = Rng(29);
    println!(
        "| rows | mix | variant | server CPU median µs | q1–q3 µs | ÷ unnest |\n| ---: | --- | --- | ---: | ---: | ---: |"
    );
    for mix in [Mix::Fresh, Mix::Stored50] {
        for &size in sizes {
            let case = make_case(size, mix, size as u64 * 7 + mix as u64);
            let mut cpu: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            for _ in 0..reps {
                let mut order = VARIANTS.to_vec();
                rng.shuffle(&mut order);
                for variant in order {
                    reset(&admin, &case).await;
                    let mut client = connect().await;
                    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
                    let before = cpu_ns(pid);
                    let inserted = if variant.starts_with("bulk") {
                        Retweet::bulk_create_new(&mut client, &case.batch).await.unwrap().inserted
                    } else {
                        run(variant, &client, &case.batch).await
                    };
                    let after = cpu_ns(pid);
                    assert_eq!(inserted, case.new_rows.len() as u64, "{variant}");
                    cpu.entry(variant).or_default().push(Duration::from_nanos(after - before));
                }
            }
            let base = median(&cpu["unnest"]);
            for variant in VARIANTS {
                let mut c = cpu[variant].clone();
                c.sort();
                println!(
                    "| {size} | {} | {variant} | {} | {}–{} | {:.2} |",
                    mix.name(),
                    median(&c).as_micros(),
                    c[c.len() / 4].as_micros(),
                    c[c.len() * 3 / 4].as_micros(),
                    median(&c).as_secs_f64() / base.as_secs_f64(),
                );
            }
        }
    }
}
