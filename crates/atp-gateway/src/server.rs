//! The gateway's accept loop: at most [`GatewayLimits::max_connections`] connections served
//! at once (further ones wait in the listen backlog), HTTP/1.1 with a header-read timeout that
//! is also the idle timeout of kept-alive connections, and a graceful stop.
//!
//! `axum::serve` sets none of these: it accepts every connection and waits for a request head
//! for ever, so a client opening connections and sending nothing holds them all.
//!
//! HTTP/1.1 only: an h2 connection multiplexes streams that outlive any head timeout and would
//! need an idle timeout of their own; deployments terminate TLS and HTTP/2 at the proxy in
//! front, which speaks HTTP/1.1 to the gateway.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::capacity::GatewayLimits;

/// How long a stopping gateway lets requests in flight finish: the longest route budget
/// ([`crate::REQUEST_TIMEOUT`]), so no request that could still succeed is cut short.
pub const DRAIN: Duration = crate::REQUEST_TIMEOUT;

/// The pause after a failed `accept` (out of file descriptors, say): long enough that a
/// gateway out of descriptors does not spin on the error, short enough to resume quickly once
/// connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits up to
/// [`DRAIN`] for the connections it has.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &GatewayLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A place first, then the connection: past the cap, connections wait in the backlog
        // and cost this process nothing.
        let place = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a head too slow or too large): nothing to
            // do but close, which dropping does.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = DRAIN.as_secs(),
            "connections still open after the drain; closing them"
        );
    }
    Ok(())
}
