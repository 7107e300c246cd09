//! Helpers shared by the workspace's end-to-end tests.
//!
//! - [`FaultProxy`]: a TCP proxy a test puts between a client and a server,
//!   to cut the link (open connections reset, new ones refused) or stall it
//!   (connections stay open, nothing gets through), and restore it, without
//!   touching the shared server.
//! - [`fixture`]: the stored-data fixture every release must read back.
//! - [`mock_llm`]: a real OpenAI-compatible server on 127.0.0.1, scripted
//!   to misbehave (the `mock-llm` binary serves it alone).
//! - the `append-worker` binary: a separate process that appends messages to
//!   a session, for tests with several real writer processes.

pub mod fixture;
pub mod mock_llm;
pub mod routing;

/// `PRAGMA integrity_check` of the SQLite database at `path`: `"ok"` when
/// it is sound (what the crash tests assert after their SIGKILLs).
pub fn sqlite_integrity(path: impl AsRef<std::path::Path>) -> String {
    let conn = rusqlite::Connection::open(path.as_ref()).expect("open the database");
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check")
}

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `host:port` of a database URL.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// Starts a [`FaultProxy`] in front of the server of the PostgreSQL `url`
/// and returns it with `url` rewritten to go through it (and a 300 ms
/// acquire timeout, so an outage shows quickly).
pub async fn through_proxy(url: &str) -> std::io::Result<(Arc<FaultProxy>, String)> {
    through_proxy_with(url, Duration::from_millis(300)).await
}

/// [`through_proxy`] with another acquire timeout.
pub async fn through_proxy_with(
    url: &str,
    acquire_timeout: Duration,
) -> std::io::Result<(Arc<FaultProxy>, String)> {
    let upstream = tokio::net::lookup_host(authority(url))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the database host does not resolve"))?;
    let proxy = FaultProxy::start(upstream).await?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let proxied = url.replacen(authority(url), &proxy.address().to_string(), 1);
    Ok((
        proxy,
        format!(
            "{proxied}{separator}acquire_timeout_ms={}",
            acquire_timeout.as_millis()
        ),
    ))
}

/// A TCP proxy that can fail on demand.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    upstream: SocketAddr,
    /// Bumped by every cut: connection tasks of an older generation reset.
    generation: watch::Sender<u64>,
    /// While set, nothing is forwarded either way and new connections wait.
    stalled: watch::Sender<bool>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (generation, _) = watch::channel(0);
        let proxy = Arc::new(Self {
            address,
            upstream,
            generation,
            stalled: watch::Sender::new(false),
            listener: Mutex::new(None),
        });
        proxy.serve(listener);
        Ok(proxy)
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Cuts the link: every open connection is reset (RST) on both sides and
    /// the port stops listening, so new connections are refused.
    pub fn cut(&self) {
        if let Some(listener) = self.listener.lock().unwrap().take() {
            listener.abort();
        }
        self.generation.send_modify(|generation| *generation += 1);
    }

    /// Stalls the link: connections stay open and new ones are accepted,
    /// but no byte goes through either way until [`resume`](Self::resume),
    /// as with a peer that hangs or a network that drops packets.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets bytes through again after [`stall`](Self::stall).
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Listens again on the same port.
    pub async fn restore(self: &Arc<Self>) -> std::io::Result<()> {
        // The aborted accept loop releases the port asynchronously; retry
        // briefly until the bind succeeds.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 100 => {
                    attempts += 1;
                    let _ = error;
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(error) => return Err(error),
            }
        };
        self.serve(listener);
        Ok(())
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let proxy = Arc::clone(self);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let generation = proxy.generation.subscribe();
                let stalled = proxy.stalled.subscribe();
                tokio::spawn(forward(client, proxy.upstream, generation, stalled));
            }
        });
        *self.listener.lock().unwrap() = Some(task);
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut generation: watch::Receiver<u64>,
    stalled: watch::Receiver<bool>,
) {
    generation.mark_unchanged();
    let mut waiting = stalled.clone();
    tokio::select! {
        waited = waiting.wait_for(|stalled| !*stalled) => if waited.is_err() {
            return;
        },
        _ = generation.changed() => {
            reset(client);
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            () = pump(client_read, server_write, stalled.clone()) => false,
            () = pump(server_read, client_write, stalled) => false,
            _ = generation.changed() => true,
        }
    };
    if cut {
        reset(client);
        reset(server);
    }
}

/// Copies `from` to `to`, holding what it read while the link is stalled.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        if stalled.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Closes with RST instead of FIN, as a crashed peer or a dropped link does.
#[allow(deprecated)] // set_linger is the direct way to ask for an RST here.
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
