//! Prepared statements of the short-batch path, kept per client, model and
//! statement kind (the plain call's insert, and the [`Bulk`](crate::Bulk)
//! variants: returning, upsert).
//!
//! tokio-postgres has no statement cache and a `Client` carries no user data,
//! so statements are kept in a process-wide map keyed by the connection's
//! identity (see [`Identity`]: the same for a `Client` wherever it is moved,
//! never shared by two connections) and the model. An entry means the
//! connection has checked the model. A stale entry (`DISCARD ALL` /
//! `DEALLOCATE ALL` ran) fails with SQLSTATE 26000
//! (tokio-postgres names statements from a process-wide counter, so a stale
//! name never matches another statement of this process); a name that a
//! pooler's backend already holds fails with 42P05. The caller then evicts
//! it and runs the statement unprepared.
//!
//! Behind a pooler in transaction mode without prepared-statement support
//! (PgBouncer before 1.21, or with `max_prepared_statements = 0`), a
//! statement stays on the backend that prepared it while later transactions
//! run on others: every re-prepare would leave one more statement behind on
//! the pooler's backends. So a client re-prepares once; when its statement
//! goes stale a second time, it stops preparing that statement and runs it
//! unnamed from then on ([`lookup`] says [`Lookup::Unnamed`]), leaving
//! nothing behind. The insert's two forms (plain and `ON CONFLICT`, see
//! [`contention`](crate::contention)) are two statements, each counted on
//! its own.
//!
//! Behind any pooler, though, a name this process prepared may already
//! name another process's statement on the backend a later transaction
//! gets (every tokio-postgres process names its statements `s0`, `s1`, ...
//! from its own counter): a call that bound it would run that statement
//! with the batch's values. So a connection prepares its statements only
//! once a schema check on it found the backend's `pg_backend_pid()` to be
//! the process id the connection started with ([`backend_seen`]): a
//! direct connection. Behind a pooler (which answers the startup with its
//! own pair) and before the first check, statements run unnamed.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_postgres::{Client, Statement};

use crate::model::Model;
use crate::sql::Dialect;

/// The label of the plain call's short-batch insert, plain form (the first attempt).
pub(crate) const PLAIN: &str = "create_new";

/// The label of the plain call's short-batch insert, `ON CONFLICT` form.
pub(crate) const PLAIN_ON_CONFLICT: &str = "create_new on conflict";

/// The label of the plain call's short-batch insert, `ON CONFLICT` form
/// behind the anti-join (after a row the table refused).
pub(crate) const PLAIN_FILTERED: &str = "create_new filtered";

/// Beyond this many clients × models the map is cleared (entries of dropped
/// clients would otherwise accumulate in a long-lived process).
const MAX_ENTRIES: usize = 4096;

/// Stale statements after which a client stops preparing a statement.
const STALE_LIMIT: u8 = 2;

/// A client's statement of one kind, and how often one went stale.
#[derive(Default)]
struct Entry {
    statement: Option<Statement>,
    stale: u8,
}

/// Per (connection, model address), the statements by label.
type Statements = HashMap<(Identity, usize), HashMap<String, Entry>>;

static STATEMENTS: Mutex<Option<Statements>> = Mutex::new(None);

fn key(client: &Client, model: &'static Model) -> (Identity, usize) {
    (Identity::of(client), std::ptr::from_ref(model) as usize)
}

/// Which connection a [`Client`] is: the backend process id and secret key
/// the server sent when the connection started (behind a pooler, the
/// pooler's own pair for this client connection). The pair is unique among
/// the server's connections (the key is random), and it stays the same when
/// the `Client` moves in memory, unlike its address: a new connection never
/// inherits another's statements, and a moved one keeps its own.
///
/// tokio-postgres keeps the pair only for cancel requests, so it is read by
/// writing the connection's cancel request into a buffer instead of a
/// socket ([`CancelToken::cancel_query_raw`](tokio_postgres::CancelToken::cancel_query_raw)):
/// nothing is sent anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    process_id: i32,
    secret_key: i32,
}

