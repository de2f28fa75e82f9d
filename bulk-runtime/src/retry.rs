//! Rerunning a batch when a retry may succeed.
//!
//! Under PostgreSQL's default isolation (`READ COMMITTED`) a bulk call needs
//! no retry for concurrency: overlapping writers neither fail nor deadlock.
//! A retry is for the rest:
//!
//! - the caller's transaction is `REPEATABLE READ` or `SERIALIZABLE`, and a
//!   concurrent writer stored one of the batch's keys after the snapshot was
//!   taken: PostgreSQL reports a serialization failure (SQLSTATE `40001`);
//! - a deadlock (`40P01`) with the caller's *own* statements in the same
//!   transaction, or a lock timeout (`55P03`);
//! - the connection was lost (server restart, failover, a terminated
//!   backend, a network cut): nothing of the batch was written, and the batch
//!   has to run again on a new connection.
//!
//! A [`Retry`] (from [`RetryPolicy::start`]) decides, after each failed
//! attempt, whether to run again: only on errors for which
//! [`Error::is_retryable`] (or [`Retryable::is_retryable`]) is true, at most
//! [`RetryPolicy::max_attempts`] times, after a bounded exponential backoff
//! with jitter. Retrying is always safe: the call skips keys already stored,
//! so a rerun never duplicates a row, and its [`Report`](crate::Report)
//! counts what *that* attempt inserted.
//!
//! Each attempt must start from scratch: a fresh transaction (the failed one
//! is rolled back when dropped), and a new connection when the old one is
//! closed (`Client::is_closed`). Written as a loop, the attempt can use the
//! caller's `&mut Client` directly, and the whole thing can run in a spawned
//! task:
//!
//! ```
//! use bulk_runtime::BulkCreateNew;
//! use bulk_runtime::retry::RetryPolicy;
//! use bulk_runtime::tokio_postgres::{self, Client, IsolationLevel, NoTls};
//!
//! #[derive(BulkCreateNew)]
//! #[bulk(table = "retweeter", unique(tweet, retweeter))]
//! pub struct Retweet {
//!     pub tweet: i64,
//!     pub retweeter: i64,
//!     pub original_author: i64,
//! }
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
//! # static DB: std::sync::OnceLock<ExampleDb> = std::sync::OnceLock::new();
//!
//! async fn connect() -> Result<Client, tokio_postgres::Error> {
//!     # if let Some(db) = DB.get() { return db.connect().await; }
//!     let (client, connection) = tokio_postgres::connect("host=127.0.0.1 user=postgres", NoTls).await?;
//!     tokio::spawn(connection);
//!     Ok(client)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let _ = DB.set(ExampleDb::create("doc_retry").await?);
//! # let mut client = connect().await?;
//! # client.batch_execute(&Retweet::model().migration_sql()).await?;
//! # let batch = vec![Retweet { tweet: 1, retweeter: 10, original_author: 100 }];
//! let mut retry = RetryPolicy::default().start();
//! let outcome = loop {
//!     let attempt = async {
//!         if client.is_closed() {
//!             client = connect().await?;
//!         }
//!         let mut tx = client.build_transaction().isolation_level(IsolationLevel::Serializable).start().await?;
//!         // ... the transaction's other statements ...
//!         let outcome = Retweet::bulk_create_new(&mut tx, &batch).await?;
//!         tx.commit().await?;
//!         Ok::<_, BoxError>(outcome)
//!     };
//!     match attempt.await {
//!         Ok(outcome) => break outcome,
//!         // Waits and goes round again, or gives the error back.
//!         Err(e) => retry.retry_after(e, tokio::time::sleep).await?,
//!     }
//! };
//! println!("{outcome}");
//! # assert_eq!(outcome.inserted, 1);
//! # drop(client);
//! # DB.get().unwrap().drop().await?;
//! # Ok(()) }
//! ```
//!
//! [`RetryPolicy::run`] does the same for an operation that gets what it needs
//! afresh each time (from a connection pool, say) instead of borrowing it.
//!
//! The library does not pick an async runtime: the caller passes the sleep
//! function (`tokio::time::sleep` under tokio).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::error::{Error, retryable};

