//! End-to-end tests: the built binary against the real PostgreSQL, the
//! simulator, and the `fake-api` across a loopback socket.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bulk_runtime::Report;
use common::{Background, Proxy, TempDir, TestSchema, app, database_line, fake_api, outcomes, run, run_command};

const WAIT: Duration = Duration::from_secs(60);

fn args<'a>(schema: &'a TestSchema, rest: &[&'a str]) -> Vec<String> {
    let mut all: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    all.extend(schema.args());
    all
}

#[test]
fn help_for_every_subcommand() {
    let top = run(["--help"]);
    let text = top.ok();
    for sub in ["migrate", "migrations", "poll", "watch", "report", "demo", "fake-api"] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
        let help = run([sub, "--help"]);
        assert!(help.ok().contains("Usage: retweeter-app"), "{sub} --help:\n{}", help.stdout);
    }
    let bad = run(["poll", "--count", "101", "1"]);
    assert!(bad.failed().contains("101"), "{}", bad.stderr);
}

#[test]
fn migrate_is_idempotent_and_migration_files_apply() {
    let schema = TestSchema::new("migrate");
    let first = run(args(&schema, &["migrate"]));
    assert!(first.ok().contains("created table retweet"), "{}", first.stdout);
    let second = run(args(&schema, &["migrate"]));
    assert!(second.ok().contains("up to date"), "{}", second.stdout);

    // The files a migration tool would apply, applied in order by hand.
    let dir = TempDir::new("migrations");
    let out = run(["migrations", "--out", dir.path().to_str().expect("utf-8 path")]);
    out.ok();
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read the migrations directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["0001_create_retweet.down.sql", "0001_create_retweet.up.sql"]);
    let up = std::fs::read_to_string(dir.path().join("0001_create_retweet.up.sql")).expect("up file");
    let down = std::fs::read_to_string(dir.path().join("0001_create_retweet.down.sql")).expect("down file");

    let applied = TestSchema::new("migrate_files");
    applied.execute(&up);
    applied.execute(&up); // applying twice is harmless
    let polled = run(args(&applied, &["poll", "1", "2"]));
    assert_eq!(outcomes(polled.ok(), "total"), [(2, 2)]);
    let again = run(args(&applied, &["migrate"]));
    assert!(again.ok().contains("up to date"), "the app accepts the tool-applied schema: {}", again.stdout);
    applied.execute(&down);
    assert!(
        applied.query("SELECT to_regclass('retweet')::text").iter().all(|r| r.get::<_, Option<String>>(0).is_none())
    );

    let flyway = TempDir::new("flyway");
    run(["migrations", "--layout", "flyway", "--out", flyway.path().to_str().expect("utf-8 path")]).ok();
    assert!(flyway.path().join("V1__create_retweet.sql").is_file());
}

#[test]
fn poll_over_http_adds_one_of_one_then_one_of_two_then_two_of_four() {
    let schema = TestSchema::new("poll_http");
    run(args(&schema, &["migrate"])).ok();
    let (_api, url) = fake_api(&["--seed", "7", "--token", "sekrit"]);
    let tweet = "1600000000000000042";
    let mut lines = Vec::new();
    for _ in 0..3 {
        let out = run_command(
            app().env("TWITTER_BEARER_TOKEN", "sekrit").args(args(&schema, &["poll", "--api-url", &url, tweet])),
        );
        lines.push(out.ok().to_owned());
    }
    let seen: Vec<String> = lines.iter().flat_map(|o| o.lines().map(str::to_owned)).collect();
    // The library's wording of an outcome ("2 of 4 records added").
    let added = |inserted: u64, offered: u64| {
        let report: Report = Report { offered, inserted, skipped: offered - inserted, ..Report::default() };
        report.to_string()
    };
    assert_eq!(
        seen,
        [
            format!("tweet {tweet}: {}", added(1, 1)),
            format!("total: {}", added(1, 1)),
            format!("tweet {tweet}: {}", added(1, 2)),
            format!("total: {}", added(1, 2)),
            format!("tweet {tweet}: {}", added(2, 4)),
            format!("total: {}", added(2, 4)),
        ]
    );
    assert_eq!(added(2, 4), "2 of 4 records added");
    // The stored ids are the API's, exactly (several exceed 2^53): compare
    // with what a second fake API on the same seed answers at the third poll.
    let (_twin, twin_url) = fake_api(&["--seed", "7"]);
    let mut body = String::new();
    for _ in 0..3 {
        body = http_get(&format!("{twin_url}/statuses/retweets/{tweet}.json?count=100&trim_user=1"));
    }
    let answered: HashSet<(i64, i64, i64)> = serde_json::from_str::<Vec<serde_json::Value>>(&body)
        .expect("JSON array")
        .iter()
        .map(|r| {
            let id = |v: &serde_json::Value| v["id_str"].as_str().expect("id_str").parse::<i64>().expect("an id");
            (id(&r["retweeted_status"]), id(&r["user"]), id(&r["retweeted_status"]["user"]))
        })
        .collect();
    let stored: HashSet<(i64, i64, i64)> = schema.rows().into_iter().collect();
    assert_eq!(stored, answered);
    assert!(stored.iter().any(|(_, retweeter, _)| *retweeter > 1 << 53), "{stored:?}");

    // A wrong token is refused by the API: an error for the tweet, nothing stored.
    let refused = run_command(
        app().env("TWITTER_BEARER_TOKEN", "wrong").args(args(&schema, &["poll", "--api-url", &url, tweet])),
    );
    assert!(refused.failed().contains("HTTP 401"), "{}", refused.stderr);
    assert!(refused.stderr.contains("check the bearer token in TWITTER_BEARER_TOKEN"), "{}", refused.stderr);
    assert_eq!(schema.rows().len(), 4);
}

