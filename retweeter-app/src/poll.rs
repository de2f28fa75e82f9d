//! `poll` and `watch`: fetch the latest retweets of each tweet, store them
//! with one bulk call per poll, and say how many were new.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use bulk_runtime::{BulkCreateNew, Report};
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tracing::{error, info, warn};

use crate::cli::{PollArgs, WatchArgs};
use crate::db::{Database, Purpose, hint_migrate};
use crate::model::Retweet;
use crate::source::Source;
use crate::ui;

/// How one tweet fared in a poll.
#[derive(Debug)]
pub struct TweetResult {
    /// The tweet.
    pub tweet: i64,
    /// Retweets fetched and how many were new, or why the fetch failed.
    pub result: Result<Report, anyhow::Error>,
}

/// What one poll did.
#[derive(Debug)]
pub struct PollResult {
    /// Per tweet, in the order asked.
    pub tweets: Vec<TweetResult>,
    /// All tweets together.
    pub total: Report,
}

impl PollResult {
    /// How many tweets could not be fetched.
    pub fn failed(&self) -> usize {
        self.tweets.iter().filter(|t| t.result.is_err()).count()
    }

    /// Prints one line per tweet (errors on stderr) and the total, each prefixed with `indent`.
    pub fn print(&self, indent: &str) {
        for t in &self.tweets {
            match &t.result {
                Ok(outcome) => ui::out(format!("{indent}tweet {}: {outcome}", t.tweet)),
                Err(e) => ui::err_line(format!("{indent}error: tweet {}: {}", t.tweet, ui::one_line(e))),
            }
        }
        let note = match self.failed() {
            0 => String::new(),
            1 => ", 1 tweet failed".to_owned(),
            n => format!(", {n} tweets failed"),
        };
        ui::out(format!("{indent}total: {}{note}", self.total));
    }
}

/// Fetches each tweet, then stores every fetched retweet with one bulk call.
///
/// A tweet whose fetch fails is reported and contributes nothing; the others
/// are stored. The per-tweet counts come from the same snapshot as the bulk
/// call (REPEATABLE READ), so they add up to what the call inserted.
///
/// # Errors
/// The database write failed (nothing of this poll is stored).
pub async fn poll_once(client: &mut Client, source: &Source, tweets: &[i64], count: u8) -> anyhow::Result<PollResult> {
    let bar = ui::bar(tweets.len() as u64, "tweets");
    let mut fetched: Vec<(i64, anyhow::Result<Vec<Retweet>>)> = Vec::with_capacity(tweets.len());
    for &tweet in tweets {
        bar.set_message(format!("fetching tweet {tweet}"));
        let result = source.fetch(tweet, count).await;
        if let Err(e) = &result {
            info!("tweet {tweet}: {}", ui::one_line(e));
        }
        fetched.push((tweet, result));
        bar.inc(1);
    }
    let rows: Vec<&Retweet> = fetched.iter().filter_map(|(_, r)| r.as_ref().ok()).flatten().collect();
    bar.set_message(format!("storing {} retweets", rows.len()));
    let stored = store(client, &rows).await;
    bar.finish_and_clear();
    let (total, new_per_tweet) = stored?;
    let tweets = fetched
        .into_iter()
        .map(|(tweet, result)| TweetResult {
            tweet,
            result: result.map(|rows| {
                let offered = rows.len() as u64;
                let inserted = new_per_tweet.get(&tweet).copied().unwrap_or(0);
                Report { offered, inserted, skipped: offered.saturating_sub(inserted), ..Report::default() }
            }),
        })
        .collect();
    Ok(PollResult { tweets, total })
}

/// Attempts of a write that failed for a retryable reason (serialization
/// failure, deadlock) on a connection that is still usable.
const WRITE_ATTEMPTS: u32 = 5;

/// Stores the rows with one bulk call; returns the outcome and the number of
/// new rows per tweet.
async fn store(client: &mut Client, rows: &[&Retweet]) -> anyhow::Result<(Report, HashMap<i64, u64>)> {
    if rows.is_empty() {
        return Ok((Report::default(), HashMap::new()));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match store_once(client, rows).await {
            Ok(stored) => return Ok(stored),
            Err(Failure::Retry(e)) if attempt < WRITE_ATTEMPTS => {
                warn!("{}; retrying", ui::one_line(&e));
            }
            Err(Failure::Retry(e) | Failure::Fatal(e)) => return Err(e),
        }
    }
}

enum Failure {
    Retry(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        let retry = e.code().is_some_and(|c| c.code().starts_with("40")) && !e.is_closed();
        let missing = e.code() == Some(&SqlState::UNDEFINED_TABLE);
        let err = anyhow::Error::new(e).context("storing the poll failed");
        if missing {
            Failure::Fatal(err.context("the database has no retweet table yet: run `retweeter-app migrate` first"))
        } else if retry {
            Failure::Retry(err)
        } else {
            Failure::Fatal(err)
        }
    }
}

/// Stores the rows in one call that returns the key of each row it inserted,
/// and counts the new rows per tweet from those keys. Exact on plain
/// PostgreSQL and on Citus alike (where the table is distributed by tweet,
/// and a correlated `NOT EXISTS` over it would be refused).
async fn store_once(client: &mut Client, rows: &[&Retweet]) -> Result<(Report, HashMap<i64, u64>), Failure> {
    let report = match Retweet::bulk(client).returning_keys().run(rows.iter().copied()).await {
        Ok(report) => report,
        Err(e) if e.is_retryable() && e.connection_usable() => {
            return Err(Failure::Retry(anyhow::Error::new(e).context("storing the poll failed")));
        }
        Err(e) => return Err(Failure::Fatal(hint_migrate(e).context("storing the poll failed"))),
    };
    let mut per_tweet: HashMap<i64, u64> = HashMap::new();
    for row in &report.returned {
        *per_tweet.entry(row.key.0).or_default() += 1;
    }
    Ok((report.outcome(), per_tweet))
}

