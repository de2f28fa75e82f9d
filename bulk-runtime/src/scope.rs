//! The call's transaction: its own `BEGIN` ... `COMMIT` on a
//! [`Client`], or a savepoint inside a caller's transaction, ended exactly
//! once whatever happens to the call.
//!
//! tokio-postgres's own savepoint rolls back with `ROLLBACK TO` and leaves the
//! savepoint open, so every failed call would leave one more nested
//! subtransaction in the caller's transaction. A [`Scope`] ends a savepoint
//! with `ROLLBACK TO SAVEPOINT` *and* `RELEASE SAVEPOINT`, so the caller's
//! transaction is left exactly as it was: after an error, after a fallback,
//! and when the call's future is dropped (a timeout).
//!
//! Dropping an open scope queues its rollback on the connection without
//! waiting (as tokio-postgres's `Transaction` does): the connection runs
//! requests in order, so anything the caller sends next comes after it.

use futures_util::FutureExt;
use tokio_postgres::Client;

/// Where a [`Scope`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Open on the server (or about to be, once what was sent runs):
    /// dropping the guard rolls it back.
    Open,
    /// The commit was sent with the call's last statements and its answer
    /// has not come: dropping the guard sends `ROLLBACK`, which ends the
    /// transaction if those statements failed (it stays open, aborted) and
    /// is a no-op (a warning) if it committed.
    CommitSent,
    /// Ended.
    Done,
}

/// An open transaction or savepoint of one call; see the module's documentation.
pub(crate) struct Scope<'a> {
    client: &'a Client,
    nested: bool,
    state: State,
}

impl<'a> Scope<'a> {
    /// Opens the call's transaction on `client`, or with `nested` a savepoint
    /// in the caller's transaction.
    pub(crate) async fn begin(client: &'a Client, nested: bool) -> Result<Scope<'a>, tokio_postgres::Error> {
        // Open from the moment BEGIN is sent: a call dropped while waiting
        // for its answer still rolls back.
        let mut scope = Scope { client, nested, state: State::Open };
        let begin = if nested { "SAVEPOINT bulk_create_new" } else { "BEGIN" };
        if let Err(e) = client.batch_execute(begin).await {
            scope.state = State::Done;
            return Err(e);
        }
        Ok(scope)
    }

    /// Opens the call's own transaction on `client` (not a savepoint) and
    /// sends `then`'s requests right behind its `BEGIN`, in the same round
    /// trip; returns the scope (or `BEGIN`'s error) and `then`'s output.
    pub(crate) async fn begin_then<T>(
        client: &'a Client,
        then: impl Future<Output = T>,
    ) -> (Result<Scope<'a>, tokio_postgres::Error>, T) {
        let mut scope = Scope { client, nested: false, state: State::Open };
        // `join` polls `BEGIN` first: its request goes out first.
        let (begun, out) = futures_util::future::join(client.batch_execute("BEGIN"), then).await;
        match begun {
            Ok(()) => (Ok(scope), out),
            Err(e) => {
                scope.state = State::Done;
                (Err(e), out)
            }
        }
    }

    /// The client the scope's statements run on.
    pub(crate) fn client(&self) -> &'a Client {
        self.client
    }

    /// Whether this is a savepoint inside a caller's transaction.
    pub(crate) fn nested(&self) -> bool {
        self.nested
    }

    /// The statement that ends the scope successfully.
    pub(crate) fn commit_sql(&self) -> &'static str {
        if self.nested { "RELEASE SAVEPOINT bulk_create_new" } else { "COMMIT" }
    }

    /// The caller is about to send [`commit_sql`](Self::commit_sql) itself,
    /// at the end of its last statements (only outside a caller's
    /// transaction). Call it right before awaiting that request (a future
    /// sends its request at its first poll, before the call can be dropped),
    /// then [`sent_ok`](Self::sent_ok) or [`sent_failed`](Self::sent_failed).
    pub(crate) fn commit_sent(&mut self) {
        debug_assert!(!self.nested, "a savepoint is released on its own");
        self.state = State::CommitSent;
    }

    /// The request that carried the commit succeeded: the scope is ended.
    pub(crate) fn sent_ok(&mut self) {
        self.state = State::Done;
    }

    /// The request that carried the commit failed before reaching it: the
    /// scope is still open (in an aborted state) and must be ended.
    pub(crate) fn sent_failed(&mut self) {
        self.state = State::Open;
    }

    /// Ends the scope successfully (nothing to send when the commit went
    /// with the last statements).
    pub(crate) async fn commit(mut self) -> Result<(), tokio_postgres::Error> {
        if self.state != State::Open {
            self.state = State::Done;
            return Ok(());
        }
        self.state = State::Done;
        let sql = self.commit_sql();
        self.client.batch_execute(sql).await
    }
}

impl Scope<'_> {
    /// Undoes the scope and ends it (what dropping it does, awaited).
    pub(crate) async fn rollback(mut self) -> Result<(), tokio_postgres::Error> {
        let sql = self.rollback_sql();
        self.state = State::Done;
        self.client.batch_execute(sql).await
    }

    /// Ends the scope after `error`, which the call then returns: rolls
    /// back and waits for the answer (whether it came or not).
    ///
    /// Dropping the scope would queue the rollback without waiting, and the
    /// call's next request (the explanation of `error`, a retry) or the
    /// caller's would go out right behind it: behind a pooler in transaction
    /// mode, the rollback's answer ends the transaction, and the pooler may
    /// hand the server to another client while the answer to that next
    /// request is still on its way (PgBouncer 1.18 drops it, and the client
    /// waits for it for ever).
    pub(crate) async fn fail<E>(self, error: E) -> E {
        let _ = self.rollback().await;
        error
    }

    /// What ends the scope without its effects, in its current state.
    fn rollback_sql(&self) -> &'static str {
        match (self.state, self.nested) {
            (State::Open, true) => "ROLLBACK TO SAVEPOINT bulk_create_new; RELEASE SAVEPOINT bulk_create_new",
            _ => "ROLLBACK",
        }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if self.state == State::Done {
            return;
        }
        let sql = self.rollback_sql();
        // The first poll sends the request; its answer is not awaited
        // (tokio-postgres reads and drops the answers of a request whose
        // receiver is gone).
        let _ = self.client.batch_execute(sql).now_or_never();
    }
}