/// An error that may go away when the operation runs again.
///
/// Implemented for the bulk call's [`Error`], for `tokio_postgres::Error`
/// (connecting, `BEGIN`, `COMMIT`), and for boxed errors holding either of
/// them, so an operation can use `?` on both and return a
/// `Box<dyn std::error::Error + Send + Sync>`. Implement it for an
/// application's own error type to use that with [`RetryPolicy::run`].
pub trait Retryable {
    /// Whether running the operation again may succeed.
    fn is_retryable(&self) -> bool;
}

impl Retryable for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }
}

impl Retryable for tokio_postgres::Error {
    fn is_retryable(&self) -> bool {
        retryable(self)
    }
}

/// A bulk [`Error`] or a `tokio_postgres::Error` in the box (directly, not
/// wrapped further) decides; anything else is not retried.
fn boxed_retryable(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<Error>() {
        e.is_retryable()
    } else if let Some(e) = e.downcast_ref::<tokio_postgres::Error>() {
        retryable(e)
    } else {
        false
    }
}

impl Retryable for Box<dyn std::error::Error + Send + Sync> {
    fn is_retryable(&self) -> bool {
        boxed_retryable(self.as_ref())
    }
}

impl Retryable for Box<dyn std::error::Error> {
    fn is_retryable(&self) -> bool {
        boxed_retryable(self.as_ref())
    }
}

/// How often and how patiently to retry.
///
/// The default makes at most 5 attempts; the waits before the retries grow
/// from 50 ms, doubling, to at most 2 s, each shortened by a random jitter of
/// up to half, so writers that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// The default policy: 5 attempts, backoff from 50 ms up to 2 s.
    pub const fn new() -> Self {
        RetryPolicy { max_attempts: 5, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(2) }
    }

    /// At most `attempts` runs of the operation in all (the first one
    /// included); 1 means no retry. 0 counts as 1.
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// The wait before the first retry (`initial`), doubling at each further
    /// retry up to `max`.
    pub const fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// The attempts the policy allows in all.
    pub const fn allowed_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest wait before retry number `retry` (1 for the wait after the
    /// first failure): `initial * 2^(retry - 1)`, at most `max`. The actual
    /// wait is between half of it and all of it.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The wait before retry number `retry`: [`backoff_cap`](Self::backoff_cap)
    /// less a random jitter of up to half of it.
    fn wait(&self, retry: u32) -> Duration {
        let cap = self.backoff_cap(retry);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(retry);
        let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(1.0 - unit / 2.0)
    }

    /// The attempts of one operation under this policy: the first one is
    /// about to run.
    pub const fn start(&self) -> Retry {
        Retry { policy: *self, attempt: 1 }
    }

    /// Runs `op` until it succeeds, fails with an error that is not
    /// retryable, or the attempts run out; between attempts it awaits
    /// `sleep(wait)`.
    ///
    /// `op` receives the attempt number, from 1, and must start each attempt
    /// afresh: take a connection (from a pool, or a new one), begin a new
    /// transaction. Its future cannot borrow from the closure; to reuse a
    /// `&mut Client` across attempts, write the loop with [`start`](Self::start)
    /// (see the [module documentation](self)).
    ///
    /// # Errors
    /// The error of the last attempt: the first one that is not retryable,
    /// or the last retryable one when no attempt is left.
    pub async fn run<T, E, S, SF, F, Fut>(&self, mut sleep: S, mut op: F) -> Result<T, E>
    where
        E: Retryable,
        S: FnMut(Duration) -> SF,
        SF: Future<Output = ()>,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut retry = self.start();
        loop {
            match op(retry.attempt()).await {
                Ok(value) => return Ok(value),
                Err(e) => retry.retry_after(e, &mut sleep).await?,
            }
        }
    }
}

/// The attempts of one operation: counts them, and after a failure decides
/// whether to go again. Made by [`RetryPolicy::start`].
#[derive(Debug, Clone)]
pub struct Retry {
    policy: RetryPolicy,
    attempt: u32,
}

