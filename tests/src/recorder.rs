//! A loopback proxy in front of the test server that records the SQL text
//! of every statement clients send (simple `Query` and extended-protocol
//! `Parse` messages), so tests can inspect exactly what the library sent.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::Client;

/// The proxy; it runs until the test's runtime ends.
pub struct SqlRecorder {
    port: u16,
    statements: Arc<Mutex<Vec<String>>>,
}

impl SqlRecorder {
    /// Starts a proxy on a free loopback port, in front of the test server.
    pub async fn start() -> SqlRecorder {
        SqlRecorder::start_in_front_of(crate::server_address()).await
    }

    /// Starts a proxy on a free loopback port, in front of the server at
    /// `server` (host, port).
    pub async fn start_in_front_of(server: (String, u16)) -> SqlRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        let statements = Arc::new(Mutex::new(Vec::new()));
        let log = statements.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (log, server) = (log.clone(), server.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect((server.0.as_str(), server.1)).await else { return };
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut client_read, client_write) = client.into_split();
                    let (server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let (mut from, mut to) = (server_read, client_write);
                        let _ = tokio::io::copy(&mut from, &mut to).await;
                    });
                    let _ = forward_client(&mut client_read, &mut server_write, &log).await;
                });
            }
        });
        SqlRecorder { port, statements }
    }

    /// A new connection through the proxy with `search_path` set to `schema`.
    pub async fn connect(&self, schema: &str) -> Client {
        let client = crate::connect_at("127.0.0.1", self.port).await;
        client.batch_execute(&format!("SET search_path = {}", bulk_runtime::quote_ident(schema))).await.unwrap();
        client
    }

    /// The proxy's loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every statement text recorded so far, in order.
    pub fn statements(&self) -> Vec<String> {
        self.statements.lock().unwrap().clone()
    }
}

/// Copies the client's messages to the server, recording statement texts.
async fn forward_client(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    // The startup message: a length, then the body (no type byte).
    let len = from.read_i32().await?;
    let mut body = vec![0; len as usize - 4];
    from.read_exact(&mut body).await?;
    let mut message = len.to_be_bytes().to_vec();
    message.extend_from_slice(&body);
    to.write_all(&message).await?;
    loop {
        let kind = from.read_u8().await?;
        let len = from.read_i32().await?;
        let mut body = vec![0; len as usize - 4];
        from.read_exact(&mut body).await?;
        let text = match kind {
            b'Q' => body.split(|&b| b == 0).next(),
            // Parse: statement name, NUL, query, NUL, parameter types.
            b'P' => body.split(|&b| b == 0).nth(1),
            _ => None,
        };
        if let Some(text) = text {
            log.lock().unwrap().push(String::from_utf8_lossy(text).into_owned());
        }
        let mut message = Vec::with_capacity(body.len() + 5);
        message.push(kind);
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(&body);
        to.write_all(&message).await?;
    }
}

/// The parts of SQL text outside quoted identifiers and string literals
/// (each replaced by an empty pair of quotes), and the identifiers found in
/// it, unescaped.
pub fn lex_sql(sql: &str) -> (String, Vec<String>) {
    let mut outside = String::new();
    let mut identifiers = Vec::new();
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' => {
                let mut ident = String::new();
                i += 1;
                while i < chars.len() {
                    if chars[i] == '"' {
                        if chars.get(i + 1) == Some(&'"') {
                            ident.push('"');
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    ident.push(chars[i]);
                    i += 1;
                }
                i += 1;
                identifiers.push(ident);
                outside.push_str(" \"\" ");
            }
            '\'' => {
                i += 1;
                while i < chars.len() {
                    if chars[i] == '\'' {
                        if chars.get(i + 1) == Some(&'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                outside.push_str(" '' ");
            }
            c => {
                outside.push(c);
                i += 1;
            }
        }
    }
    (outside, identifiers)
}
