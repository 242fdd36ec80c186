//! The selves HTTPS server: TLS (rustls, the node's own certificate) in
//! front of the native sync API.
//!
//! [`run`] takes its listener and a shutdown future, so tests and the demo
//! bind `127.0.0.1:0` and stop it when they like. Every connection has a
//! TLS handshake deadline, a header-read deadline (which also closes idle
//! keep-alive connections), a deadline between body bytes and one for the
//! whole request (no slowloris); connections are capped per address, with
//! room kept for the node's peers (`conns.rs`); a refused token closes its
//! connection.
//!
//! - [`api`]: routes, authentication, rate limits, handlers.
//! - [`error`]: the one mapping from errors to HTTP.
//! - [`indexer`]: catches the search index up after pushes.
//! - [`ChangeFeed`]: the store's log version, watched (`/v1/changes`).

pub mod api;
mod changes;
mod conns;
pub mod error;
mod indexer;
mod memex;
mod shares;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use selves_store::Store;
use selves_wire::native::Limits;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

pub use api::{MemexRates, RateLimit};
pub use changes::{CHANGE_POLL, ChangeFeed};
pub use error::ApiError;

/// What a server accepts unless configured otherwise.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_body_bytes: 8 << 20,
    max_push_records: 5000,
    max_pull_records: 5000,
    max_pull_bytes: 4 << 20,
};

const fn nonzero(n: u32) -> std::num::NonZeroU32 {
    match std::num::NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a rate must be at least 1"),
    }
}

/// Native endpoints: requests per minute per token, and burst.
pub const DEFAULT_RATE: RateLimit = RateLimit {
    per_minute: nonzero(1200),
    burst: nonzero(300),
};

/// memex endpoints: the spec's 10 pushes and 60 pulls a minute per token.
/// Bursts are generous because memex clients do not wait on 429: they
/// abort the run and try again at their next schedule.
pub const DEFAULT_MEMEX_RATES: MemexRates = MemexRates {
    pushes: RateLimit {
        per_minute: nonzero(selves_wire::memex::PUSHES_PER_MINUTE),
        burst: nonzero(60),
    },
    pulls: RateLimit {
        per_minute: nonzero(selves_wire::memex::PULLS_PER_MINUTE),
        burst: nonzero(120),
    },
};

pub struct ServerConfig {
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: Limits,
    pub rate: RateLimit,
    pub memex: MemexRates,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to finish the TLS handshake (an address
    /// that has not proved a token lately gets half of it).
    pub handshake_timeout: Duration,
    /// How long a request body may pause between two reads.
    pub body_timeout: Duration,
    /// How long a whole request may take (408 past it); above the 25 s of
    /// `/v1/changes`.
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// e.g. "selves 0.1.0".
    pub software: String,
    /// What `/v1/changes` waits on (`None`: the server starts its own).
    pub changes: Option<ChangeFeed>,
}

/// A rustls server configuration for the node's certificate (DER) and key.
pub fn tls_config(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves until `shutdown` resolves, then lets requests in flight finish
/// (for up to five seconds) and stops the indexer.
pub async fn run(
    listener: TcpListener,
    store: Arc<Store>,
    engine: Arc<selves_share::Engine>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let kick = Arc::new(Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(api::App::new(
        store.clone(),
        engine,
        &config,
        kick.clone(),
        config
            .changes
            .clone()
            .unwrap_or_else(|| ChangeFeed::start(store.clone(), CHANGE_POLL)),
        stop_rx.clone(),
    ));
    // Decompression wraps the router, so body limits count decompressed
    // bytes (a small gzip bomb cannot get past them).
    let conns = app.conns.clone();
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .layer(RequestBodyTimeoutLayer::new(config.body_timeout))
        .layer(RequestDecompressionLayer::new())
        .service(api::router(app));
    let acceptor = TlsAcceptor::from(config.tls);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);

    kick.notify_one();
    let indexer = tokio::spawn(indexer::run(store, kick, stop_rx));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = conns.admit(addr.ip()) else {
                    tracing::debug!(%addr, "too many connections; refusing one");
                    continue;
                };
                let acceptor = acceptor.clone();
                let service = service.clone();
                let http = http.clone();
                let watcher = graceful.watcher();
                let handshake_timeout = if slot.stranger() {
                    config.handshake_timeout / 2
                } else {
                    config.handshake_timeout
                };
                tokio::spawn(async move {
                    let _slot = slot;
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    // Handlers see where a request came from (token use, refused claims).
                    let service = tower::ServiceExt::map_request(service, move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(api::RemoteAddr(addr));
                        req
                    });
                    let conn = http.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%addr, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after 5 s; stopping anyway");
    }
    let _ = indexer.await;
    Ok(())
}
