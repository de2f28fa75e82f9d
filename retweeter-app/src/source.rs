//! Where retweets come from: the embedded simulator or an HTTP API.

use std::sync::Arc;

use anyhow::Context;

use crate::cli::SourceArgs;
use crate::http::{HttpSource, TOKEN_ENV};
use crate::model::Retweet;
use crate::sim::Simulator;

/// A source of retweets.
#[derive(Debug, Clone)]
pub enum Source {
    /// The embedded, deterministic simulator.
    Sim(Arc<Simulator>),
    /// A Twitter API v1.1 server.
    Http(Arc<HttpSource>),
}

impl Source {
    /// The source the options ask for.
    ///
    /// # Errors
    /// An unusable API URL.
    pub fn from_args(args: &SourceArgs) -> anyhow::Result<Source> {
        match &args.api_url {
            None => Ok(Source::Sim(Arc::new(Simulator::new(args.sim.seed, args.sim.sim_start)))),
            Some(url) => {
                let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
                if token.is_none() {
                    tracing::info!("{TOKEN_ENV} is not set: requests carry no Authorization header");
                }
                let http = HttpSource::new(url, token, args.retries, args.backoff, args.http_timeout)?;
                Ok(Source::Http(Arc::new(http)))
            }
        }
    }

    /// One line saying what the source is.
    pub fn describe(&self) -> String {
        match self {
            Source::Sim(_) => "the embedded simulator".to_owned(),
            Source::Http(http) => format!("the API at {}", http.base()),
        }
    }

    /// The most recent `count` retweets of `tweet`, newest first.
    ///
    /// # Errors
    /// Whatever the HTTP source reports (the simulator never fails).
    pub async fn fetch(&self, tweet: i64, count: u8) -> anyhow::Result<Vec<Retweet>> {
        match self {
            Source::Sim(sim) => {
                let poll = sim.poll(tweet, usize::from(count));
                Ok(poll
                    .retweets
                    .iter()
                    .map(|r| Retweet { tweet, retweeter: r.retweeter, original_author: poll.author })
                    .collect())
            }
            Source::Http(http) => {
                let http = Arc::clone(http);
                tokio::task::spawn_blocking(move || http.fetch(tweet, count))
                    .await
                    .context("the HTTP request thread failed")?
            }
        }
    }
}
