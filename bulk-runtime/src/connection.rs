//! What a call runs on: a tokio-postgres [`Client`] or [`Transaction`],
//! and, behind cargo features, pooled connections.
//!
//! The trait is sealed in the way of tokio-postgres's `GenericClient`: what
//! the call needs of a connection lives in a private supertrait, so the
//! public trait has no methods and cannot be implemented outside the crate.
//!
//! Pools:
//! * `deadpool`: deadpool-postgres 0.14's [`Object`](deadpool_postgres::Object)
//!   (the call commits its own transaction) and its
//!   [`Transaction`](deadpool_postgres::Transaction) (the call runs in a
//!   savepoint).
//! * `bb8`: bb8 0.9's [`PooledConnection`](bb8::PooledConnection) of any
//!   manager whose connections are tokio-postgres `Client`s, such as
//!   bb8-postgres 0.9's `PostgresConnectionManager<Tls>` for every `Tls`. Its
//!   transactions are tokio-postgres `Transaction`s, already connections.

use tokio_postgres::{Client, Transaction};

pub(crate) use sealed::Sealed;

pub(crate) mod sealed {
    use tokio_postgres::Client;

    /// What a call needs of its connection.
    pub trait Sealed {
        /// The client the call runs on.
        fn client(&self) -> &Client;
        /// Whether the call runs inside a caller's transaction.
        fn nested(&self) -> bool;
    }
}

/// Where a bulk call runs: a [`Client`] (the call opens and commits its own
/// transaction) or a caller's [`Transaction`] (the call works inside a
/// savepoint, so a failed call leaves the caller's transaction usable, and the
/// caller's rollback undoes a successful one).
///
/// Pooled connections work the same way, as `&mut conn`, behind cargo
/// features: with `deadpool`, deadpool-postgres 0.14's `Object` (like a
/// `Client`) and its `Transaction`; with `bb8`, bb8 0.9's `PooledConnection`
/// of bb8-postgres 0.9's `PostgresConnectionManager<Tls>` (or of any manager
/// whose connections are `Client`s), like a `Client`.
pub trait Connection: sealed::Sealed + Send + Sync {}

impl Connection for Client {}
impl Connection for Transaction<'_> {}

impl Sealed for Client {
    fn client(&self) -> &Client {
        self
    }
    fn nested(&self) -> bool {
        false
    }
}

impl Sealed for Transaction<'_> {
    fn client(&self) -> &Client {
        Transaction::client(self)
    }
    fn nested(&self) -> bool {
        true
    }
}

/// A deadpool-postgres pooled object (feature `deadpool`): the call opens and
/// commits its own transaction, as on the `Client` the object holds.
///
/// ```
/// # use bulk_runtime::BulkCreateNew;
/// # #[derive(BulkCreateNew)]
/// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
/// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = ExampleDb::create("doc_deadpool").await?;
/// use bulk_runtime::tokio_postgres::NoTls;
/// use deadpool_postgres::{Manager, Pool};
///
/// let pool = Pool::builder(Manager::new(db.config(), NoTls)).max_size(4).build()?;
/// # pool.get().await?.batch_execute(&Retweet::model().migration_sql()).await?;
/// # let batch = vec![Retweet { tweet: 1, retweeter: 10, original_author: 100 }];
/// let mut conn = pool.get().await?;
/// let outcome = Retweet::bulk_create_new(&mut conn, &batch).await?;
/// # assert_eq!(outcome.inserted, 1);
///
/// // Inside a transaction of the pooled object: the call runs in a savepoint.
/// let mut tx = conn.transaction().await?;
/// let report = Retweet::bulk(&mut tx).returning_skipped().run(&batch).await?;
/// tx.commit().await?;
/// # assert_eq!(report.returned, [0]);
/// # drop(conn);
/// # pool.close();
/// # db.drop().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "deadpool")]
impl Connection for deadpool_postgres::Object {}

#[cfg(feature = "deadpool")]
impl Sealed for deadpool_postgres::Object {
    fn client(&self) -> &Client {
        // Object -> ClientWrapper -> Client.
        self
    }
    fn nested(&self) -> bool {
        false
    }
}

/// A transaction of a deadpool-postgres pooled object (feature `deadpool`):
/// the call runs in a savepoint, as in a tokio-postgres `Transaction`.
#[cfg(feature = "deadpool")]
impl Connection for deadpool_postgres::Transaction<'_> {}

#[cfg(feature = "deadpool")]
impl Sealed for deadpool_postgres::Transaction<'_> {
    fn client(&self) -> &Client {
        // deadpool_postgres::Transaction -> tokio_postgres::Transaction.
        tokio_postgres::Transaction::client(self)
    }
    fn nested(&self) -> bool {
        true
    }
}

/// A bb8 pooled connection (feature `bb8`), of bb8-postgres's
/// `PostgresConnectionManager<Tls>` or any manager whose connections are
/// tokio-postgres `Client`s: the call opens and commits its own transaction,
/// as on the `Client`. (`conn.transaction()` gives a tokio-postgres
/// `Transaction`, in which the call runs in a savepoint.)
///
/// ```
/// # use bulk_runtime::BulkCreateNew;
/// # #[derive(BulkCreateNew)]
/// # #[bulk(table = "retweeter", unique(tweet, retweeter))]
/// # pub struct Retweet { pub tweet: i64, pub retweeter: i64, pub original_author: i64 }
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/common/mod.rs"));
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = ExampleDb::create("doc_bb8").await?;
/// use bb8_postgres::PostgresConnectionManager;
/// use bulk_runtime::tokio_postgres::NoTls;
///
/// let pool = bb8::Pool::builder().max_size(4).build(PostgresConnectionManager::new(db.config(), NoTls)).await?;
/// # pool.get().await?.batch_execute(&Retweet::model().migration_sql()).await?;
/// # let batch = vec![Retweet { tweet: 1, retweeter: 10, original_author: 100 }];
/// let mut conn = pool.get().await?;
/// let outcome = Retweet::bulk_create_new(&mut conn, &batch).await?;
/// # assert_eq!(outcome.inserted, 1);
///
/// let mut tx = conn.transaction().await?;
/// let report = Retweet::bulk(&mut tx).returning_skipped().run(&batch).await?;
/// tx.commit().await?;
/// # assert_eq!(report.returned, [0]);
/// # drop(conn);
/// # drop(pool);
/// # db.drop().await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "bb8")]
impl<M: bb8::ManageConnection<Connection = Client>> Connection for bb8::PooledConnection<'_, M> {}

#[cfg(feature = "bb8")]
impl<M: bb8::ManageConnection<Connection = Client>> Sealed for bb8::PooledConnection<'_, M> {
    fn client(&self) -> &Client {
        // PooledConnection -> Client.
        self
    }
    fn nested(&self) -> bool {
        false
    }
}
