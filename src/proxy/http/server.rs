//! One downstream HTTP connection: HTTP/1.1 or HTTP/2 served with hyper, each request
//! authorized, given its XFCC header, forwarded to the app over the keep-alive pool, counted
//! and logged once when its response ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::body::{grpc_status, Ending, RequestBody, ResponseBody};
use super::flags::{self, local_response};
use super::headers::{strip_hop_by_hop, wants_tunnel, wire_size};
use super::upstream::AppClient;
use super::xfcc;
use crate::config::ForwardClientCert;
use crate::identity::SpiffeId;
use crate::metrics::{RequestHandles, RequestLabels, RequestOutcome};
use crate::policy::authz::{self, Authorizer, Verdict};

/// Deadline for a request's headers on an HTTP/1 connection (slow or silent clients).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What one downstream connection's requests share, resolved when it opens.
pub struct Conn {
    pub port: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub peer_id: Option<SpiffeId>,
    pub sni: Option<String>,
    /// The peer's principal for the access log (`unknown` on plaintext).
    pub principal: String,
    pub authorization: Arc<Authorizer>,
    pub xfcc_mode: ForwardClientCert,
    /// This hop's XFCC element (mTLS only).
    pub xfcc_own: Option<String>,
    pub client: AppClient,
    /// The app speaks HTTP/2 (HTTP2 and GRPC ports).
    pub http2_app: bool,
    pub labels: RequestLabels,
    /// Request handles per outcome: a connection sees few distinct outcomes.
    pub handles: Mutex<HashMap<RequestOutcome, RequestHandles>>,
    /// Upgraded tunnels, run to their end by the connection's task.
    pub tunnels: Mutex<Vec<JoinHandle<()>>>,
}

impl Conn {
    fn handles(&self, outcome: RequestOutcome) -> RequestHandles {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .entry(outcome)
            .or_insert_with(|| self.labels.handles(outcome))
            .clone()
    }
}

/// Aborts the tunnels still running when the connection task ends (or is aborted by a
/// reload or drain).
struct AbortTunnels(Arc<Conn>);

impl Drop for AbortTunnels {
    fn drop(&mut self) {
        for t in self
            .0
            .tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            t.abort();
        }
    }
}

/// Serves `io` as HTTP/1 or HTTP/2 (`http2`) until the client closes it.
pub async fn serve<S>(io: S, http2: bool, conn: Arc<Conn>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _abort = AbortTunnels(conn.clone());
    let service = {
        let conn = conn.clone();
        service_fn(move |req| handle(conn.clone(), req))
    };
    let io = TokioIo::new(io);
    let served = if http2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(peer = %conn.peer, port = conn.port, error = %e, "downstream HTTP connection ended with an error");
    }
    let tunnels = std::mem::take(&mut *conn.tunnels.lock().unwrap_or_else(|p| p.into_inner()));
    for t in tunnels {
        let _ = t.await;
    }
}

/// The request's end, reported once by its response body.
pub struct Finish {
    conn: Arc<Conn>,
    started: Instant,
    method: Method,
    path: String,
    status: u16,
    flags: &'static str,
    grpc: bool,
    request_headers: u64,
    request_body: Arc<AtomicU64>,
    response_headers: u64,
    recorded: bool,
}

impl Drop for Finish {
    /// A request whose handling was dropped before its response began (the client went
    /// away while the app was answering) is still counted, as Envoy counts it: code 0, `DC`.
    fn drop(&mut self) {
        if !self.recorded {
            self.status = 0;
            self.record(Ending::DownstreamGone, 0, None);
        }
    }
}

impl Finish {
    pub fn done(mut self, ending: Ending, response_body: u64, grpc_status: Option<u32>) {
        self.record(ending, response_body, grpc_status);
    }

    fn record(&mut self, ending: Ending, response_body: u64, grpc_status: Option<u32>) {
        self.recorded = true;
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
        self.conn.handles(outcome).record(
            duration.as_secs_f64() * 1000.0,
            request_bytes,
            response_bytes,
        );
        tracing::info!(
            target: "access",
            direction = "inbound",
            peer = %self.conn.peer,
            port = self.conn.port,
            method = %self.method,
            path = %self.path,
            status = self.status,
            grpc_status = grpc_status.map(i64::from).unwrap_or(-1),
            flags,
            duration_ms = duration.as_millis() as u64,
            request_bytes,
            response_bytes,
            source_principal = %self.conn.principal,
        );
    }
}

