//! Prepared statements of the short-batch path, kept per client, model and
//! statement kind (the plain call's insert, and the [`Bulk`](crate::Bulk)
//! variants: returning, upsert).
//!
//! tokio-postgres has no statement cache and a `Client` carries no user data,
//! so statements are kept in a process-wide map keyed by the client's address
//! and the model. An entry means the client has checked the model. A stale
//! entry (the client was dropped and another took its address, or
//! `DISCARD ALL` / `DEALLOCATE ALL` ran) fails with SQLSTATE 26000
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

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::{Client, Statement};

use crate::model::Model;

/// The label of the plain call's short-batch insert, plain form (the first attempt).
pub(crate) const PLAIN: &str = "create_new";

/// The label of the plain call's short-batch insert, `ON CONFLICT` form.
pub(crate) const PLAIN_ON_CONFLICT: &str = "create_new on conflict";

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

/// Per (client address, model address), the statements by label.
type Statements = HashMap<(usize, usize), HashMap<String, Entry>>;

static STATEMENTS: Mutex<Option<Statements>> = Mutex::new(None);

fn key(client: &Client, model: &'static Model) -> (usize, usize) {
    (std::ptr::from_ref(client) as usize, std::ptr::from_ref(model) as usize)
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
    /// Its statement went stale twice (a pooler in transaction mode): run
    /// it unnamed.
    Unnamed,
}

/// What `client` has of the statement `label` of `model` (one lock, one lookup).
pub(crate) fn lookup(client: &Client, model: &'static Model, label: &str) -> Lookup {
    with(|map| match map.get(&key(client, model)).and_then(|m| m.get(label)) {
        Some(Entry { statement: Some(statement), .. }) => Lookup::Prepared(statement.clone()),
        Some(entry) if entry.stale >= STALE_LIMIT => Lookup::Unnamed,
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
