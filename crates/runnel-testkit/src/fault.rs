//! Fault injection for tests against real servers.
//!
//! [`TcpProxy`] sits between a client and a real server on loopback. A test points the
//! client at the proxy, then [`cut`](TcpProxy::cut)s it to simulate an outage (every open
//! connection is dropped and new ones are closed as soon as they are accepted) and
//! [`restore`](TcpProxy::restore)s it to end the outage. The server itself keeps running,
//! so other tests sharing it are not disturbed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use runnel_testkit::fault::TcpProxy;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // A tiny echo server stands in for the real one.
//! let server = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server_addr = server.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut socket, _)) = server.accept().await {
//!         tokio::spawn(async move {
//!             let (mut r, mut w) = socket.split();
//!             let _ = tokio::io::copy(&mut r, &mut w).await;
//!         });
//!     }
//! });
//!
//! let proxy = TcpProxy::start(server_addr).await?;
//! let mut client = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
//! client.write_all(b"ping").await?;
//! let mut reply = [0u8; 4];
//! client.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"ping");
//!
//! proxy.cut(); // the outage: the open connection is closed
//! let mut rest = Vec::new();
//! assert_eq!(client.read_to_end(&mut rest).await.unwrap_or(0), 0);
//! proxy.restore(); // new connections work again
//! let mut again = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
//! again.write_all(b"pong").await?;
//! again.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"pong");
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A TCP forwarder on `127.0.0.1` whose connections a test can cut and restore.
///
/// Dropping the proxy stops it and closes every connection through it.
pub struct TcpProxy {
    local_addr: SocketAddr,
    state: Arc<ProxyState>,
    accept_task: JoinHandle<()>,
}

struct ProxyState {
    /// `(up, generation)`: connections end when the generation moves on.
    control: watch::Sender<(bool, u64)>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl TcpProxy {
    /// Starts a proxy on an ephemeral loopback port forwarding to `target`.
    pub async fn start(target: impl ToSocketAddrs) -> io::Result<TcpProxy> {
        let target = tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "target did not resolve"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let (control, _) = watch::channel((true, 0u64));
        let state = Arc::new(ProxyState {
            control,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, target, state.clone()));
        Ok(TcpProxy {
            local_addr,
            state,
            accept_task,
        })
    }

    /// The address clients connect to instead of the server's.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts an outage: drops every open connection and closes new ones on accept.
    pub fn cut(&self) {
        self.state.control.send_modify(|(up, generation)| {
            *up = false;
            *generation += 1;
        });
    }

    /// Ends an outage: new connections are forwarded again.
    pub fn restore(&self) {
        self.state.control.send_modify(|(up, _)| *up = true);
    }

    /// Whether the proxy currently forwards connections.
    pub fn is_up(&self) -> bool {
        self.state.control.borrow().0
    }

    /// Connections forwarded so far.
    pub fn connections_accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed on accept because the proxy was cut.
    pub fn connections_refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Ends every forwarding task.
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: Arc<ProxyState>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let (up, generation) = *state.control.borrow();
        if !up {
            state.refused.fetch_add(1, Ordering::Relaxed);
            drop(inbound);
            continue;
        }
        state.accepted.fetch_add(1, Ordering::Relaxed);
        let mut control = state.control.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let mut inbound = inbound;
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = control.wait_for(|(_, g)| *g != generation) => {}
            }
            // Both sockets drop here: the client sees its connection closed.
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn cut_closes_open_connections_and_refuses_new_ones_until_restored() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
        open.write_all(b"a").await.unwrap();
        let mut byte = [0u8; 1];
        open.read_exact(&mut byte).await.unwrap();

        proxy.cut();
        assert!(!proxy.is_up());
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), open.read(&mut byte))
            .await
            .expect("the cut connection closes promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "a cut connection reads end-of-file");

        let mut refused = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let _ = refused.write_all(b"b").await;
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), refused.read(&mut byte))
            .await
            .expect("a refused connection closes promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "a connection made during the outage is closed");
        assert_eq!(proxy.connections_refused(), 1);

        proxy.restore();
        let mut again = TcpStream::connect(proxy.local_addr()).await.unwrap();
        again.write_all(b"c").await.unwrap();
        again.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"c");
        assert_eq!(proxy.connections_accepted(), 2);
    }
}