async fn handle(
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let mut finish = Finish {
        conn: conn.clone(),
        started,
        method: req.method().clone(),
        path,
        status: 0,
        flags: flags::NONE,
        grpc,
        request_headers: wire_size(req.headers()) + request_line_size(&req),
        request_body: Arc::new(AtomicU64::new(0)),
        response_headers: 0,
        recorded: false,
    };
    let authority = authority_of(&req);

    if !conn.authorization.is_empty() {
        let facts = authz::Connection {
            peer: conn.peer_id.as_ref(),
            source: conn.peer,
            destination: conn.local,
            sni: conn.sni.as_deref(),
        };
        let request = authz::Request {
            method: req.method().as_str(),
            authority: authority.as_ref().map(Authority::as_str).unwrap_or(""),
            path: &finish.path,
            headers: req.headers(),
        };
        let outcome = conn.authorization.check_request(&facts, &request);
        match outcome.verdict {
            Verdict::Allow => {}
            Verdict::Deny { policy } => {
                tracing::info!(peer = %conn.peer, port = conn.port, %policy, "request denied by authorization");
                return Ok(local(
                    finish,
                    StatusCode::FORBIDDEN,
                    flags::RBAC_BODY,
                    flags::RBAC_DENIED,
                ));
            }
            Verdict::BadRequest { reason } => {
                tracing::info!(peer = %conn.peer, port = conn.port, reason, "bad request");
                return Ok(local(
                    finish,
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    flags::NONE,
                ));
            }
        }
    }

    let Some(uri) = upstream_uri(&req, authority) else {
        return Ok(local(
            finish,
            StatusCode::BAD_REQUEST,
            "Bad Request",
            flags::NONE,
        ));
    };
    let tunnel = wants_tunnel(&req) && !conn.http2_app;
    strip_hop_by_hop(req.headers_mut(), tunnel);
    set_xfcc(&conn, req.headers_mut());
    let downstream_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
    let is_connect = req.method() == Method::CONNECT;

    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = if conn.http2_app {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body = RequestBody::new(body, finish.request_body.clone());
    let mut response = match conn.client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            let (body, flag) = if e.is_connect() {
                (
                    flags::CONNECT_FAILURE_BODY,
                    flags::UPSTREAM_CONNECTION_FAILURE,
                )
            } else {
                (flags::RESET_BODY, flags::UPSTREAM_CONNECTION_TERMINATION)
            };
            tracing::warn!(peer = %conn.peer, port = conn.port, error = %e, flags = flag, "local app request failed");
            return Ok(local(finish, StatusCode::SERVICE_UNAVAILABLE, body, flag));
        }
    };

    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && response.status().is_success());
    if let (Some(downstream), true) = (downstream_upgrade, switched) {
        let upstream = hyper::upgrade::on(&mut response);
        let peer = conn.peer;
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
                    tracing::debug!(%peer, received, sent, outcome = end.outcome("downstream", "app"), "upgraded connection closed");
                }
                Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
            }
        });
        conn.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tunnel);
    }

    let keep_upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(response.headers_mut(), keep_upgrade);
    finish.status = response.status().as_u16();
    finish.response_headers = wire_size(response.headers()) + 17;
    let grpc_in_headers = grpc_status(response.headers());
    let (parts, body) = response.into_parts();
    let body = ResponseBody::upstream(body, grpc_in_headers).on_end(finish);
    Ok(Response::from_parts(parts, body))
}

/// A response the proxy makes itself, counted and logged like the app's.
fn local(
    mut finish: Finish,
    status: StatusCode,
    body: &'static str,
    flag: &'static str,
) -> Response<ResponseBody> {
    finish.status = status.as_u16();
    finish.flags = flag;
    let response = local_response(status, body);
    finish.response_headers = wire_size(response.headers()) + 17;
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.on_end(finish))
}

/// `:authority` (HTTP/2, or an absolute-form HTTP/1 target), else `Host`.
fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(header::HOST)?;
    Authority::try_from(host.as_bytes()).ok()
}

/// The absolute URI the pool needs (its connector dials the app whatever the authority); the
/// authority stays the client's, so the app sees the `Host`/`:authority` that was sent.
fn upstream_uri<B>(req: &Request<B>, authority: Option<Authority>) -> Option<Uri> {
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

fn set_xfcc(conn: &Conn, headers: &mut http::HeaderMap) {
    let incoming = headers
        .get(xfcc::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match xfcc::apply(
        conn.xfcc_mode,
        incoming.as_deref(),
        conn.xfcc_own.as_deref(),
    ) {
        xfcc::Action::Keep => {}
        xfcc::Action::Remove => {
            headers.remove(xfcc::HEADER);
        }
        xfcc::Action::Set(value) => match HeaderValue::try_from(value) {
            Ok(v) => {
                headers.insert(xfcc::HEADER, v);
            }
            Err(_) => {
                headers.remove(xfcc::HEADER);
            }
        },
    }
}

fn request_line_size<B>(req: &Request<B>) -> u64 {
    (req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12)
        as u64
}