/// A bare HTTP/1.1 GET on loopback.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the fake API");
    write!(stream, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // De-chunk.
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    }
}

#[test]
fn api_failures_are_retried_or_reported_per_tweet() {
    let schema = TestSchema::new("api_failures");
    run(args(&schema, &["migrate"])).ok();
    let (_api, url) = fake_api(&["--fail", "429:1", "--fail", "500:1", "--malformed", "7", "--unexpected", "8"]);
    let out = run(args(&schema, &["poll", "--api-url", &url, "--backoff", "20ms", "5", "7", "8"]));
    let stderr = out.failed();
    assert!(stderr.contains("HTTP 429 rate limited; retrying"), "{stderr}");
    assert!(stderr.contains("HTTP 500 server error; retrying"), "{stderr}");
    assert!(stderr.contains("error: tweet 7:") && stderr.contains("malformed JSON"), "{stderr}");
    assert!(stderr.contains("error: tweet 8:") && stderr.contains("unexpected response shape"), "{stderr}");
    assert!(stderr.contains("2 of 3 tweets could not be fetched"), "{stderr}");
    assert_eq!(outcomes(&out.stdout, "tweet 5"), [(1, 1)], "{}", out.stdout);
    assert_eq!(outcomes(&out.stdout, "total"), [(1, 1)], "{}", out.stdout);
    let tweets: HashSet<i64> = schema.rows().iter().map(|r| r.0).collect();
    assert_eq!(tweets, HashSet::from([5]), "nothing of the failed tweets is stored");

    // Retries are bounded.
    let (_down, down_url) = fake_api(&["--fail", "503:100"]);
    let out = run(args(&schema, &["poll", "--api-url", &down_url, "--backoff", "10ms", "--retries", "2", "9"]));
    let stderr = out.failed();
    assert!(stderr.contains("HTTP 503") && stderr.contains("gave up after 3 attempts"), "{stderr}");
}

