//! Helpers shared by the workspace's end-to-end tests.
//!
//! - [`FaultProxy`]: a TCP proxy a test puts between a client and a server,
//!   to cut the link (open connections reset, new ones refused) and restore
//!   it, without touching the shared server.
//! - [`fixture`]: the stored-data fixture every release must read back.
//! - the `append-worker` binary: a separate process that appends messages to
//!   a session, for tests with several real writer processes.

pub mod fixture;

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
    let upstream = tokio::net::lookup_host(authority(url))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the database host does not resolve"))?;
    let proxy = FaultProxy::start(upstream).await?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let proxied = url.replacen(authority(url), &proxy.address().to_string(), 1);
    Ok((proxy, format!("{proxied}{separator}acquire_timeout_ms=300")))
}

/// A TCP proxy that can fail on demand.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    upstream: SocketAddr,
    /// Bumped by every cut: connection tasks of an older generation reset.
    generation: watch::Sender<u64>,
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
                tokio::spawn(forward(client, proxy.upstream, generation));
            }
        });
        *self.listener.lock().unwrap() = Some(task);
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut generation: watch::Receiver<u64>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    generation.mark_unchanged();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = generation.changed() => {
            reset(client);
            reset(server);
        }
    }
}

/// Closes with RST instead of FIN, as a crashed peer or a dropped link does.
#[allow(deprecated)] // set_linger is the direct way to ask for an RST here.
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