impl Identity {
    pub(crate) fn of(client: &Client) -> Identity {
        let mut capture = Capture::default();
        // The request is written synchronously: the buffer never waits.
        let written = client.cancel_token().cancel_query_raw(&mut capture, Passthrough).now_or_never();
        debug_assert!(matches!(written, Some(Ok(()))), "{written:?}");
        // The cancel request is the last 16 bytes written: length (16), the
        // cancel request code, the process id, the secret key.
        let tail = capture.written.len().checked_sub(16).map(|at| &capture.written[at..]);
        let word = |tail: &[u8], i: usize| i32::from_be_bytes([tail[i], tail[i + 1], tail[i + 2], tail[i + 3]]);
        match tail {
            Some(t) if word(t, 0) == 16 && word(t, 4) == CANCEL_REQUEST_CODE => {
                Identity { process_id: word(t, 8), secret_key: word(t, 12) }
            }
            // Not reached with tokio-postgres 0.7; a client that cannot be
            // told apart gets no cached statements at all.
            _ => Identity { process_id: 0, secret_key: 0 },
        }
    }

    /// The backend process id (0 when the connection could not be identified).
    pub(crate) fn process_id(self) -> i32 {
        self.process_id
    }

    /// Whether the connection could be identified.
    fn known(self) -> bool {
        self != Identity { process_id: 0, secret_key: 0 }
    }
}

/// The code of a cancel request in the startup packet (1234 << 16 | 5678).
const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// A stream that keeps what is written to it and answers `S` ("go ahead
/// with TLS") to the one byte a TLS negotiation reads.
#[derive(Default)]
struct Capture {
    written: Vec<u8>,
    answered: bool,
}

impl AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Capture {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.answered && buf.remaining() > 0 {
            this.answered = true;
            buf.put_slice(b"S");
        }
        Poll::Ready(Ok(()))
    }
}

impl TlsStream for &mut Capture {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// A "TLS" that is the stream itself, so a connection made with TLS writes
/// its cancel request into the [`Capture`] too.
struct Passthrough;

impl<'a> TlsConnect<&'a mut Capture> for Passthrough {
    type Stream = &'a mut Capture;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<&'a mut Capture>>;

