//! The HTTP source: Twitter API v1.1 `GET statuses/retweets/:id.json`.
//!
//! Requests are blocking (ureq); the caller runs them on a blocking thread.
//! HTTP 429 waits for `x-rate-limit-reset` and 5xx backs off exponentially,
//! both a bounded number of times, each retry announced by a warning. Any
//! other failure, malformed JSON or an unexpected shape is an error for that
//! tweet only, and nothing of that tweet is stored.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::model::Retweet;

/// Longest wait for one retry, whatever the server asks (the API's rate
/// limit window is 15 minutes).
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);
/// Longest exponential backoff step.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest response body accepted (100 full tweets are well below 1 MB).
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// The environment variable holding the bearer token.
pub const TOKEN_ENV: &str = "TWITTER_BEARER_TOKEN";

/// A client of one API server.
pub struct HttpSource {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    retries: u32,
    backoff: Duration,
}

impl fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSource")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl HttpSource {
    /// A client of the API at `base` (e.g. `https://api.twitter.com/1.1`).
    ///
    /// # Errors
    /// A base URL that is not `http://` or `https://`, or `https://` in a
    /// build without the `tls` feature.
    pub fn new(
        base: &str,
        token: Option<String>,
        retries: u32,
        backoff: Duration,
        timeout: Duration,
    ) -> anyhow::Result<HttpSource> {
        let base = base.trim_end_matches('/').to_owned();
        let rest = if let Some(rest) = base.strip_prefix("http://") {
            rest
        } else if let Some(rest) = base.strip_prefix("https://") {
            if !cfg!(feature = "tls") {
                bail!(
                    "API URL {base}: this build has no TLS; rebuild with `--features tls`, \
                     or use an http:// URL (a local proxy, or `retweeter-app fake-api`)"
                );
            }
            rest
        } else {
            bail!("API URL {base}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8080/1.1");
        };
        let host = rest.split(['/', '?']).next().unwrap_or_default();
        let host_only = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = host_only == "localhost" || host_only.starts_with("127.") || host_only == "[::1]";
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("retweeter-app/", env!("CARGO_PKG_VERSION")));
        if loopback {
            // A proxy from the environment must not capture loopback traffic.
            config = config.proxy(None);
        }
        let agent: ureq::Agent = config.build().into();
        Ok(HttpSource { agent, base, token, retries, backoff })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Fetches the most recent `count` retweets of `tweet`.
    ///
    /// # Errors
    /// Transport errors, HTTP errors (429 and 5xx once the retries are spent),
    /// malformed JSON and unexpected shapes.
    pub fn fetch(&self, tweet: i64, count: u8) -> anyhow::Result<Vec<Retweet>> {
        let url = format!("{}/statuses/retweets/{tweet}.json?count={count}&trim_user=1", self.base);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            debug!(%url, attempt, "GET");
            let mut request = self.agent.get(&url).header("Accept", "application/json");
            if let Some(token) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let mut response = request.call().map_err(|e| anyhow!(e)).with_context(|| format!("GET {url}"))?;
            let status = response.status().as_u16();
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let reset = header("x-rate-limit-reset");
            let retry_after = header("retry-after");
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_vec()
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("GET {url}: reading the response body (HTTP {status})"));
            let retryable = status == 429 || (500..=599).contains(&status);
            if retryable {
                if attempt > self.retries {
                    bail!("GET {url}: HTTP {status}{}; gave up after {attempt} attempts", api_message(body.ok()));
                }
                let backoff = self.backoff_for(attempt);
                let wait = if status == 429 {
                    rate_limit_wait(reset.as_deref(), retry_after.as_deref(), backoff)
                } else {
                    backoff
                };
                warn!(
                    "tweet {tweet}: HTTP {status}{}; retrying in {} (retry {attempt} of {})",
                    if status == 429 { " rate limited" } else { " server error" },
                    crate::ui::human_duration(wait),
                    self.retries
                );
                std::thread::sleep(wait);
                continue;
            }
            let body = body?;
            if status == 401 || status == 403 {
                bail!("GET {url}: HTTP {status}{}; check the bearer token in {TOKEN_ENV}", api_message(Some(body)));
            }
            if status != 200 {
                bail!("GET {url}: HTTP {status}{}", api_message(Some(body)));
            }
            return parse_retweets(tweet, &body)
                .with_context(|| format!("GET {url}: response rejected, nothing stored"));
        }
    }

    fn backoff_for(&self, attempt: u32) -> Duration {
        let factor = 1u32 << (attempt - 1).min(16);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }
}

/// How long a 429 waits: until `x-rate-limit-reset` (epoch seconds) or
/// `retry-after` (seconds), never less than the backoff step and never more
/// than 15 minutes.
fn rate_limit_wait(reset: Option<&str>, retry_after: Option<&str>, backoff: Duration) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let asked = reset
        .and_then(|r| r.trim().parse::<u64>().ok())
        .map(|reset| Duration::from_secs(reset).saturating_sub(now))
        .or_else(|| retry_after.and_then(|r| r.trim().parse::<u64>().ok()).map(Duration::from_secs));
    asked.unwrap_or(Duration::ZERO).max(backoff).min(MAX_RATE_LIMIT_WAIT)
}