#[test]
fn report_formats_agree_with_counts_computed_here() {
    let schema = TestSchema::new("report");
    run(args(&schema, &["migrate"])).ok();
    let empty = run(args(&schema, &["report"]));
    assert!(empty.ok().contains("no retweets stored yet"), "{}", empty.stdout);
    let tweets = ["11", "12", "13", "14", "15", "16", "17", "18", "19", "20", "21", "22"];
    for start in ["5", "9"] {
        let mut poll = vec!["poll", "--sim-start", start];
        poll.extend(tweets);
        run(args(&schema, &poll)).ok();
    }
    let counts = schema.counts();
    let total: i64 = counts.values().sum();
    assert!(total > 300, "enough data for a top-K table: {total}");
    let common::Totals { retweeter: retweeter_totals, author: author_totals, retweeters, authors } =
        common::Totals::of(&counts);
    assert!(authors.len() >= 3, "{authors:?}");
    let cell = |r: i64, a: i64| counts.get(&(r, a)).copied().unwrap_or(0);

    // CSV: everything.
    let csv = run(args(&schema, &["report", "--format", "csv"]));
    let lines: Vec<Vec<String>> = csv.ok().lines().map(|l| l.split(',').map(str::to_owned).collect()).collect();
    let header: Vec<String> = std::iter::once("retweeter".to_owned())
        .chain(authors.iter().map(i64::to_string))
        .chain(std::iter::once("total".to_owned()))
        .collect();
    assert_eq!(lines[0], header);
    assert_eq!(lines.len(), retweeters.len() + 2);
    for (line, &r) in lines[1..].iter().zip(&retweeters) {
        let mut expected = vec![r.to_string()];
        expected.extend(authors.iter().map(|&a| cell(r, a).to_string()));
        expected.push(retweeter_totals[&r].to_string());
        assert_eq!(line, &expected);
    }
    let mut expected_total = vec!["total".to_owned()];
    expected_total.extend(authors.iter().map(|a| author_totals[a].to_string()));
    expected_total.push(total.to_string());
    assert_eq!(lines.last(), Some(&expected_total));

    // JSON with a limit: top K, the rest folded into "other", totals over everything.
    let k = 3;
    let json = run(args(&schema, &["report", "--format", "json", "--limit", "3"]));
    let v: serde_json::Value = serde_json::from_str(json.ok()).expect("JSON report");
    let top_a: Vec<i64> = authors[..k].to_vec();
    let top_r: Vec<i64> = retweeters[..k].to_vec();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array().expect("array").iter().map(|x| x.as_str().expect("string id").parse().expect("id")).collect()
    };
    assert_eq!(ids(&v["authors"]), top_a);
    assert_eq!(v["other_authors"], (authors.len() - k) as i64);
    assert_eq!(v["other_retweeters"], (retweeters.len() - k) as i64);
    assert_eq!(v["totals"]["total"], total);
    assert_eq!(v["retweeters"], retweeters.len() as i64);
    for (row, &r) in v["rows"].as_array().expect("rows").iter().zip(&top_r) {
        assert_eq!(row["retweeter"], r.to_string());
        let expected: Vec<i64> = top_a.iter().map(|&a| cell(r, a)).collect();
        assert_eq!(row["counts"], serde_json::json!(expected));
        let other: i64 = authors[k..].iter().map(|&a| cell(r, a)).sum();
        assert_eq!(row["other"], other);
        assert_eq!(row["total"], retweeter_totals[&r]);
    }
    let other_row: Vec<i64> = top_a.iter().map(|&a| retweeters[k..].iter().map(|&r| cell(r, a)).sum()).collect();
    assert_eq!(v["other"]["counts"], serde_json::json!(other_row));
    let corner: i64 =
        retweeters[k..].iter().flat_map(|&r| authors[k..].iter().map(move |&a| (r, a))).map(|(r, a)| cell(r, a)).sum();
    assert_eq!(v["other"]["other"], corner);

    // The terminal table with the same limit: same numbers, aligned.
    let table = run(args(&schema, &["report", "--limit", "3"]));
    let text = table.ok();
    let mut lines = text.lines();
    let caption = lines.next().expect("caption");
    assert!(
        caption.contains(&format!("{total} retweets"))
            && caption.contains(&format!("3 of {} retweeters", retweeters.len())),
        "{text}"
    );
    let head: Vec<&str> = lines.next().expect("header").split("  ").map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut expected_head = vec!["retweeter \\ author".to_owned()];
    expected_head.extend(top_a.iter().map(i64::to_string));
    expected_head.push(format!("{} others", authors.len() - k));
    expected_head.push("total".to_owned());
    assert_eq!(head, expected_head);
    let body: Vec<Vec<&str>> = lines
        .filter(|l| !l.trim().chars().all(|c| c == '─'))
        .map(|l| l.split("  ").map(str::trim).filter(|s| !s.is_empty()).collect())
        .collect();
    assert_eq!(body.len(), k + 2, "{text}");
    for (cells, &r) in body.iter().zip(&top_r) {
        let mut expected = vec![r.to_string()];
        expected.extend(top_a.iter().map(|&a| cell(r, a).to_string()));
        expected.push(authors[k..].iter().map(|&a| cell(r, a)).sum::<i64>().to_string());
        expected.push(retweeter_totals[&r].to_string());
        assert_eq!(cells, &expected, "{text}");
    }
    assert_eq!(body[k][0], format!("{} other retweeters", retweeters.len() - k));
    assert_eq!(body[k + 1][0], "total");
    assert_eq!(body[k + 1].last().copied(), Some(total.to_string().as_str()));
}

#[test]
fn watch_runs_ticks_and_stops_cleanly_on_interrupt() {
    let schema = TestSchema::new("watch");
    run(args(&schema, &["migrate"])).ok();
    // Each answer takes 300ms, so the interrupt lands while tick 3 is in flight.
    let (_api, url) = fake_api(&["--delay", "300ms"]);
    let mut watch =
        Background::start(app().args(args(&schema, &["watch", "--every", "100ms", "--api-url", &url, "77"])));
    watch.wait_for_line(WAIT, |l| l == "tick 3: polling 1 tweet");
    watch.interrupt();
    let status = watch.finish();
    let stdout = watch.seen.join("\n");
    assert!(status.success(), "exit {status}\n{stdout}\n{}", watch.stderr());
    assert_eq!(outcomes(&stdout, "tweet 77"), [(1, 1), (1, 2), (2, 4)], "{stdout}");
    assert_eq!(watch.seen.last().map(String::as_str), Some("stopped after 3 polls: 4 of 7 records added"), "{stdout}");
    assert!(watch.stderr().contains("interrupted: finishing the poll in flight"), "{}", watch.stderr());
    assert_eq!(schema.rows().len(), 4);

    // --ticks bounds it without a signal (simulator source).
    let bounded = run(args(&schema, &["watch", "--every", "50ms", "--ticks", "2", "78"]));
    assert_eq!(outcomes(bounded.ok(), "tweet 78"), [(1, 1), (1, 2)], "{}", bounded.stdout);
}