    fn connect(self, stream: &'a mut Capture) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}

fn with<R>(f: impl FnOnce(&mut Statements) -> R) -> R {
    let mut guard = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(HashMap::new))
}

/// What `client` has of the statement `label` of `model`.
pub(crate) enum Lookup {
    /// The prepared statement.
    Prepared(Statement),
    /// Nothing yet (or it was evicted): prepare it.
    Prepare,
    /// Nothing yet, and no schema check on this connection has told
    /// whether it is direct: prepare it only once the check found it so.
    PrepareAfterCheck,
    /// Its statement went stale twice (a pooler in transaction mode): run
    /// it unnamed.
    Unnamed,
}

/// Per connection, whether its schema checks ran on the backend it
/// started with (`true`: a direct connection) or on another (a pooler's).
static DIRECT: Mutex<Option<HashMap<Identity, bool>>> = Mutex::new(None);

/// Records the backend process id a schema check on `client` saw.
pub(crate) fn backend_seen(client: &Client, pid: i32) {
    let identity = Identity::of(client);
    if !identity.known() {
        return;
    }
    let mut guard = DIRECT.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES && !map.contains_key(&identity) {
        map.clear();
    }
    map.insert(identity, identity.process_id() == pid);
}

/// Whether a schema check on `client` found it connected to its backend
/// directly (`Some(true)`), or through a pooler; `None` before the first check.
pub(crate) fn direct(client: &Client) -> Option<bool> {
    let guard = DIRECT.lock().unwrap_or_else(PoisonError::into_inner);
    guard.as_ref().and_then(|m| m.get(&Identity::of(client)).copied())
}

/// What `client` has of the statement `label` of `model` (one lock, one
/// lookup): [`Lookup::Unnamed`] behind a pooler (see [`direct`]), and
/// [`Lookup::PrepareAfterCheck`] before a check told.
pub(crate) fn lookup(client: &Client, model: &'static Model, label: &str) -> Lookup {
    let key = key(client, model);
    let direct = match direct(client) {
        _ if !key.0.known() => return Lookup::Unnamed,
        Some(false) => return Lookup::Unnamed,
        Some(true) => true,
        None => false,
    };
    with(|map| match map.get(&key).and_then(|m| m.get(label)) {
        Some(entry) if entry.stale >= STALE_LIMIT => Lookup::Unnamed,
        _ if !direct => Lookup::PrepareAfterCheck,
        Some(Entry { statement: Some(statement), .. }) => Lookup::Prepared(statement.clone()),
        _ => Lookup::Prepare,
    })
}

/// Keeps a statement that `client` prepared.
pub(crate) fn put(client: &Client, model: &'static Model, label: &str, statement: Statement) {
    with(|map| {
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let by_label = map.entry(key(client, model)).or_default();
        by_label.entry(label.to_owned()).or_default().statement = Some(statement);
    });
}

/// Forgets a statement the server no longer knows, and counts it as stale.
pub(crate) fn evict(client: &Client, model: &'static Model, label: &str) {
    with(|map| {
        if let Some(entry) = map.get_mut(&key(client, model)).and_then(|m| m.get_mut(label)) {
            entry.statement = None;
            entry.stale = entry.stale.saturating_add(1);
        }
    });
}

/// Forgets every statement `client` prepared for `model`, without counting
/// them stale: they were built for a table the connection's check no longer
/// describes (a guard found the key's index or shape changed), so its next
/// statement checks the table again and is built for what it finds.
pub(crate) fn forget_prepared(client: &Client, model: &'static Model) {
    with(|map| {
        if let Some(by_label) = map.get_mut(&key(client, model)) {
            for entry in by_label.values_mut() {
                entry.statement = None;
            }
        }
    });
}

/// Per (connection, model address), the dialect the connection's last
/// schema check found (see [`Dialect`]).
static DIALECTS: Mutex<Option<HashMap<(Identity, usize), Dialect>>> = Mutex::new(None);

/// Keeps the dialect `client`'s schema check of `model` found.
pub(crate) fn checked_dialect(client: &Client, model: &'static Model, dialect: Dialect) {
    let key = key(client, model);
    if !key.0.known() {
        return;
    }
    let mut guard = DIALECTS.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, dialect);
}

/// The dialect `client`'s last schema check of `model` found; PostgreSQL's
/// when it has not checked it (a statement in the wrong dialect fails,
/// and the driver's next attempt checks again; see [`dialect_unknown`]).
pub(crate) fn dialect(client: &Client, model: &'static Model) -> Dialect {
    let guard = DIALECTS.lock().unwrap_or_else(PoisonError::into_inner);
    guard.as_ref().and_then(|m| m.get(&key(client, model)).copied()).unwrap_or_default()
}

/// Whether `client` has no schema check of `model` on record (the COPY
/// path then checks again before its first insert).
pub(crate) fn dialect_unknown(client: &Client, model: &'static Model) -> bool {
    let guard = DIALECTS.lock().unwrap_or_else(PoisonError::into_inner);
    !guard.as_ref().is_some_and(|m| m.contains_key(&key(client, model)))
}

/// Per (connection, model address), which model columns had a type
/// modifier (`varchar(n)`, `char(n)`, `numeric(p, s)`) when the connection
/// last read them: the columns its COPY path watches (see
/// `wire::limits`).
static WATCHED: Mutex<Option<Watched>> = Mutex::new(None);

/// Per (connection, model address), per model column: see [`WATCHED`].
type Watched = HashMap<(Identity, usize), Arc<[bool]>>;

/// Keeps which columns of `model` `client` found with a type modifier.
pub(crate) fn set_watched(client: &Client, model: &'static Model, watched: &[bool]) {
    let key = key(client, model);
    if !key.0.known() {
        return;
    }
    let mut guard = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, watched.into());
}

/// Which columns of `model` `client` last found with a type modifier, if
/// any.
pub(crate) fn watched(client: &Client, model: &'static Model) -> Option<Arc<[bool]>> {
    let guard = WATCHED.lock().unwrap_or_else(PoisonError::into_inner);
    guard.as_ref().and_then(|m| m.get(&key(client, model)).cloned()).filter(|w| w.contains(&true))
}

/// A set of (connection, model) pairs that a flag holds for: the
/// per-connection flags below.
struct Flags(Mutex<Option<std::collections::HashSet<(Identity, usize)>>>);

impl Flags {
    const fn new() -> Flags {
        Flags(Mutex::new(None))
    }

    /// Sets (or clears) the flag of `client` and `model`; nothing for a
    /// connection that cannot be identified.
    fn set(&self, client: &Client, model: &'static Model, on: bool) {
        let key = key(client, model);
        if !key.0.known() {
            return;
        }
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let set = guard.get_or_insert_with(Default::default);
        if !on {
            set.remove(&key);
            return;
        }
        if set.len() >= MAX_ENTRIES && !set.contains(&key) {
            set.clear();
        }
        set.insert(key);
    }

    /// Whether the flag of `client` and `model` is set.
    fn get(&self, client: &Client, model: &'static Model) -> bool {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().is_some_and(|set| set.contains(&key(client, model)))
    }
}

/// Per connection, the models whose schema check kept the calls off a
/// Citus staging table that the query before each COPY found open to the
/// role (a key compared otherwise than the model's types, other columns,
/// another co-location): the COPY path does not check again for it each
/// call (see `call::copy::scratch`).
static STAGE_REFUSED: Flags = Flags::new();

