//! `fresh-cpu [REPS] [SIZES]`: the `fresh` mode's strategies, each on a new
//! connection, timed as the server's CPU time for the call and its commit:
//! the backend's `/proc/<pid>/schedstat` (nanoseconds on a CPU) read just
//! before and just after the call. Unlike wall-clock time, it does not grow
//! with the load of other processes on the machine, so it shows what the
//! call costs the server on a cold backend. The server must run on this
//! machine, readable by this user.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Mix, Rng, Strategy, connect, make_case, median, ms, reset, run_fresh, setup};

/// Nanoseconds the process `pid` has spent on a CPU.
pub(super) fn cpu_ns(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("read the backend's schedstat");
    stat.split_whitespace().next().and_then(|s| s.parse().ok()).expect("schedstat's first field")
}

/// Runs the mode: `reps` interleaved rounds per size in `sizes` and mix.
pub(super) async fn run(reps: usize, sizes: &[usize]) {
    let admin = connect().await;
    setup(&admin).await;
    let strategies = [Strategy::Bulk, Strategy::Ceiling, Strategy::Values, Strategy::Unnest];
    let mut rng = Rng(23);
    println!(
        "| rows | mix | strategy | server CPU median µs | CPU q1–q3 µs | CPU ÷ best of VALUES/unnest | \
         call-to-commit median ms | wall ÷ best |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for mix in [Mix::Fresh, Mix::Stored50, Mix::InBatch10] {
        for &size in sizes {
            let case = make_case(size, mix, size as u64 * 7 + mix as u64);
            let mut cpu: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            let mut wall: HashMap<&'static str, Vec<Duration>> = HashMap::new();
            for _ in 0..reps {
                let mut order = strategies.to_vec();
                rng.shuffle(&mut order);
                for strategy in order {
                    reset(&admin, &case).await;
                    let mut client = connect().await;
                    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
                    let (before, called) = (cpu_ns(pid), Instant::now());
                    let inserted = run_fresh(strategy, &mut client, &case).await.unwrap();
                    let (after, done) = (cpu_ns(pid), Instant::now());
                    assert_eq!(inserted, case.new_rows.len() as u64, "{}", strategy.name());
                    cpu.entry(strategy.name()).or_default().push(Duration::from_nanos(after - before));
                    wall.entry(strategy.name()).or_default().push(done - called);
                }
            }
            let best = |m: &HashMap<&'static str, Vec<Duration>>| {
                [Strategy::Values, Strategy::Unnest].iter().map(|s| median(&m[s.name()])).min().unwrap()
            };
            let (best_cpu, best_wall) = (best(&cpu), best(&wall));
            for strategy in strategies {
                let mut c = cpu[strategy.name()].clone();
                c.sort();
                let w = &wall[strategy.name()];
                println!(
                    "| {size} | {} | {} | {} | {}–{} | {:.2} | {} | {:.2} |",
                    mix.name(),
                    strategy.name(),
                    median(&c).as_micros(),
                    c[c.len() / 4].as_micros(),
                    c[c.len() * 3 / 4].as_micros(),
                    median(&c).as_secs_f64() / best_cpu.as_secs_f64(),
                    ms(median(w)),
                    median(w).as_secs_f64() / best_wall.as_secs_f64(),
                );
            }
        }
    }
}