impl Retry {
    /// The number of the attempt running now (or about to), from 1.
    pub const fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After the current attempt failed with `error`: when the error is
    /// retryable and attempts are left, waits (`sleep(backoff)`) and returns
    /// `Ok(())` for the next attempt; otherwise gives `error` back.
    ///
    /// # Errors
    /// `error` itself, when it is not retryable or it was the last attempt.
    pub async fn retry_after<E, S, SF>(&mut self, error: E, mut sleep: S) -> Result<(), E>
    where
        E: Retryable,
        S: FnMut(Duration) -> SF,
        SF: Future<Output = ()>,
    {
        if self.attempt >= self.policy.max_attempts || !error.is_retryable() {
            return Err(error);
        }
        sleep(self.policy.wait(self.attempt)).await;
        self.attempt += 1;
        Ok(())
    }
}

/// [`RetryPolicy::run`] with the default policy.
///
/// # Errors
/// See [`RetryPolicy::run`].
pub async fn with_retry<T, E, S, SF, F, Fut>(sleep: S, op: F) -> Result<T, E>
where
    E: Retryable,
    S: FnMut(Duration) -> SF,
    SF: Future<Output = ()>,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    RetryPolicy::default().run(sleep, op).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::new().backoff(Duration::from_millis(10), Duration::from_millis(70));
        let caps: Vec<u128> = (1..=6).map(|r| p.backoff_cap(r).as_millis()).collect();
        assert_eq!(caps, [10, 20, 40, 70, 70, 70]);
        assert_eq!(p.backoff_cap(200), Duration::from_millis(70), "no overflow");
        for retry in 1..=6 {
            for _ in 0..50 {
                let w = p.wait(retry);
                assert!(w <= p.backoff_cap(retry) && w >= p.backoff_cap(retry) / 2, "{w:?}");
            }
        }
        assert_eq!(RetryPolicy::new().max_attempts(0).allowed_attempts(), 1);
        assert_eq!(RetryPolicy::default(), RetryPolicy::new());
    }

    /// An error that says whether it is retryable.
    #[derive(Debug)]
    struct Fake(bool);
    impl Retryable for Fake {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    /// Polls a future that never waits on anything to completion.
    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn retries_only_retryable_errors_and_at_most_max_attempts() {
        let policy = RetryPolicy::new().max_attempts(4);
        let mut waits = Vec::new();
        let mut calls = Vec::new();
        // Retryable twice, then success.
        let r: Result<&str, Fake> = block_on(policy.run(
            |d| {
                waits.push(d);
                std::future::ready(())
            },
            |n| {
                calls.push(n);
                std::future::ready(if n < 3 { Err(Fake(true)) } else { Ok("done") })
            },
        ));
        assert_eq!(r.unwrap(), "done");
        assert_eq!(calls, [1, 2, 3]);
        assert_eq!(waits.len(), 2);
        // Not retryable: one attempt.
        calls.clear();
        let r: Result<(), Fake> = block_on(policy.run(
            |_| std::future::ready(()),
            |n| {
                calls.push(n);
                std::future::ready(Err(Fake(false)))
            },
        ));
        assert!(!r.unwrap_err().0);
        assert_eq!(calls, [1]);
        // Always retryable: max_attempts attempts, the last error returned.
        calls.clear();
        let r: Result<(), Fake> = block_on(policy.run(
            |_| std::future::ready(()),
            |n| {
                calls.push(n);
                std::future::ready(Err(Fake(true)))
            },
        ));
        assert!(r.unwrap_err().0);
        assert_eq!(calls, [1, 2, 3, 4]);
    }

    #[test]
    fn a_loop_with_retry_after() {
        let mut retry = RetryPolicy::new().max_attempts(3).start();
        let mut seen = Vec::new();
        let result: Result<u32, Fake> = block_on(async {
            loop {
                seen.push(retry.attempt());
                let attempt: Result<u32, Fake> = if retry.attempt() < 2 { Err(Fake(true)) } else { Ok(7) };
                match attempt {
                    Ok(v) => break Ok(v),
                    Err(e) => retry.retry_after(e, |_| std::future::ready(())).await?,
                }
            }
        });
        assert_eq!(result.unwrap(), 7);
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    fn boxed_errors_are_classified_by_what_they_hold() {
        let invalid = Error::InvalidValue { row: 0, field: "f", source: crate::ValueError::NulByte { offset: 0 } };
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(invalid);
        assert!(!Retryable::is_retryable(&boxed));
        let other: Box<dyn std::error::Error> = "some other failure".into();
        assert!(!Retryable::is_retryable(&other));
    }
}