#[test]
fn watch_keeps_going_when_the_api_is_down() {
    let schema = TestSchema::new("watch_api_down");
    run(args(&schema, &["migrate"])).ok();
    let (_api, url) = fake_api(&["--fail", "503:2"]);
    let out =
        run(args(&schema, &["watch", "--every", "50ms", "--ticks", "4", "--retries", "0", "--api-url", &url, "5"]));
    let stdout = out.ok();
    assert_eq!(outcomes(stdout, "total"), [(0, 0), (0, 0), (1, 1), (1, 2)], "{stdout}");
    assert!(out.stderr.matches("error: tweet 5: ").count() == 2 && out.stderr.contains("HTTP 503"), "{}", out.stderr);
    assert!(stdout.ends_with("stopped after 4 polls (2 failed): 2 of 3 records added\n"), "{stdout}");
}

#[test]
fn watch_survives_a_database_restart() {
    let schema = TestSchema::new("watch_db_restart");
    run(args(&schema, &["migrate"])).ok();
    let proxy = Proxy::start(common::server_addr());
    let mut watch = Background::start(app().args([
        "watch",
        "--every",
        "100ms",
        "--database-url",
        &proxy.url(),
        "--schema",
        &schema.name,
        "31",
    ]));
    watch.wait_for_line(WAIT, |l| l.starts_with("  total:"));
    proxy.set_up(false);
    watch.wait_for_line(WAIT, |l| l.contains("failed; retrying at the next tick"));
    proxy.set_up(true);
    watch.wait_for_line(WAIT, |l| l.starts_with("  total:"));
    watch.interrupt();
    let status = watch.finish();
    let stdout = watch.seen.join("\n");
    assert!(status.success(), "exit {status}\n{stdout}\n{}", watch.stderr());
    assert!(watch.stderr().contains("retrying at the next tick"), "{}", watch.stderr());
    let printed: u64 = outcomes(&stdout, "total").iter().map(|(n, _)| n).sum();
    let stored = schema.rows().len() as u64;
    // A poll cut off after its commit but before its answer is stored yet not printed.
    assert!(stored >= printed && printed > 0, "stored {stored}, printed {printed}\n{stdout}");
}

#[test]
fn concurrent_polls_store_each_retweet_once() {
    let schema = TestSchema::new("concurrent");
    run(args(&schema, &["migrate"])).ok();
    let poll = args(&schema, &["poll", "--sim-start", "6", "1", "2", "3", "4", "5", "6"]);
    let children: Vec<_> = (0..3).map(|_| Background::start(app().args(&poll))).collect();
    let mut inserted = 0;
    let mut offered = 0;
    for mut child in children {
        let status = child.finish();
        assert!(status.success(), "{}", child.stderr());
        let stdout = child.seen.join("\n");
        let per_tweet: u64 = outcomes(&stdout, "tweet").iter().map(|(n, _)| n).sum();
        let totals = outcomes(&stdout, "total");
        assert_eq!(totals.len(), 1);
        assert_eq!(per_tweet, totals[0].0, "per-tweet counts add up to the total\n{stdout}");
        inserted += totals[0].0;
        offered = totals[0].1;
    }
    // Same seed and tick: the three offered the same rows, stored once.
    assert_eq!(inserted, offered, "exactly one copy of each row was inserted");
    assert_eq!(schema.rows().len() as u64, offered);
}

#[test]
fn unreachable_database_is_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("host=127.0.0.1 port={port} user=postgres dbname=nothing connect_timeout=5");
    let out = run(["poll", "--database-url", &url, "1"]);
    let stderr = out.failed();
    assert_eq!(database_line(stderr), format!("PostgreSQL at host=127.0.0.1 port={port} user=postgres dbname=nothing"));
    let error = stderr.lines().nth(1).unwrap_or_default();
    assert!(error.starts_with("error: could not connect to PostgreSQL at host=127.0.0.1"), "{stderr}");
    assert!(stderr.contains("caused by:") && stderr.to_lowercase().contains("refused"), "{stderr}");

    let bad = run(["report", "--database-url", "postgresql://postgres@127.0.0.1:1:2/x"]);
    assert!(bad.failed().contains("invalid database URL"), "{}", bad.stderr);
}