/// Records whether `client`'s schema check of `model` refused a staging
/// table that looked usable.
pub(crate) fn set_stage_refused(client: &Client, model: &'static Model, refused: bool) {
    STAGE_REFUSED.set(client, model, refused);
}

/// Whether [`set_stage_refused`] recorded a refusal for `client` and `model`.
pub(crate) fn stage_refused(client: &Client, model: &'static Model) -> bool {
    STAGE_REFUSED.get(client, model)
}

/// Per connection, the models whose target has a `BEFORE INSERT` row
/// trigger: their multi-row `VALUES` statements on Citus are not rounded up
/// by repeats of the last row (see `call::short_attempt`).
static UNPADDED: Flags = Flags::new();

/// Records that `client`'s calls of `model` send `VALUES` statements of
/// their own length from now on.
pub(crate) fn set_unpadded(client: &Client, model: &'static Model) {
    UNPADDED.set(client, model, true);
}

/// Whether [`set_unpadded`] was recorded for `client` and `model`.
pub(crate) fn unpadded(client: &Client, model: &'static Model) -> bool {
    UNPADDED.get(client, model)
}

/// Per connection, the models whose statements' guards read the columns'
/// types from the catalog at the connection's last check (see
/// `KeyShape::catalog_guard`): their statements' guesses, built for a
/// table that needs no such guard, are not prepared with the check (one
/// would be made again after it, or, when the table's name finds another
/// type first, fail to prepare).
static CATALOG_GUARD: Flags = Flags::new();

/// Records what `client`'s check of `model` found (see [`CATALOG_GUARD`]).
pub(crate) fn set_catalog_guard(client: &Client, model: &'static Model, catalog: bool) {
    CATALOG_GUARD.set(client, model, catalog);
}

/// Whether [`set_catalog_guard`] recorded it for `client` and `model`.
pub(crate) fn catalog_guard(client: &Client, model: &'static Model) -> bool {
    CATALOG_GUARD.get(client, model)
}

/// Per connection, the models whose first call went without the schema
/// check (see `call::first`).
static FIRST_CALLS: Mutex<Option<std::collections::HashSet<(Identity, usize)>>> = Mutex::new(None);

/// Whether `client` may make a call of `model` without the schema check:
/// true once per connection and model (its later calls check, and keep
/// their statements prepared), never for a connection that cannot be
/// identified or has checked the model already.
pub(crate) fn first_call(client: &Client, model: &'static Model) -> bool {
    let key = key(client, model);
    if !key.0.known() || !dialect_unknown(client, model) {
        return false;
    }
    let mut guard = FIRST_CALLS.lock().unwrap_or_else(PoisonError::into_inner);
    let set = guard.get_or_insert_with(Default::default);
    if set.len() >= MAX_ENTRIES && !set.contains(&key) {
        set.clear();
    }
    set.insert(key)
}

/// At most this many scratch tables stay on one connection's session; see
/// [`scratch_used`].
pub(crate) const SCRATCH_TABLES: usize = 8;

/// Per connection, the models whose scratch table its session has, least
/// recently used first.
static SCRATCH: Mutex<Option<HashMap<Identity, Vec<&'static Model>>>> = Mutex::new(None);

/// Counts a use of `model`'s scratch table on `client`'s session (`created`:
/// the call just made it); returns a model whose scratch table to drop.
///
/// Every scratch table is `ON COMMIT DELETE ROWS`, and PostgreSQL truncates
/// each such table of the session at the commit of every transaction that
/// touched any temporary table: with many models on one connection, every
/// COPY call, and the application's own transactions on temporary tables,
/// would pay for all of them (see BENCHMARKS.md, "Many models on one
/// connection"). So a session keeps the scratch tables of its
/// [`SCRATCH_TABLES`] most recently used models, and a call that makes one
/// more drops the least recently used.
pub(crate) fn scratch_used(client: &Client, model: &'static Model, created: bool) -> Option<&'static Model> {
    let identity = Identity::of(client);
    if !identity.known() {
        return None;
    }
    let mut guard = SCRATCH.lock().unwrap_or_else(PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_ENTRIES && !map.contains_key(&identity) {
        map.clear();
    }
    let used = map.entry(identity).or_default();
    used.retain(|m| !std::ptr::eq(*m, model));
    used.push(model);
    if created && used.len() > SCRATCH_TABLES { Some(used.remove(0)) } else { None }
}
