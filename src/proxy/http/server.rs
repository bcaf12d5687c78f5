//! What every L7 connection shares, whichever way it goes: hyper serving one downstream
//! connection (HTTP/1.1 with upgrades, or HTTP/2), the per-request record ([`Finish`]: one
//! metric update and one access-log line when the response ends), the metric handles cached
//! per connection ([`Meter`]), upgraded tunnels ([`Tunnels`]), and the request rewrites both
//! directions need.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::body::{Ending, ResponseBody};
use super::flags::{self, local_response};
use super::headers::wire_size;
use super::pool::Lease;
use crate::metrics::{RequestHandles, RequestLabels, RequestOutcome};

/// Deadline for the first bytes of a connection on an HTTP port: a client that has not shown
/// it speaks HTTP by then is closed (never a hang).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for a request's headers on an HTTP/1 connection (slow clients). hyper runs it
/// from the moment it waits for the next request, so it is also how long a keep-alive
/// HTTP/1 connection may stay idle between requests (hyper's default, 30 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 flow-control windows: a stream window smaller than the connection's, so one stalled
/// stream cannot block the others (DESIGN: pooled HTTP/2).
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// The request labels of one (connection, upstream) pair, with handles cached per outcome:
/// resolved once, then each request only looks up its (code, flags, grpc status).
pub struct Meter {
    labels: RequestLabels,
    handles: Mutex<HashMap<RequestOutcome, RequestHandles>>,
}

impl Meter {
    pub fn new(labels: RequestLabels) -> Arc<Meter> {
        Arc::new(Meter {
            labels,
            handles: Mutex::default(),
        })
    }

    fn handles(&self, outcome: RequestOutcome) -> RequestHandles {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .entry(outcome)
            .or_insert_with(|| self.labels.handles(outcome))
            .clone()
    }
}

/// The raw tunnels (upgrades, CONNECT) of one connection: run to their end by the
/// connection's task, aborted with it.
#[derive(Default)]
pub struct Tunnels(Mutex<Vec<JoinHandle<()>>>);

