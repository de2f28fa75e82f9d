//! A writer process for the two-process concurrency test: runs writers on
//! separate connections that offer `contended_batch`es round after round,
//! and prints what the calls reported.
//!
//! Usage: `bulk-writer SCHEMA SEED FIRST_WRITER WRITERS ROUNDS LEN UNIVERSE`.
//! It connects every writer, prints `ready`, waits for a line on stdin, runs
//! the rounds, then prints `offered N inserted M` (the sums over its calls)
//! and exits 0; any failed call prints the error and exits 1.

use std::io::BufRead;
use std::sync::Arc;

use bulk_runtime::{BulkCreateNew, Report};
use bulk_tests::{Contended, TestDb, contended_batch};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [schema, seed, first, writers, rounds, len, universe] = &args[..] else {
        eprintln!("usage: bulk-writer SCHEMA SEED FIRST_WRITER WRITERS ROUNDS LEN UNIVERSE");
        std::process::exit(2);
    };
    let number = |s: &String| -> u64 { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
    let (seed, first, writers, rounds) = (number(seed), number(first), number(writers), number(rounds));
    let (len, universe) = (number(len) as usize, number(universe));
    let db = TestDb::existing(schema.clone());
    let mut clients = Vec::new();
    for _ in 0..writers {
        let client = db.connect().await;
        client.batch_execute("SET deadlock_timeout = '50ms'").await.unwrap();
        clients.push(client);
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();

    let barrier = Arc::new(tokio::sync::Barrier::new(writers as usize));
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        let writer = first + i as u64;
        tasks.push(tokio::spawn(async move {
            let mut total = Report::default();
            for round in 0..rounds {
                let batch = contended_batch(seed, round, writer, len, universe);
                barrier.wait().await;
                match Contended::bulk_create_new(&mut client, &batch).await {
                    Ok(o) => total += o,
                    Err(e) => {
                        println!("error: writer {writer}, round {round}: {e}");
                        std::process::exit(1);
                    }
                }
            }
            total
        }));
    }
    let mut total = Report::default();
    for t in tasks {
        total += t.await.unwrap();
    }
    println!("offered {} inserted {}", total.offered, total.inserted);
}
