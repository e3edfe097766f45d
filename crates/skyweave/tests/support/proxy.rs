//! A TCP proxy on loopback that misbehaves on cue: tests put it between a
//! client and a real server to break connections at chosen moments.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the proxy does with bytes the client sent.
pub enum Relay {
    /// Pass them on.
    Forward,
    /// Pass on only the first `n` of them, then close the connection.
    Cut(usize),
    /// Pass them on, drop whatever the server answers, and close the
    /// connection after `wait` (the server acts on a request whose answer
    /// never arrives).
    Swallow { wait: Duration },
}

/// Starts a proxy to `127.0.0.1:upstream` and returns its port. For each
/// read from a client, `decide(bytes, sent)` chooses; `sent` counts the
/// bytes of that connection passed on so far.
pub async fn start<F>(upstream: u16, decide: F) -> u16
where
    F: Fn(&[u8], usize) -> Relay + Send + Sync + 'static,
{
    let decide = Arc::new(decide);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let decide = decide.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let swallowing = Arc::new(AtomicBool::new(false));
                let swallowing_up = swallowing.clone();
                let up = async move {
                    let (mut buffer, mut sent) = (vec![0u8; 65536], 0);
                    while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                        let take = match decide(&buffer[..n], sent) {
                            Relay::Forward => n,
                            Relay::Cut(limit) => limit.min(n),
                            Relay::Swallow { wait } => {
                                swallowing_up.store(true, Ordering::SeqCst);
                                let _ = server_write.write_all(&buffer[..n]).await;
                                tokio::time::sleep(wait).await;
                                return;
                            }
                        };
                        if server_write.write_all(&buffer[..take]).await.is_err() || take < n {
                            return;
                        }
                        sent += take;
                    }
                };
                let down = async move {
                    let mut buffer = vec![0u8; 65536];
                    while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
                        if swallowing.load(Ordering::SeqCst) {
                            continue;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                // Whichever side ends first ends the connection.
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
    port
}

/// A proxy that closes each connection once its client has sent more than
/// `limit` bytes (the bytes up to the limit reach the server).
pub async fn cutting(upstream: u16, limit: usize) -> u16 {
    start(upstream, move |bytes, sent| {
        if sent + bytes.len() > limit {
            Relay::Cut(limit - sent)
        } else {
            Relay::Forward
        }
    })
    .await
}
