//! The command line: subcommands and their options.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Capture who retweets a set of watched tweets, store each (tweet, retweeter,
/// original author) once, and report a retweeter-by-author table of counts.
///
/// Retweets come from an embedded simulator (the default) or from a Twitter
/// API v1.1 server (`--api-url`). The database is `--database-url` /
/// `DATABASE_URL`, else a local PostgreSQL server that accepts the connection,
/// else an embedded PostgreSQL run from the local binaries.
#[derive(Debug, Parser)]
#[command(name = "retweeter-app", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the table, its unique key and indexes from the model's generated DDL (idempotent)
    Migrate(MigrateArgs),
    /// Write the model's migration as numbered .sql files for a migration tool
    Migrations(MigrationsArgs),
    /// Fetch the latest retweets of each tweet once and store the new ones
    Poll(PollArgs),
    /// Poll on a schedule until interrupted (Ctrl-C finishes the poll in flight, then exits 0)
    Watch(WatchArgs),
    /// Show retweet counts per retweeter and original author, computed in SQL
    Report(ReportArgs),
    /// The whole story in one command: migrate, poll while retweets arrive, report
    Demo(DemoArgs),
    /// Serve the Twitter API v1.1 retweets endpoint on loopback from the simulator
    FakeApi(FakeApiArgs),
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DbArgs {
    /// PostgreSQL connection string (`postgresql://user@host/db` or `host=... user=... dbname=...`).
    /// Without it: a local server that accepts the connection, else an embedded server
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Work in this schema (created by `migrate` if missing) instead of the connection's search_path
    #[arg(long, env = "RETWEETER_SCHEMA", value_name = "NAME")]
    pub schema: Option<String>,

    /// Skip the local server: always use the embedded PostgreSQL (when no database URL is given)
    #[arg(long)]
    pub embedded: bool,

    /// Data directory of the embedded PostgreSQL
    /// [default: /var/lib/retweeter-app/pgdata as root, else $XDG_DATA_HOME/retweeter-app/pgdata]
    #[arg(long, env = "RETWEETER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory holding initdb, pg_ctl and postgres
    /// [default: `pg_config --bindir`, the newest /usr/lib/postgresql/*/bin, then PATH]
    #[arg(long, env = "RETWEETER_PG_BIN", value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
}

/// Where retweets come from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Source of retweets")]
pub struct SourceArgs {
    /// Base URL of a Twitter API v1.1 server (e.g. http://127.0.0.1:8080/1.1); the bearer token
    /// is read from TWITTER_BEARER_TOKEN. Without it: the embedded simulator
    #[arg(long, env = "RETWEETER_API_URL", value_name = "URL")]
    pub api_url: Option<String>,

    /// Retries of a request answered with HTTP 429 or 5xx
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,

    /// First retry delay; it doubles on each retry (at most 60s). A 429 waits for its
    /// x-rate-limit-reset, at most 15 minutes
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub backoff: Duration,

    /// Timeout of one HTTP request
    #[arg(long, default_value = "30s", value_parser = parse_interval, value_name = "DURATION")]
    pub http_timeout: Duration,

    #[command(flatten)]
    pub sim: SimArgs,
}

/// The simulator's knobs.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Seed of the simulator: the same seed gives the same authors, retweeters and arrivals
    #[arg(long, env = "RETWEETER_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Simulated time of the first poll of each tweet (ticks since its first retweet, from 1
    /// to 1,000,000); each later poll of the tweet is one tick later
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000), value_name = "TICK")]
    pub sim_start: u64,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrationLayout {
    /// `0001_create_retweet.up.sql` and `.down.sql` (sqlx, golang-migrate, dbmate-style tools)
    UpDown,
    /// `V1__create_retweet.sql` (Flyway, refinery)
    Flyway,
}

#[derive(Debug, Args)]
pub struct MigrationsArgs {
    /// Directory to write the .sql files into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// File naming convention
    #[arg(long, value_enum, default_value_t = MigrationLayout::UpDown)]
    pub layout: MigrationLayout,
}