#[test]
fn missing_table_says_to_migrate() {
    let schema = TestSchema::new("no_table");
    let out = run(args(&schema, &["poll", "1"]));
    assert!(out.failed().contains("run `retweeter-app migrate` first"), "{}", out.stderr);
    let out = run(args(&schema, &["report"]));
    assert!(out.failed().contains("run `retweeter-app migrate` first"), "{}", out.stderr);
}

#[test]
fn no_postgresql_binaries_gives_the_install_hint() {
    let empty = TempDir::new("nobin");
    let out = run(["poll", "--embedded", "--pg-bin", empty.path().to_str().expect("utf-8"), "1"]);
    let stderr = out.failed();
    assert!(stderr.contains("initdb") && stderr.contains("apt-get install postgresql"), "{stderr}");
}

#[test]
fn embedded_server_keeps_its_data_between_runs() {
    let dir = TempDir::new("embedded");
    let data = dir.path().join("pgdata");
    let data = data.to_str().expect("utf-8 path");
    run(["migrate", "--embedded", "--data-dir", data]).ok();
    let first = run(["poll", "--embedded", "--data-dir", data, "3"]);
    assert_eq!(outcomes(first.ok(), "tweet 3"), [(1, 1)]);
    let second = run(["poll", "--embedded", "--data-dir", data, "--sim-start", "2", "3"]);
    assert_eq!(outcomes(second.ok(), "tweet 3"), [(1, 2)]);
    let csv = run(["report", "--embedded", "--data-dir", data, "--format", "csv"]);
    assert_eq!(csv.ok().lines().last(), Some(format!("total,{0},{0}", 2).as_str()), "{}", csv.stdout);
    // Each run stopped the server it started.
    assert!(!std::path::Path::new(data).join("postmaster.pid").exists(), "the embedded server is still running");
}

#[test]
fn demo_tells_the_story() {
    let schema = TestSchema::new("demo");
    let out = run(args(&schema, &["demo"]));
    let stdout = out.ok();
    let first = outcomes(stdout, "tweet 1600000000000000001");
    assert_eq!(first[..3], [(1, 1), (1, 2), (2, 4)], "{stdout}");
    assert!(stdout.contains("report:") && stdout.contains("retweeter \\ author"), "{stdout}");
    let added: u64 = outcomes(stdout, "total:").iter().map(|&(added, _)| added).sum();
    assert!(
        stdout.contains(&format!(": {added} retweets,")),
        "the report covers what the polls added ({added})\n{stdout}"
    );
    // In the schema it was given, it leaves nothing behind (the schema was
    // there, the table was not) and tells the same story a second time.
    assert!(
        schema.query_admin(&format!("SELECT to_regclass('{}.retweet')::text", schema.name))[0]
            .get::<_, Option<String>>(0)
            .is_none()
    );
    let again = run(args(&schema, &["demo"]));
    assert_eq!(again.ok(), stdout, "a second demo in the same schema starts from nothing");

    // On the embedded defaults: a throwaway cluster, gone afterwards.
    let out = run(["demo", "--embedded", "--polls", "3"]);
    let stdout = out.ok();
    assert_eq!(outcomes(stdout, "tweet 1600000000000000001"), [(1, 1), (1, 2), (2, 4)], "{stdout}");
    let place = database_line(&out.stderr)
        .strip_prefix("throwaway embedded PostgreSQL at ")
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(!std::path::Path::new(place).exists(), "{place} was not deleted");
}

#[test]
fn every_command_names_its_database_without_the_password() {
    let schema = TestSchema::new("names_db");
    // A password in the URL (ignored by a trusting server) never shows.
    let mut config = common::server_config();
    if config.get_password().is_none() {
        config.password("not-shown");
    }
    let password = String::from_utf8_lossy(config.get_password().expect("a password")).into_owned();
    let url = format!("{} password='{password}'", schema.url());
    let with = |command: &[&str]| {
        let mut all: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
        all.extend(["--database-url".to_owned(), url.clone(), "--schema".to_owned(), schema.name.clone()]);
        run(all)
    };
    for command in [&["migrate"][..], &["poll", "1"], &["watch", "--every", "10ms", "--ticks", "1", "1"], &["report"]] {
        let out = with(command);
        out.ok();
        let line = database_line(&out.stderr);
        assert!(line.starts_with("PostgreSQL at host="), "{command:?}: {line}");
        assert!(line.ends_with(&format!("dbname={}, schema {}", common::DATABASE, schema.name)), "{line}");
        assert!(!out.stderr.contains("password") && !out.stdout.contains("password"), "{command:?}: {}", out.stderr);
    }

    // The embedded server names its directory.
    let dir = TempDir::new("names_embedded");
    let data = dir.path().join("pgdata");
    let out = run(["migrate", "--embedded", "--data-dir", data.to_str().expect("utf-8")]);
    out.ok();
    assert_eq!(database_line(&out.stderr), format!("embedded PostgreSQL at {}", data.display()));
}