/// The API's own error message, if the body has one (`{"errors":[{"message":...}]}`).
fn api_message(body: Option<Vec<u8>>) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        message: String,
    }
    let Some(body) = body else { return String::new() };
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => {
            format!(" ({})", e.errors.into_iter().map(|e| e.message).collect::<Vec<_>>().join("; "))
        }
        _ => String::new(),
    }
}

/// One element of the response array. Only what we store is read; every
/// other field is ignored.
#[derive(Deserialize)]
struct ApiRetweet {
    user: ApiUser,
    retweeted_status: ApiStatus,
}

#[derive(Deserialize)]
struct ApiStatus {
    id: Option<serde_json::Number>,
    id_str: Option<String>,
    user: ApiUser,
}

#[derive(Deserialize)]
struct ApiUser {
    id: Option<serde_json::Number>,
    id_str: Option<String>,
}

/// Reads a 64-bit id from `id_str`, else from `id` (an exact integer: serde_json
/// never routes integers through f64).
fn read_id(what: &str, id: Option<&serde_json::Number>, id_str: Option<&str>) -> anyhow::Result<i64> {
    if let Some(s) = id_str {
        return s
            .parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| anyhow!("{what}: id_str {s:?} is not a positive 64-bit id"));
    }
    match id {
        Some(n) => {
            n.as_i64().filter(|v| *v > 0).ok_or_else(|| anyhow!("{what}: id {n} is not a positive 64-bit integer"))
        }
        None => bail!("{what}: neither id_str nor id is present"),
    }
}

/// Parses a `statuses/retweets` response for `tweet`.
///
/// # Errors
/// Malformed JSON, a shape other than an array of retweets, an id that is not
/// a 64-bit integer, or a retweet of another tweet.
pub fn parse_retweets(tweet: i64, body: &[u8]) -> anyhow::Result<Vec<Retweet>> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| anyhow!("the API answered with malformed JSON: {e}"))?;
    let items: Vec<ApiRetweet> = serde_json::from_value(value).map_err(|e| {
        anyhow!("unexpected response shape: {e} (expected an array of retweets, each with user.id and retweeted_status.user.id)")
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let original = item.retweeted_status.id_str.as_deref();
            let original =
                read_id(&format!("retweet {i}: retweeted_status"), item.retweeted_status.id.as_ref(), original)?;
            if original != tweet {
                bail!("unexpected response shape: retweet {i} is a retweet of tweet {original}, not of tweet {tweet}");
            }
            let retweeter = read_id(&format!("retweet {i}: user"), item.user.id.as_ref(), item.user.id_str.as_deref())?;
            let original_author = read_id(
                &format!("retweet {i}: retweeted_status.user"),
                item.retweeted_status.user.id.as_ref(),
                item.retweeted_status.user.id_str.as_deref(),
            )?;
            Ok(Retweet { tweet, retweeter, original_author })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_beyond_f64_precision() {
        // 1234567890123456789 is not representable in f64.
        let body = br#"[
            {"id": 1700000000000000001, "id_str": "1700000000000000001",
             "user": {"id": 1234567890123456789, "id_str": "1234567890123456789"},
             "retweeted_status": {"id": 1600000000000000003, "id_str": "1600000000000000003",
                                  "user": {"id": 783214, "id_str": "783214"}}},
            {"user": {"id": 1234567890123456787},
             "retweeted_status": {"id": 1600000000000000003, "user": {"id_str": "12"}}}
        ]"#;
        let rows = parse_retweets(1600000000000000003, body).unwrap();
        assert_eq!(
            rows,
            [
                Retweet { tweet: 1600000000000000003, retweeter: 1234567890123456789, original_author: 783214 },
                Retweet { tweet: 1600000000000000003, retweeter: 1234567890123456787, original_author: 12 },
            ]
        );
    }

    #[test]
    fn rejects_bad_input() {
        let err = |body: &str| parse_retweets(5, body.as_bytes()).unwrap_err().to_string();
        assert!(err(r#"[{"user": "#).contains("malformed JSON"), "{}", err(r#"[{"user": "#));
        assert!(err(r#"{"errors": []}"#).contains("unexpected response shape"));
        assert!(err(r#"[{"user": {"id": 1}}]"#).contains("retweeted_status"));
        assert!(
            err(r#"[{"user": {"id": 1.5e18}, "retweeted_status": {"id": 5, "user": {"id": 2}}}]"#).contains("64-bit")
        );
        assert!(
            err(r#"[{"user": {"id": 1}, "retweeted_status": {"id": 6, "user": {"id": 2}}}]"#)
                .contains("not of tweet 5")
        );
        assert_eq!(parse_retweets(5, b"[]").unwrap(), []);
    }

    #[test]
    fn rate_limit_waits_are_bounded() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let b = Duration::from_millis(50);
        assert_eq!(rate_limit_wait(Some(&(now - 5).to_string()), None, b), b);
        assert!(rate_limit_wait(Some(&(now + 3).to_string()), None, b) > Duration::from_secs(1));
        assert_eq!(rate_limit_wait(Some(&(now + 86_400).to_string()), None, b), MAX_RATE_LIMIT_WAIT);
        assert_eq!(rate_limit_wait(None, Some("2"), b), Duration::from_secs(2));
        assert_eq!(rate_limit_wait(None, None, b), b);
    }
}
