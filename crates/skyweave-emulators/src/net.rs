//! The network scaffolding the OpenAI/Azure, Bedrock and Google emulators
//! share: the accept loop, per-connection serving with handler-driven
//! control (cut / reset), and the handle that keeps a server running.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::HeaderMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tower_service::Service;

/// A running accept loop. Dropping it stops accepting and closes every
/// connection.
pub(crate) struct Server {
    /// Dropping the sender tells the accept loop and every connection to
    /// stop.
    _shutdown: watch::Sender<()>,
    accept_task: JoinHandle<()>,
    accepted: Arc<AtomicU64>,
}

impl Server {
    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Serve `router` on `listener`. Every request carries a [`ConnHandle`] in
/// its extensions; `decorate` adds headers to every response.
pub(crate) fn serve<F>(listener: TcpListener, router: Router, decorate: F) -> Server
where
    F: Fn(&mut HeaderMap) + Clone + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(());
    let accepted = Arc::new(AtomicU64::new(0));
    let accept_task =
        tokio::spawn(accept_loop(listener, router, decorate, rx, Arc::clone(&accepted)));
    Server { _shutdown: tx, accept_task, accepted }
}

/// `http://ADDR` (no trailing slash).
pub(crate) fn base_url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

async fn accept_loop<F>(
    listener: TcpListener,
    router: Router,
    decorate: F,
    mut shutdown: watch::Receiver<()>,
    accepted: Arc<AtomicU64>,
) where
    F: Fn(&mut HeaderMap) + Clone + Send + Sync + 'static,
{
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of descriptors or an aborted handshake: back off a
                    // little rather than spin.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            Arc::clone(&builder),
            router.clone(),
            decorate.clone(),
            shutdown.clone(),
        ));
    }
}

/// Lets a handler end its connection: a clean close mid-body (cut) or an
/// abortive one (reset, RST).
#[derive(Clone)]
pub(crate) struct ConnHandle(Arc<ConnCtl>);

#[derive(Default)]
struct ConnCtl {
    kill: Notify,
    reset: AtomicBool,
}

impl ConnHandle {
    /// Close the connection (FIN) as soon as possible; whatever the handler
    /// already handed to hyper is flushed first.
    pub(crate) fn cut(&self) {
        self.0.kill.notify_one();
    }

    /// Abort the connection: the peer sees a reset.
    pub(crate) fn reset(&self) {
        self.0.reset.store(true, Ordering::SeqCst);
        self.0.kill.notify_one();
    }
}

async fn serve_connection<F>(
    stream: TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    decorate: F,
    mut shutdown: watch::Receiver<()>,
) where
    F: Fn(&mut HeaderMap) + Clone + Send + Sync + 'static,
{
    let ctl = Arc::new(ConnCtl::default());
    // A second descriptor for the same socket, so that SO_LINGER can be set
    // after hyper owns the stream.
    let dup = socket2::SockRef::from(&stream).try_clone().ok();
    let handle = ConnHandle(Arc::clone(&ctl));
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(handle.clone());
        let fut = router.clone().call(req);
        let decorate = decorate.clone();
        async move {
            let mut resp = match fut.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            decorate(resp.headers_mut());
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = ctl.kill.notified() => {
            if ctl.reset.load(Ordering::SeqCst) {
                if let Some(sock) = &dup {
                    let _ = sock.set_linger(Some(Duration::ZERO));
                }
            }
        }
        _ = shutdown.changed() => {}
    }
    // `conn` (and with it the stream) is dropped by now; dropping `dup`
    // closes the socket for good.
    drop(dup);
}