#[test]
fn explicit_server_settings_that_fail_are_errors_not_a_fallback() {
    let dir = TempDir::new("explicit");
    let data = dir.path().join("pgdata");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    for command in ["migrate", "report", "poll", "demo"] {
        let mut c = app();
        c.env("PGPORT", port.to_string()).env("RETWEETER_DATA_DIR", &data).arg(command);
        if command == "poll" {
            c.arg("1");
        }
        let out = run_command(&mut c);
        let stderr = out.failed();
        assert!(
            stderr.contains(&format!("could not connect to the PostgreSQL server chosen by PGPORT={port}")),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("or pass --embedded"), "{command}: {stderr}");
        assert!(!stderr.contains("embedded PostgreSQL at"), "{command} fell back to the embedded server: {stderr}");
        assert!(!data.exists(), "{command} created {}", data.display());
    }
    let out = run_command(app().env("PGPORT", "54x32").arg("report"));
    assert!(out.failed().contains("PGPORT=54x32 is not a port number"), "{}", out.stderr);
}

#[test]
fn report_on_an_empty_data_dir_creates_nothing() {
    let dir = TempDir::new("empty_report");
    let data = dir.path().join("pgdata");
    let data_arg = data.to_str().expect("utf-8");
    for command in
        [&["report", "--embedded", "--data-dir", data_arg][..], &["poll", "--embedded", "--data-dir", data_arg, "1"]]
    {
        let out = run(command);
        let stderr = out.failed();
        assert_eq!(database_line(stderr), format!("embedded PostgreSQL at {}", data.display()));
        assert!(stderr.contains("no retweet table yet: run `retweeter-app migrate` first"), "{stderr}");
        assert!(stderr.contains(&format!("there is no PostgreSQL cluster in {} yet", data.display())), "{stderr}");
        assert!(!data.exists(), "{command:?} created {}", data.display());
    }
}

#[test]
fn fake_api_prints_its_url_alone_first() {
    let (_api, url) = fake_api(&[]);
    // `fake_api` checked that the first line is the URL alone; it serves there.
    let body = http_get(&format!("{url}/statuses/retweets/5.json?count=1"));
    assert!(body.starts_with('['), "{body}");
}

#[test]
fn counts_of_one_read_in_the_singular() {
    let schema = TestSchema::new("singular");
    run(args(&schema, &["migrate"])).ok();
    let watch = run(args(&schema, &["watch", "--every", "10ms", "--ticks", "1", "1", "2"]));
    let stdout = watch.ok();
    assert!(stdout.lines().any(|l| l.starts_with("stopped after 1 poll: ")), "{stdout}");
    let two = run(args(&schema, &["watch", "--every", "10ms", "--ticks", "2", "3"]));
    assert!(two.ok().lines().any(|l| l.starts_with("stopped after 2 polls: ")), "{}", two.stdout);

    // Reports with one author, then one retweeter folded into "other".
    let rows = schema.rows();
    let retweeters: HashSet<i64> = rows.iter().map(|r| r.1).collect();
    let authors: HashSet<i64> = rows.iter().map(|r| r.2).collect();
    assert_eq!((retweeters.len(), authors.len()), (4, 2), "the simulator's first retweets of tweets 1, 2, 3: {rows:?}");
    let report = run(args(&schema, &["report", "--limit", "1"]));
    let text = report.ok();
    assert!(text.contains(": 4 retweets, 1 of 4 retweeters, 1 of 2 authors"), "{text}");
    assert!(text.lines().nth(1).is_some_and(|l| l.contains(" 1 other ")), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("3 other retweeters ")), "{text}");
    let report = run(args(&schema, &["report", "--limit", "3"]));
    let text = report.ok();
    assert!(text.lines().any(|l| l.trim_start().starts_with("1 other retweeter ")), "{text}");

    let one = TestSchema::new("singular_one");
    run(args(&one, &["migrate"])).ok();
    run(args(&one, &["poll", "1"])).ok();
    let report = run(args(&one, &["report"]));
    assert!(report.ok().contains(": 1 retweet, 1 of 1 retweeter, 1 of 1 author\n"), "{}", report.stdout);

    let fresh = TestSchema::new("singular_demo");
    let demo = run(args(&fresh, &["demo", "--polls", "1"]));
    assert!(demo.ok().contains("polling the simulator 1 time; "), "{}", demo.stdout);
    assert!(demo.stdout.contains("poll 1: 1 tweet\n"), "{}", demo.stdout);
}

