//! One client connection of the CA service: the per-source and total caps, the TLS
//! handshake deadline, idle and keep-alive deadlines, and the gRPC routing of a request.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::ca::proto::{
    IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH,
};
use crate::identity::SpiffeId;
use crate::tls::peer_spiffe_id;

use super::{Shared, GOAWAY_GRACE, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION};

/// One open connection of a source address, counted against `max_connections_per_ip`
/// until dropped.
pub(super) struct SourceSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl SourceSlot {
    pub(super) fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<SourceSlot> {
        // One address, however the socket reports it (IPv4 on a dual-stack listener).
        let ip = ip.to_canonical();
        let mut sources = shared.sources.lock().unwrap_or_else(|e| e.into_inner());
        let open = sources.entry(ip).or_default();
        if *open >= shared.config.max_connections_per_ip {
            return None;
        }
        *open += 1;
        Some(SourceSlot {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut sources = self
            .shared
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(open) = sources.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended: the idle clock.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request in flight until the returned guard drops (also when it is cancelled).
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// When the connection becomes idle-expired, or `None` while a request is in flight.
    pub(super) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.last.lock().unwrap_or_else(|e| e.into_inner()) + idle)
    }
}

pub(super) struct InFlight(pub(super) Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    tls: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
) {
    let config = &shared.config;
    let stream = match tokio::time::timeout(config.handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "CA service TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.stats.time_out("handshake");
            tracing::debug!(%remote, "CA service TLS handshake timed out");
            return;
        }
    };
    // The verifier already checked the chain and the SVID rules.
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(peer_spiffe_id);
    let activity = Activity::new();
    let service_activity = activity.clone();
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = service_shared.clone();
        let peer = peer.clone();
        let in_flight = service_activity.start();
        async move {
            let _in_flight = in_flight;
            let deadline = shared.config.request_timeout;
            let response = match tokio::time::timeout(
                deadline,
                route(shared.clone(), peer, remote, req),
            )
            .await
            {
                Ok(response) => response,
                Err(_) => {
                    // A client trickling its request body holds a stream; the deadline
                    // bounds it like a gRPC deadline would.
                    shared.stats.time_out("request");
                    tracing::info!(target: "outrider::ca::audit", decision = "denied", reason = "request_timeout", %remote, "the request did not arrive within {deadline:?}");
                    Status::deadline_exceeded(format!(
                        "the request did not arrive within {deadline:?}"
                    ))
                    .into_http()
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(connection);
    // hyper has no idle timeout for HTTP/2 servers: watch the requests in flight and close
    // a connection that has had none for `idle_timeout` (a client that never sends the
    // HTTP/2 preface is idle from the start).
    let result = loop {
        let wake = activity
            .idle_deadline(config.idle_timeout)
            .unwrap_or_else(|| Instant::now() + config.idle_timeout);
        tokio::select! {
            result = connection.as_mut() => break result,
            () = tokio::time::sleep_until(wake.into()) => {
                if activity.idle_deadline(config.idle_timeout).is_some_and(|at| at <= Instant::now()) {
                    shared.stats.time_out("idle");
                    tracing::debug!(%remote, "CA service connection idle; closing");
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOAWAY_GRACE, connection.as_mut()).await;
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "CA service connection ended with an error");
    }
}

pub(super) async fn route(
    shared: Arc<Shared>,
    peer: Option<SpiffeId>,
    remote: SocketAddr,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    if req.uri().path() != CREATE_CERTIFICATE_PATH {
        return Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http();
    }
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
    let mut grpc = tonic::server::Grpc::new(codec).max_decoding_message_size(MAX_REQUEST_BYTES);
    let handler_shared = shared.clone();
    let service = tower::service_fn(move |request: tonic::Request<IstioCertificateRequest>| {
        let shared = handler_shared.clone();
        let peer = peer.clone();
        async move { shared.create_certificate(peer, remote, request) }
    });
    let mut response = grpc.unary(service, req).await;
    // tonic refuses an oversized message with OUT_OF_RANGE before our handler runs; gRPC's
    // convention for "message larger than the limit" is RESOURCE_EXHAUSTED.
    if response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v == "11")
    {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
        shared.stats.deny("too_large");
        tracing::info!(target: "outrider::ca::audit", decision = "denied", reason = "too_large", %remote, "request larger than {MAX_REQUEST_BYTES} bytes");
    }
    response
}

impl Shared {
    /// Counts and logs a connection closed at accept (a warning for the first and then
    /// every 1000th, so a flood cannot flood the log too).
    pub(super) fn refuse(&self, remote: SocketAddr, reason: &'static str) {
        let n = self.stats.refuse(reason);
        if n == 1 || n % 1000 == 0 {
            tracing::warn!(%remote, reason, refused = n, "CA service connection refused at accept");
        } else {
            tracing::debug!(%remote, reason, "CA service connection refused at accept");
        }
    }
}
