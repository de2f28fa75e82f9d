// Scaffolding shared by the examples and the crate's doctests (which
// `include!` this file): a connection to the test server, in a schema of its
// own that is dropped at the end, so that runs never see each other's tables.
//
// The server is `BULK_TEST_DATABASE_URL` (a libpq connection string or a
// `postgresql://` URL), by default `host=127.0.0.1 user=postgres`. In your
// own program, connect with `tokio_postgres::connect(url, NoTls)` as usual.

/// The server's connection string: `BULK_TEST_DATABASE_URL`, or the local
/// test server.
#[allow(dead_code)]
pub fn database_url() -> String {
    std::env::var("BULK_TEST_DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres".to_owned())
}

/// A schema of its own on the test server, dropped by [`ExampleDb::drop`].
#[allow(dead_code)]
pub struct ExampleDb {
    admin: bulk_runtime::tokio_postgres::Client,
    schema: String,
}

#[allow(dead_code)]
impl ExampleDb {
    /// Creates a new, uniquely named schema (`bulk_example_{label}_...`).
    pub async fn create(label: &str) -> Result<ExampleDb, bulk_runtime::tokio_postgres::Error> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let schema = format!("bulk_example_{label}_{}_{nanos}", std::process::id());
        let admin = Self::spawn(Self::base_config().connect(bulk_runtime::tokio_postgres::NoTls).await?);
        admin.batch_execute(&format!("CREATE SCHEMA {}", bulk_runtime::quote_ident(&schema))).await?;
        Ok(ExampleDb { admin, schema })
    }

    /// The connection settings of the test server, with every session's
    /// `search_path` set to the schema (for a pool).
    pub fn config(&self) -> bulk_runtime::tokio_postgres::Config {
        let mut config = Self::base_config();
        // The schema name has only letters, digits and underscores.
        config.options(format!("-c search_path={}", self.schema));
        config
    }

    /// A new connection whose `search_path` is the schema.
    pub async fn connect(&self) -> Result<bulk_runtime::tokio_postgres::Client, bulk_runtime::tokio_postgres::Error> {
        Ok(Self::spawn(self.config().connect(bulk_runtime::tokio_postgres::NoTls).await?))
    }

    /// Points `client`'s `search_path` at the schema.
    pub async fn enter(
        &self,
        client: &bulk_runtime::tokio_postgres::Client,
    ) -> Result<(), bulk_runtime::tokio_postgres::Error> {
        client.batch_execute(&format!("SET search_path TO {}", bulk_runtime::quote_ident(&self.schema))).await
    }

    /// Drops the schema and everything in it.
    pub async fn drop(&self) -> Result<(), bulk_runtime::tokio_postgres::Error> {
        let sql = format!("DROP SCHEMA {} CASCADE", bulk_runtime::quote_ident(&self.schema));
        self.admin.batch_execute(&sql).await
    }

    fn base_config() -> bulk_runtime::tokio_postgres::Config {
        let url = database_url();
        url.parse().unwrap_or_else(|e| panic!("BULK_TEST_DATABASE_URL {url:?}: {e}"))
    }

    fn spawn(
        (client, connection): (
            bulk_runtime::tokio_postgres::Client,
            bulk_runtime::tokio_postgres::Connection<
                bulk_runtime::tokio_postgres::Socket,
                bulk_runtime::tokio_postgres::tls::NoTlsStream,
            >,
        ),
    ) -> bulk_runtime::tokio_postgres::Client {
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("connection error: {e}");
            }
        });
        client
    }
}