#[test]
fn a_zero_interval_is_a_usage_error() {
    let out = run(["watch", "--every", "0s", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--every") && out.stderr.contains("longer than zero"), "{}", out.stderr);
}

/// The test server's host, port and user, as `PGHOST`, `PGPORT` and `PGUSER` give them.
fn pg_env_target() -> (String, String, String) {
    let config = common::server_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    (host, port, user)
}

/// The app, with the test server chosen by `PGHOST`, `PGPORT`, `PGUSER`
/// (and `PGPASSWORD`) and `PGDATABASE` set to `database`.
fn app_on(database: &str) -> std::process::Command {
    let (host, port, user) = pg_env_target();
    let mut command = app();
    command.env("PGHOST", host).env("PGPORT", port).env("PGUSER", user).env("PGDATABASE", database);
    if let Some(password) = common::server_config().get_password() {
        command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
    }
    command
}

#[test]
fn demo_with_pgdatabase_leaves_no_database_behind() {
    let (host, port, user) = pg_env_target();
    let name = format!("rt_demo_db_{}", std::process::id());
    let admin = TestSchema::new("demo_db_admin");
    admin.admin(&format!("DROP DATABASE IF EXISTS {name}"));
    let exists = |db: &str| !admin.query_admin(&format!("SELECT 1 FROM pg_database WHERE datname = '{db}'")).is_empty();
    let demo = |db: &str| run_command(app_on(db).args(["demo", "--polls", "2"]));

    // A database that does not exist is not created (a `migrate` or `poll`
    // run meanwhile would lose its data when the demo dropped it): the demo
    // works in a database of its own, dropped at the end.
    let out = demo(&name);
    out.ok();
    let line = database_line(&out.stderr);
    let own = line
        .strip_prefix(&format!("PostgreSQL at host={host} port={port} user={user} dbname="))
        .and_then(|rest| rest.strip_suffix(" (dropped at the end)"))
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(own.starts_with("retweeter_demo_"), "{line}");
    assert!(!exists(&name), "the demo created database {name}\n{}", out.stderr);
    assert!(!exists(&own), "the demo left database {own} behind\n{}", out.stderr);

    // In a database that was there, only the demo's schema goes.
    let out = demo(common::DATABASE);
    out.ok();
    let schema = database_line(&out.stderr)
        .split_once(", schema ")
        .and_then(|(_, rest)| rest.strip_suffix(" (dropped at the end)"))
        .unwrap_or_else(|| panic!("{}", out.stderr))
        .to_owned();
    assert!(exists(common::DATABASE));
    let left = admin.query_admin(&format!("SELECT 1 FROM pg_namespace WHERE nspname = '{schema}'"));
    assert!(left.is_empty(), "the demo left schema {schema} behind");
}

/// Ctrl-C (SIGINT) or SIGTERM at any moment of a demo on a server: it
/// stops (exit code 130, or 0 when it had finished) and leaves neither its
/// database nor its schema behind.
#[test]
fn an_interrupted_demo_leaves_nothing_behind() {
    let admin = TestSchema::new("demo_interrupted_admin");
    let mut interrupted = 0;
    for (i, delay_ms) in [20u64, 40, 60, 80, 100, 130, 160, 200, 260, 330].into_iter().enumerate() {
        // (A database that does not exist: the demo makes one of its own.)
        for (signal, database) in
            [("-INT", format!("rt_demo_missing_{}", std::process::id())), ("-TERM", common::DATABASE.to_owned())]
        {
            let child = app_on(&database)
                .args(["demo", "--polls", "50"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start the app");
            std::thread::sleep(Duration::from_millis(delay_ms));
            let pid = child.id().to_string();
            let _ = std::process::Command::new("kill").args([signal, &pid]).status();
            let out = child.wait_with_output().expect("wait for the app");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let code = out.status.code();
            assert!(matches!(code, Some(0 | 130)), "round {i} ({signal}): exit {code:?}\n{stderr}");
            if code == Some(130) {
                interrupted += 1;
            }
            let left = admin.query_admin(&format!(
                "SELECT datname FROM pg_database WHERE datname LIKE 'retweeter\\_demo\\_{pid}\\_%' \
                 UNION ALL SELECT datname FROM pg_database WHERE datname = 'rt_demo_missing_{}'",
                std::process::id()
            ));
            assert!(left.is_empty(), "round {i} ({signal}): databases left behind: {left:?}\n{stderr}");
            let left = admin.query_admin(&format!(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'retweeter\\_demo\\_{pid}\\_%'"
            ));
            assert!(left.is_empty(), "round {i} ({signal}): schemas left behind: {left:?}\n{stderr}");
        }
    }
    assert!(interrupted > 0, "no demo was interrupted: the delays are all too long");
}

/// `demo --schema S`: a schema whose table holds retweets is refused (its
/// rows untouched); one whose table is there and empty (`migrate` ran) is
/// used and left empty; a schema that does not exist is created and
/// dropped again.
#[test]
fn demo_in_a_named_schema_starts_from_nothing_and_leaves_nothing_behind() {
    let schema = TestSchema::new("demo_named");
    run(args(&schema, &["migrate"])).ok();
    run(args(&schema, &["poll", "7"])).ok();
    let before = schema.rows();
    assert!(!before.is_empty());
    let out = run(args(&schema, &["demo", "--polls", "2"]));
    let err = out.failed();
    assert!(err.contains(&format!("schema {} already holds retweets", schema.name)), "{err}");
    assert_eq!(schema.rows(), before, "the refused demo touched the schema's rows");

    let empty = TestSchema::new("demo_named_empty");
    run(args(&empty, &["migrate"])).ok();
    let out = run(args(&empty, &["demo", "--polls", "2"]));
    let stdout = out.ok();
    assert!(stdout.starts_with("migrate: table retweet is there and empty"), "{stdout}");
    assert_eq!(outcomes(stdout, "total:"), [(1, 1), (2, 3)], "{stdout}");
    assert!(empty.rows().is_empty(), "the demo left rows in {}", empty.name);

    let missing = format!("{}_sub", empty.name);
    let mut named = args(&empty, &["demo", "--polls", "2"]);
    let at = named.iter().position(|a| a == "--schema").unwrap() + 1;
    named[at] = missing.clone();
    let out = run(&named);
    assert!(out.ok().starts_with("migrate: created table retweet"), "{}", out.stdout);
    let left = empty.query_admin(&format!("SELECT 1 FROM pg_namespace WHERE nspname = '{missing}'"));
    assert!(left.is_empty(), "the demo left the schema {missing} it created");
}

/// Four `migrate` processes at once on a server without the app's database:
/// all succeed (creating the database races: the losers see 42P04 or
/// 23505), and exactly one creates the table.
#[test]
fn concurrent_migrations_create_a_missing_database_once() {
    let config = common::server_config();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let name = format!("rt_migrate_race_{}", std::process::id());
    let admin = TestSchema::new("migrate_race_admin");
    for round in 0..3 {
        admin.admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        let children: Vec<_> = (0..4)
            .map(|_| {
                let mut command = app();
                command.env("PGHOST", &host).env("PGPORT", &port).env("PGUSER", &user).env("PGDATABASE", &name);
                if let Some(password) = config.get_password() {
                    command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
                }
                command.arg("migrate").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
                command.spawn().unwrap()
            })
            .collect();
        let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        for out in &outputs {
            assert!(
                out.status.success(),
                "round {round}: a concurrent migrate failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let created =
            outputs.iter().filter(|o| String::from_utf8_lossy(&o.stdout).starts_with("created table")).count();
        assert_eq!(created, 1, "round {round}: one migration creates the table");
    }
    admin.admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// `watch --ticks N` whose every poll fails (the API answers 503 each time)
/// exits 1 and says so; one poll that stores something is enough for 0.
#[test]
fn watch_whose_every_poll_failed_exits_1() {
    let schema = TestSchema::new("watch_all_failed");
    run(args(&schema, &["migrate"])).ok();
    let (_api, url) = fake_api(&["--fail", "503:3"]);
    let out =
        run(args(&schema, &["watch", "--every", "50ms", "--ticks", "3", "--retries", "0", "--api-url", &url, "5"]));
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("every poll failed (3 polls)"), "{}", out.stderr);
    let out =
        run(args(&schema, &["watch", "--every", "50ms", "--ticks", "2", "--retries", "0", "--api-url", &url, "5"]));
    assert_eq!(outcomes(out.ok(), "total"), [(1, 1), (1, 2)], "{}", out.stdout);
}

/// `migrate` on a table of the app's name that is not the app's says how
/// it differs (not the DDL statement that failed on it), and `watch` on a
/// database without the table stops at its first tick with the hint to
/// migrate, instead of retrying forever.
#[test]
fn a_foreign_table_is_explained_and_watch_stops_without_the_table() {
    let schema = TestSchema::new("foreign_table");
    schema.execute("CREATE TABLE retweet (id int, tweet text)");
    let stderr = run(args(&schema, &["migrate"])).failed().to_owned();
    assert!(stderr.contains("table retweet exists but does not match the model"), "{stderr}");
    assert!(stderr.contains(r#"column "retweeter" is missing"#), "{stderr}");
    assert!(!stderr.contains("$bulk$"), "{stderr}");
    schema.execute("DROP TABLE retweet");
    // (No --ticks: before, it retried until the test's timeout.)
    let out = run(args(&schema, &["watch", "--every", "100ms", "1"]));
    let stderr = out.failed();
    assert!(stderr.contains("stopped watching at tick 1"), "{stderr}");
    assert!(stderr.contains("run `retweeter-app migrate` first"), "{stderr}");
}
