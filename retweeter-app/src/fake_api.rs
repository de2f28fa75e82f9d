//! `fake-api`: the Twitter API v1.1 retweets endpoint, served on loopback
//! from the simulator, with failures on demand. The tests drive the HTTP
//! source through it across a real socket.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};
use tracing::info;

use crate::cli::FakeApiArgs;
use crate::sim::Simulator;

/// The API's maximum `count` for this endpoint.
const MAX_COUNT: usize = 100;

/// Serves until the process is stopped.
///
/// # Errors
/// The port cannot be bound.
pub fn run(args: &FakeApiArgs) -> anyhow::Result<()> {
    let server = Server::http(("127.0.0.1", args.port))
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("could not listen on 127.0.0.1:{}", args.port))?;
    let addr = server.server_addr().to_ip().context("the server has no IP address")?;
    // The URL alone on stdout's first line, for scripts and tests; the words on stderr.
    let url = format!("http://{addr}/1.1");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{url}")?;
    stdout.flush()?;
    drop(stdout);
    crate::ui::err_line(format!(
        "fake-api: serving the Twitter API v1.1 retweets endpoint at {url} (simulator seed {}); Ctrl-C to stop",
        args.sim.seed
    ));

    let mut api = FakeApi {
        sim: Simulator::new(args.sim.seed, args.sim.sim_start),
        failures: args.fail.iter().copied().filter(|(_, n)| *n > 0).collect(),
        args,
    };
    for request in server.incoming_requests() {
        if !args.delay.is_zero() {
            std::thread::sleep(args.delay);
        }
        let (status, body, extra) = api.answer(&request);
        info!("{} {} -> {status}", request.method(), request.url());
        let mut response = Response::from_data(body.into_bytes()).with_status_code(status);
        response.add_header(header("Content-Type", "application/json; charset=utf-8"));
        for (name, value) in extra {
            response.add_header(header(name, &value));
        }
        if let Err(e) = request.respond(response) {
            info!("could not send the response: {e}");
        }
    }
    Ok(())
}

struct FakeApi<'a> {
    sim: Simulator,
    failures: VecDeque<(u16, u32)>,
    args: &'a FakeApiArgs,
}

type Answer = (u16, String, Vec<(&'static str, String)>);

impl FakeApi<'_> {
    fn answer(&mut self, request: &Request) -> Answer {
        let (path, query) = request.url().split_once('?').unwrap_or((request.url(), ""));
        let Some(tweet) = path
            .strip_prefix("/1.1/statuses/retweets/")
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(|id| id.parse::<i64>().ok())
        else {
            return error(404, 34, "Sorry, that page does not exist.");
        };
        if *request.method() != Method::Get {
            return error(405, 0, "Only GET is supported.");
        }
        if let Some(token) = &self.args.token {
            let expected = format!("Bearer {token}");
            let given = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str());
            if given != Some(expected.as_str()) {
                return error(401, 89, "Invalid or expired token.");
            }
        }
        if let Some((status, left)) = self.failures.front_mut() {
            let status = *status;
            *left -= 1;
            if *left == 0 {
                self.failures.pop_front();
            }
            return if status == 429 {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let (code, body, _) = error(429, 88, "Rate limit exceeded");
                let headers = vec![
                    ("x-rate-limit-limit", "75".to_owned()),
                    ("x-rate-limit-remaining", "0".to_owned()),
                    ("x-rate-limit-reset", (now + self.args.reset_after).to_string()),
                ];
                (code, body, headers)
            } else {
                error(status, 131, "Internal error (injected by fake-api --fail)")
            };
        }
        if self.args.malformed.contains(&tweet) {
            return (200, format!(r#"[{{"id": 1, "id_str": "1", "user": {{"id": {tweet}, "#), Vec::new());
        }
        if self.args.unexpected.contains(&tweet) {
            return (
                200,
                json!([{ "id": 1, "id_str": "1", "text": "no retweeted_status here" }]).to_string(),
                Vec::new(),
            );
        }
        let mut count = 20;
        let mut trim_user = false;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("count", v)) => count = v.parse::<usize>().unwrap_or(20).clamp(1, MAX_COUNT),
                Some(("trim_user", v)) => trim_user = matches!(v, "1" | "true" | "t"),
                _ => {}
            }
        }
        let poll = self.sim.poll(tweet, count);
        let user = |id: i64| {
            if trim_user {
                json!({ "id": id, "id_str": id.to_string() })
            } else {
                json!({ "id": id, "id_str": id.to_string(), "screen_name": format!("user{id}") })
            }
        };
        let body: Vec<serde_json::Value> = poll
            .retweets
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "id_str": r.id.to_string(),
                    "text": format!("RT @user{}: simulated tweet {tweet}", poll.author),
                    "user": user(r.retweeter),
                    "retweeted_status": {
                        "id": tweet,
                        "id_str": tweet.to_string(),
                        "text": format!("simulated tweet {tweet}"),
                        "user": user(poll.author),
                    },
                })
            })
            .collect();
        info!("tweet {tweet}: tick {}, {} retweets", poll.tick, body.len());
        let remaining = vec![("x-rate-limit-limit", "75".to_owned()), ("x-rate-limit-remaining", "74".to_owned())];
        (200, serde_json::Value::Array(body).to_string(), remaining)
    }
}

fn error(status: u16, code: u32, message: &str) -> Answer {
    (status, json!({ "errors": [{ "code": code, "message": message }] }).to_string(), Vec::new())
}

fn header(name: &str, value: &str) -> Header {
    // Names are constants and values are numbers or a fixed media type: always valid.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}