impl Tunnels {
    /// Copies between the two upgraded sides once both are ready.
    pub fn spawn(&self, downstream: OnUpgrade, upstream: OnUpgrade, peer: SocketAddr) {
        let tunnel = tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    let (end, received, sent) = crate::proxy::copy::copy_bidirectional(
                        &mut down,
                        &mut up,
                        crate::proxy::CopyConfig::default(),
                        |_, _| {},
                    )
                    .await;
                    tracing::debug!(%peer, received, sent, outcome = end.outcome("downstream", "upstream"), "upgraded connection closed");
                }
                Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
            }
        });
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tunnel);
    }

    fn take(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Aborts the tunnels still running when the connection task ends (or is aborted by a
/// reload or drain).
struct AbortTunnels(Arc<Tunnels>);

impl Drop for AbortTunnels {
    fn drop(&mut self) {
        for t in self.0 .0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
    }
}

/// Serves `io` as HTTP/1 or HTTP/2 (`http2`) with `handler` until the client closes it, then
/// waits for its tunnels. Once `draining` turns true the connection shuts down gracefully:
/// HTTP/2 sends GOAWAY, HTTP/1 closes after the request in flight, so a drain does not wait
/// for keep-alive clients (or pooled peers) to leave on their own.
pub async fn serve<S, H, Fut>(
    io: S,
    http2: bool,
    tunnels: Arc<Tunnels>,
    peer: SocketAddr,
    mut draining: watch::Receiver<bool>,
    handler: H,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ResponseBody>, Infallible>> + Send + 'static,
{
    let _abort = AbortTunnels(tunnels.clone());
    let service = service_fn(handler);
    let io = TokioIo::new(io);
    let served = if http2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => served,
            _ = crate::shutdown::draining(&mut draining) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    } else {
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            served = connection.as_mut() => served,
            _ = crate::shutdown::draining(&mut draining) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "downstream HTTP connection ended with an error");
    }
    for t in tunnels.take() {
        let _ = t.await;
    }
}

/// Who is on the other side of a request, for the access log.
#[derive(Clone)]
pub struct LogContext {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The downstream client's address.
    pub peer: SocketAddr,
    /// The sidecar port (inbound) or the outbound `bind`.
    pub listener: Arc<str>,
    /// The peer sidecar's identity: the client (inbound) or the server (outbound).
    pub principal: Arc<str>,
}

/// The request's end, reported once: by its response body when it ends, or by its drop.
pub struct Finish {
    pub meter: Arc<Meter>,
    pub log: LogContext,
    started: Instant,
    method: Method,
    pub path: String,
    status: u16,
    flags: &'static str,
    grpc: bool,
    request_headers: u64,
    pub request_body: Arc<AtomicU64>,
    response_headers: u64,
    /// The pooled connection's stream slot, given back when the response ends.
    pub lease: Option<Lease>,
    recorded: bool,
}

impl Drop for Finish {
    /// A request whose handling was dropped before its response began (the client went
    /// away while the upstream was answering) is still counted, as Envoy counts it: code 0,
    /// `DC`.
    fn drop(&mut self) {
        if !self.recorded {
            self.status = 0;
            self.record(Ending::DownstreamGone, 0, None);
        }
    }
}

impl Finish {
    /// Starts the record of `req` (before anything else touches it).
    pub fn begin<B>(req: &Request<B>, meter: Arc<Meter>, log: LogContext) -> Finish {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        Finish {
            meter,
            log,
            started: Instant::now(),
            method: req.method().clone(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".to_string()),
            status: 0,
            flags: flags::NONE,
            grpc,
            request_headers: wire_size(req.headers()) + request_line_size(req),
            request_body: Arc::new(AtomicU64::new(0)),
            response_headers: 0,
            lease: None,
            recorded: false,
        }
    }

    pub fn done(mut self, ending: Ending, response_body: u64, grpc_status: Option<u32>) {
        self.record(ending, response_body, grpc_status);
    }

    fn record(&mut self, ending: Ending, response_body: u64, grpc_status: Option<u32>) {
        self.recorded = true;
        self.lease.take();
        let flags = match ending {
            Ending::Complete => self.flags,
            Ending::UpstreamReset => flags::UPSTREAM_CONNECTION_TERMINATION,
            Ending::DownstreamGone => flags::DOWNSTREAM_CONNECTION_TERMINATION,
        };
        let duration = self.started.elapsed();
        let request_bytes = self.request_headers + self.request_body.load(Ordering::Relaxed);
        let response_bytes = self.response_headers + response_body;
        let outcome = RequestOutcome {
            grpc: self.grpc,
            code: self.status,
            grpc_status: if self.grpc { grpc_status } else { None },
            flags,
        };
        self.meter.handles(outcome).record(
            duration.as_secs_f64() * 1000.0,
            request_bytes,
            response_bytes,
        );
        tracing::info!(
            target: "access",
            direction = self.log.direction,
            peer = %self.log.peer,
            listener = %self.log.listener,
            method = %self.method,
            path = %self.path,
            status = self.status,
            grpc_status = grpc_status.map(i64::from).unwrap_or(-1),
            flags,
            duration_ms = duration.as_millis() as u64,
            request_bytes,
            response_bytes,
            peer_principal = %self.log.principal,
        );
    }

    /// The upstream's response, streamed to the client; the record ends with its body.
    pub fn respond(mut self, response: Response<Incoming>) -> Response<ResponseBody> {
        self.status = response.status().as_u16();
        self.response_headers = wire_size(response.headers()) + 17;
        let grpc_in_headers = super::body::grpc_status(response.headers());
        let (parts, body) = response.into_parts();
        let body = ResponseBody::upstream(body, grpc_in_headers).on_end(self);
        Response::from_parts(parts, body)
    }

    /// A response the proxy makes itself, counted and logged like an upstream's.
    pub fn local(
        self,
        status: StatusCode,
        body: &'static str,
        flag: &'static str,
    ) -> Response<ResponseBody> {
        self.local_with_header(status, body, flag, None)
    }

    /// [`Finish::local`] with one more response header (`www-authenticate` of a JWT
    /// rejection).
    pub fn local_with_header(
        mut self,
        status: StatusCode,
        body: &'static str,
        flag: &'static str,
        header: Option<(http::HeaderName, http::HeaderValue)>,
    ) -> Response<ResponseBody> {
        self.status = status.as_u16();
        self.flags = flag;
        let mut response = local_response(status, body);
        if let Some((name, value)) = header {
            response.headers_mut().insert(name, value);
        }
        self.response_headers = wire_size(response.headers()) + 17;
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.on_end(self))
    }
}

impl Finish {
    /// A response the proxy makes itself with an owned body (a gateway's `directResponse`,
    /// an empty redirect), counted and logged like an upstream's.
    pub fn local_bytes(
        mut self,
        status: StatusCode,
        body: bytes::Bytes,
        flag: &'static str,
        header: Option<(http::HeaderName, http::HeaderValue)>,
    ) -> Response<ResponseBody> {
        self.status = status.as_u16();
        self.flags = flag;
        let len = body.len();
        let mut response = Response::new(ResponseBody::local(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if len > 0 {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
        }
        headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        if let Some((name, value)) = header {
            headers.insert(name, value);
        }
        self.response_headers = wire_size(response.headers()) + 17;
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.on_end(self))
    }
}

/// `:authority` (HTTP/2, or an absolute-form HTTP/1 target), else `Host`.
pub fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// The absolute URI an HTTP client needs, keeping the client's authority so the next hop sees
/// the `Host`/`:authority` that was sent (`CONNECT` keeps only its authority).
pub fn upstream_uri<B>(req: &Request<B>, authority: Option<Authority>) -> Option<Uri> {
    let authority = authority.unwrap_or_else(|| Authority::from_static("localhost"));
    let path = if req.method() == Method::CONNECT {
        PathAndQuery::from_static("/")
    } else {
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}

fn request_line_size<B>(req: &Request<B>) -> u64 {
    (req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12)
        as u64
}

/// An upgraded HTTP connection is read into the copy loop's buffer (hyper may hold bytes
/// read past the upgrade; it hands them out through `poll_read`).
impl crate::proxy::copy::CopyStream for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {
    type Fill = crate::proxy::copy::OwnBuffer;
    fn filler(config: &crate::proxy::CopyConfig) -> Self::Fill {
        crate::proxy::copy::OwnBuffer::new(config)
    }
}