fn unique(tweets: &[i64]) -> Vec<i64> {
    let mut seen = HashSet::new();
    tweets.iter().copied().filter(|t| seen.insert(*t)).collect()
}

/// `poll`.
pub async fn poll_command(args: &PollArgs) -> anyhow::Result<ExitCode> {
    let source = Source::from_args(&args.source)?;
    Database::run(&args.db, Purpose::Existing, async |db| {
        info!("source: {}", source.describe());
        let mut client = db.connect().await?;
        let tweets = unique(&args.tweets.tweets);
        let result = poll_once(&mut client, &source, &tweets, args.tweets.count).await?;
        result.print("");
        match result.failed() {
            0 => Ok(ExitCode::SUCCESS),
            n => bail!(
                "{n} of {} could not be fetched (nothing stored for them)",
                ui::count(tweets.len() as u64, "tweet", "tweets")
            ),
        }
    })
    .await
}

/// Ctrl-C (or SIGTERM): the first lets the poll in flight finish; a second one exits at once.
#[derive(Clone)]
struct Shutdown {
    requested: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Shutdown {
    fn install() -> Shutdown {
        let shutdown = Shutdown { requested: Arc::new(AtomicBool::new(false)), notify: Arc::new(Notify::new()) };
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            loop {
                let received = match term.as_mut() {
                    Some(term) => {
                        tokio::select! {
                            r = tokio::signal::ctrl_c() => r.is_ok(),
                            r = term.recv() => r.is_some(),
                        }
                    }
                    None => tokio::signal::ctrl_c().await.is_ok(),
                };
                if !received {
                    return;
                }
                if s.requested.swap(true, Ordering::SeqCst) {
                    ui::err_line("interrupted again: exiting without waiting");
                    std::process::exit(130);
                }
                warn!("interrupted: finishing the poll in flight, then stopping (interrupt again to exit at once)");
                s.notify.notify_one();
            }
        });
        shutdown
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Whether `error` says the table is missing or does not fit the model,
/// which no later tick mends.
fn table_unfit(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(cause.downcast_ref::<bulk_runtime::Error>(), Some(bulk_runtime::Error::SchemaMismatch { .. }))
    })
}

/// `watch`.
pub async fn watch_command(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let shutdown = Shutdown::install();
    let source = Source::from_args(&args.source)?;
    let db = Database::open(&args.db, Purpose::Existing).await?;
    let tweets = unique(&args.tweets.tweets);
    info!("source: {}", source.describe());
    let plural = if tweets.len() == 1 { "" } else { "s" };
    let every = ui::human_duration(args.every);
    let spinner = ui::spinner();
    spinner.set_message(format!("watching {} tweet{plural} every {every}", tweets.len()));

    let mut interval = tokio::time::interval(args.every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    let mut total = Report::default();
    let mut ticks: u64 = 0;
    let mut failed_ticks: u64 = 0;
    // Ticks whose poll reached the database for at least one tweet.
    let mut stored_ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.notify.notified() => break,
        }
        if shutdown.requested() {
            break;
        }
        ticks += 1;
        ui::out(format!("tick {ticks}: polling {} tweet{plural}", tweets.len()));
        spinner.set_message(format!("tick {ticks}: polling {} tweet{plural}", tweets.len()));
        match tick(&db, &mut client, &source, &tweets, args.tweets.count).await {
            Ok(result) => {
                result.print("  ");
                total += result.total;
                if result.failed() < result.tweets.len() {
                    stored_ticks += 1;
                } else {
                    failed_ticks += 1;
                }
            }
            Err(e) if table_unfit(&e) => {
                // Permanent until someone migrates: no point in polling on.
                spinner.finish_and_clear();
                drop(client);
                db.close().await;
                return Err(e.context(format!("stopped watching at tick {ticks}")));
            }
            Err(e) => {
                failed_ticks += 1;
                error!("tick {ticks} failed, retrying at the next tick: {}", ui::one_line(&e));
                ui::out(format!("  tick {ticks} failed; retrying at the next tick"));
            }
        }
        spinner.set_message(format!(
            "watching {} tweet{plural} every {every} · {} · {total} so far · Ctrl-C to stop",
            tweets.len(),
            ui::count(ticks, "poll", "polls"),
        ));
        if shutdown.requested() || args.ticks.is_some_and(|n| ticks >= n) {
            break;
        }
    }
    spinner.finish_and_clear();
    let failed = match failed_ticks {
        0 => String::new(),
        n => format!(" ({n} failed)"),
    };
    ui::out(format!("stopped after {}{failed}: {total}", ui::count(ticks, "poll", "polls")));
    drop(client);
    db.close().await;
    if ticks > 0 && stored_ticks == 0 {
        bail!("every poll failed ({}): nothing was stored", ui::count(ticks, "poll", "polls"));
    }
    Ok(ExitCode::SUCCESS)
}

/// One tick of `watch`: (re)connect when needed, then poll.
async fn tick(
    db: &Database,
    client: &mut Option<Client>,
    source: &Source,
    tweets: &[i64],
    count: u8,
) -> anyhow::Result<PollResult> {
    if client.as_ref().is_some_and(Client::is_closed) {
        info!("the database connection was lost; reconnecting");
        *client = None;
    }
    if client.is_none() {
        *client = Some(db.connect().await?);
    }
    let Some(connection) = client.as_mut() else { bail!("no database connection") };
    let result = poll_once(connection, source, tweets, count).await;
    if result.is_err() && connection.is_closed() {
        *client = None;
    }
    result
}
