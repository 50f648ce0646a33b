//! A TCP delay proxy on loopback (these kernels have no netem): every chunk read from one side
//! is written to the other `delay` later, in order, in both directions, like a link with that
//! one-way delay and no bandwidth limit (chunks in flight overlap, so pipelined protocols keep
//! their throughput). Counts the bytes it carries. Lives on the caller's tokio runtime and stops
//! with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running proxy.
pub struct DelayProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Binds 127.0.0.1:0 and forwards every connection to `upstream` with `delay` each way.
    /// `upstream` may be set later through the returned setter when the address is not known
    /// yet (the f7tfs server must be told the proxy's address first).
    pub async fn bind(delay: Duration) -> std::io::Result<(Self, mpsc::Sender<SocketAddr>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = mpsc::channel::<SocketAddr>(1);
        let counter = bytes.clone();
        let task = tokio::spawn(async move {
            let Some(upstream) = rx.recv().await else {
                return;
            };
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        pipe_both(client, server, delay, counter).await;
                    }
                });
            }
        });
        Ok((Self { addr, bytes, task }, tx))
    }

    /// Bytes carried so far (both directions).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe_both(a: TcpStream, b: TcpStream, delay: Duration, counter: Arc<AtomicU64>) {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let up = tokio::spawn(pipe(ar, bw, delay, counter.clone()));
    let down = tokio::spawn(pipe(br, aw, delay, counter));
    let _ = tokio::join!(up, down);
}

/// One direction: a reader stamps each chunk with its due time; a writer sends it then.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    counter: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
