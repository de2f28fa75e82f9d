//! Prepared statements of the [`Bulk`](crate::Bulk) call's variants on the
//! short-batch path (returning, upsert), kept per client, model and variant.
//!
//! The policy is the one of [`cache`](crate::cache) for the plain call's
//! statement: an entry means the client has checked the model; a statement
//! the server forgot (SQLSTATE 26000) or that clashes with a name a pooler's
//! backend holds (42P05) is evicted, and after two such evictions the client
//! stops preparing that variant (a pooler in transaction mode) and runs it
//! unnamed. The variants are kept apart from the plain statement so that the
//! plain call's path is untouched by them.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio_postgres::{Client, Statement};

use crate::model::Model;

/// Beyond this many entries the map is cleared (entries of dropped clients
/// would otherwise accumulate in a long-lived process).
const MAX_ENTRIES: usize = 4096;

/// Stale statements after which a client stops preparing a variant.
const STALE_LIMIT: u8 = 2;

type Key = (usize, usize, String);

#[derive(Default)]
struct Entry {
    statement: Option<Statement>,
    stale: u8,
}

static STATEMENTS: Mutex<Option<HashMap<Key, Entry>>> = Mutex::new(None);

fn key(client: &Client, model: &'static Model, label: &str) -> Key {
    (std::ptr::from_ref(client) as usize, std::ptr::from_ref(model) as usize, label.to_owned())
}

fn with<R>(f: impl FnOnce(&mut HashMap<Key, Entry>) -> R) -> R {
    let mut guard = STATEMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(HashMap::new))
}

/// The prepared statement `label` of `model` on `client`, if it has one.
pub(crate) fn get(client: &Client, model: &'static Model, label: &str) -> Option<Statement> {
    with(|map| map.get(&key(client, model, label)).and_then(|e| e.statement.clone()))
}

/// Whether `client` prepares the statement `label` of `model`.
pub(crate) fn prepares(client: &Client, model: &'static Model, label: &str) -> bool {
    with(|map| map.get(&key(client, model, label)).is_none_or(|e| e.stale < STALE_LIMIT))
}

/// Keeps a statement that `client` prepared.
pub(crate) fn put(client: &Client, model: &'static Model, label: String, statement: Statement) {
    with(|map| {
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.entry(key(client, model, &label)).or_default().statement = Some(statement);
    });
}

/// Forgets a statement the server no longer knows, and counts it as stale.
pub(crate) fn evict(client: &Client, model: &'static Model, label: &str) {
    with(|map| {
        if let Some(entry) = map.get_mut(&key(client, model, label)) {
            entry.statement = None;
            entry.stale = entry.stale.saturating_add(1);
        }
    });
}