/// The tweets to watch and how many retweets to ask for.
#[derive(Debug, Clone, Args)]
pub struct TweetArgs {
    /// How many of the most recent retweets to fetch per tweet (the API's maximum is 100)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100), value_name = "N")]
    pub count: u8,

    /// Ids of the tweets to watch
    #[arg(required = true, value_name = "TWEET_ID", value_parser = clap::value_parser!(i64).range(1..))]
    pub tweets: Vec<i64>,
}

#[derive(Debug, Args)]
pub struct PollArgs {
    #[command(flatten)]
    pub tweets: TweetArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Time between polls, more than zero (e.g. 30s, 5m, 1h, 200ms)
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    pub every: Duration,

    /// Stop after this many polls (default: until interrupted)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ticks: Option<u64>,

    #[command(flatten)]
    pub tweets: TweetArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for the terminal (top 10 retweeters and authors unless --limit)
    Table,
    /// Comma-separated, one line per retweeter (all of them unless --limit)
    Csv,
    /// One JSON document; ids are strings, as they exceed 2^53 (all of them unless --limit)
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,

    /// Show the top K retweeters and the top K authors (by retweets); the rest are summed
    /// into an "other" row and column. Totals always cover everything
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many polls to run
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=50), value_name = "N")]
    pub polls: u64,

    /// Seed of the simulator
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct FakeApiArgs {
    /// Port on 127.0.0.1 (0 picks a free one; the URL is printed on the first line)
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Require `Authorization: Bearer TOKEN` (401 otherwise)
    #[arg(long, env = "FAKE_API_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Answer the next COUNT requests with this HTTP status (e.g. 429:2, 500:1, 503:1000);
    /// repeat the flag to queue several. 429 carries x-rate-limit-reset
    #[arg(long = "fail", value_name = "STATUS:COUNT", value_parser = parse_fail)]
    pub fail: Vec<(u16, u32)>,

    /// Seconds from now that a 429's x-rate-limit-reset points at
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub reset_after: u64,

    /// Answer requests for this tweet with malformed JSON
    #[arg(long, value_name = "TWEET_ID")]
    pub malformed: Vec<i64>,

    /// Answer requests for this tweet with valid JSON of an unexpected shape
    #[arg(long, value_name = "TWEET_ID")]
    pub unexpected: Vec<i64>,

    /// Wait this long before answering each request
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub delay: Duration,

    #[command(flatten)]
    pub sim: SimArgs,
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `1m30s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 =
            number.parse().map_err(|_| format!("invalid duration `{text}`, expected e.g. 200ms, 30s, 5m, 1h"))?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hours" => 3600.0,
            _ => return Err(format!("invalid duration `{text}`: unknown unit `{unit}`, expected ms, s, m or h")),
        };
        total += Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration `{text}`: {e}"))?;
        rest = tail;
    }
    Ok(total)
}

/// A duration as [`parse_duration`] reads it, longer than zero (an interval, a timeout).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval.is_zero() {
        return Err("it must be longer than zero, e.g. 200ms or 30s".to_owned());
    }
    Ok(interval)
}

fn parse_fail(text: &str) -> Result<(u16, u32), String> {
    let (status, count) = text.split_once(':').unwrap_or((text, "1"));
    let status: u16 = status.parse().map_err(|_| format!("invalid status in `{text}`, expected e.g. 429:2"))?;
    if !(400..=599).contains(&status) {
        return Err(format!("status {status} is not an HTTP error status (400-599)"));
    }
    let count: u32 = count.parse().map_err(|_| format!("invalid count in `{text}`, expected e.g. 429:2"))?;
    Ok((status, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("0").is_err());
        assert_eq!(parse_interval("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn fail_specs() {
        assert_eq!(parse_fail("429:2"), Ok((429, 2)));
        assert_eq!(parse_fail("500"), Ok((500, 1)));
        assert!(parse_fail("200:1").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
