//! Outbound requests: the app's HTTP/1.1 or HTTP/2 requests to an HTTP destination are
//! parsed, counted with `reporter=source`, and carried to the chosen endpoint over a pooled
//! HTTP/2-over-mTLS connection ([`super::pool`]); upgrades, `CONNECT`, and peers that do not
//! speak the pool's ALPN get a dedicated mTLS connection carrying the request as the app sent
//! it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{RequestBody, ResponseBody};
use super::flags;
use super::headers::{strip_hop_by_hop, wants_tunnel};
use super::io::Counted;
use super::pool::{self, Upstream};
use super::preface;
use super::server::{
    authority_of, serve as serve_http, upstream_uri, Finish, LogContext, Meter, Tunnels,
    CONNECTION_WINDOW, PREFACE_TIMEOUT, STREAM_WINDOW,
};
use crate::config::Protocol;
use crate::identity::SpiffeId;
use crate::metrics::{Peer, Reporter, TcpLabels, UNKNOWN};
use crate::proxy::outbound::{OutboundRuntime, UpstreamEndpoint, UpstreamTls};
use crate::proxy::sniff::Rewind;
use crate::proxy::{tune, Runtime, Shared};

/// Whether an outbound entry is carried at L7: its destination port is HTTP, HTTP2 or GRPC
/// and every endpoint is a mesh sidecar (ISTIO_MUTUAL); anything else moves bytes.
pub fn carries(out: &OutboundRuntime) -> bool {
    let mut endpoints = out.routes.iter().flat_map(|r| &r.endpoints).peekable();
    out.destination.protocol.is_http()
        && endpoints.peek().is_some()
        && endpoints.all(|e| matches!(e.tls, UpstreamTls::Tls { mesh: Some(_), .. }))
}

/// What one app connection's requests share.
struct Conn {
    out: Arc<OutboundRuntime>,
    rt: Arc<Runtime>,
    shared: Shared,
    log: LogContext,
    /// Request labels per endpoint (by address in the runtime), resolved on first use.
    meters: Meters,
    /// For requests that never reach an endpoint.
    unrouted: Arc<Meter>,
    tunnels: Arc<Tunnels>,
}

/// The source-side labels of a connection (or request) to `ep` of `out`, naming the server by
/// the identity it proved.
fn labels(
    out: &OutboundRuntime,
    rt: &Runtime,
    ep: Option<&UpstreamEndpoint>,
    server_id: Option<&SpiffeId>,
) -> TcpLabels {
    let mut destination = ep.map(|e| e.peer.clone()).unwrap_or_else(Peer::unknown);
    if let Some(id) = server_id {
        destination.principal = id.to_string();
    }
    let d = &out.destination;
    TcpLabels {
        reporter: Reporter::Source,
        source: rt.me.clone(),
        destination,
        destination_service: d.host.clone(),
        destination_service_name: d.service.clone().unwrap_or_else(|| d.host.clone()),
        destination_service_namespace: d.namespace.clone().unwrap_or_else(|| UNKNOWN.into()),
        security_policy: "unknown",
    }
}

/// Serves one app connection to an outbound entry that [`carries`] holds for.
pub async fn serve(
    mut app: TcpStream,
    peer: SocketAddr,
    out: Arc<OutboundRuntime>,
    rt: Arc<Runtime>,
    shared: Shared,
) {
    tune(&app);
    let (version, prefix) = match preface::read(&mut app, PREFACE_TIMEOUT).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "app failed before its first request");
            return;
        }
    };
    let http2 = match version {
        preface::Version::Http1 => false,
        preface::Version::Http2 => true,
        preface::Version::Closed => return,
        preface::Version::NotHttp | preface::Version::TimedOut => {
            let reason = if version == preface::Version::NotHttp {
                "not_http"
            } else {
                "http_header_timeout"
            };
            shared.metrics.outbound_rejected(out.bind, reason);
            tracing::info!(%peer, bind = %out.bind, reason, "closed: the app did not speak HTTP to an HTTP destination");
            return;
        }
    };
    let tunnels = Arc::new(Tunnels::default());
    let unrouted = labels(&out, &rt, None, None);
    let conn = Arc::new(Conn {
        log: LogContext {
            direction: "outbound",
            peer,
            listener: out.bind.to_string().into(),
            principal: UNKNOWN.into(),
        },
        meters: Meters::default(),
        unrouted: Meter::new(shared.metrics.request_labels(&unrouted)),
        tunnels: tunnels.clone(),
        out,
        rt,
        shared,
    });
    let draining = conn.shared.shutdown.watch();
    serve_http(
        Rewind::new(prefix, app),
        http2,
        tunnels,
        peer,
        draining,
        move |req| handle(conn.clone(), req),
    )
    .await;
}

async fn handle(
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut finish = Finish::begin(&req, conn.unrouted.clone(), conn.log.clone());
    let authority = authority_of(&req);
    let Some(uri) = upstream_uri(&req, authority.clone()) else {
        return Ok(finish.local(StatusCode::BAD_REQUEST, "Bad Request", flags::NONE));
    };
    let tunnel = wants_tunnel(&req);
    strip_hop_by_hop(req.headers_mut(), tunnel);
    let downstream_upgrade = tunnel.then(|| hyper::upgrade::on(&mut req));
    let is_connect = req.method() == Method::CONNECT;
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    let body = RequestBody::new(body, finish.request_body.clone());
    let to = Forward {
        out: &conn.out,
        rt: &conn.rt,
        shared: &conn.shared,
        meters: &conn.meters,
        peer: conn.log.peer,
    };
    let mut response = match to.send(parts, body, tunnel, &mut finish).await {
        Ok(r) => r,
        Err(failure) => return Ok(failure.reply(finish)),
    };
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && response.status().is_success());
    if let (Some(downstream), true) = (downstream_upgrade, switched) {
        let upstream = hyper::upgrade::on(&mut response);
        conn.tunnels.spawn(downstream, upstream, conn.log.peer);
    }
    let keep_upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(response.headers_mut(), keep_upgrade);
    Ok(finish.respond(response))
}

/// Request metric series per upstream endpoint, resolved on first use and shared by the
/// requests of one downstream connection.
#[derive(Default)]
pub(crate) struct Meters(Mutex<HashMap<usize, Arc<Meter>>>);

impl Meters {
    fn get(
        &self,
        out: &OutboundRuntime,
        rt: &Runtime,
        shared: &Shared,
        ep: &UpstreamEndpoint,
        server_id: Option<&SpiffeId>,
    ) -> Arc<Meter> {
        let key = ep as *const UpstreamEndpoint as usize;
        let mut meters = self.0.lock().unwrap_or_else(|p| p.into_inner());
        meters
            .entry(key)
            .or_insert_with(|| {
                Meter::new(
                    shared
                        .metrics
                        .request_labels(&labels(out, rt, Some(ep), server_id)),
                )
            })
            .clone()
    }
}

/// Why a request did not get an upstream response; each maps to Envoy's local reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The destination has no endpoint (`UH`).
    NoEndpoint,
    /// No endpoint could be connected to (`UF`).
    Connect,
    /// The upstream connection failed before the response began (`UC`).
    Reset,
}

impl Failure {
    /// The 503 Envoy answers with.
    pub(crate) fn reply(self, finish: Finish) -> Response<ResponseBody> {
        let (body, flag) = match self {
            Failure::NoEndpoint => (flags::NO_HEALTHY_UPSTREAM_BODY, flags::NO_HEALTHY_UPSTREAM),
            Failure::Connect => (
                flags::CONNECT_FAILURE_BODY,
                flags::UPSTREAM_CONNECTION_FAILURE,
            ),
            Failure::Reset => (flags::RESET_BODY, flags::UPSTREAM_CONNECTION_TERMINATION),
        };
        finish.local(StatusCode::SERVICE_UNAVAILABLE, body, flag)
    }
}

/// One destination of a request and what sending to it needs: the sidecar's outbound
/// entries and the gateway's routes both forward through it.
pub(crate) struct Forward<'a> {
    pub out: &'a OutboundRuntime,
    pub rt: &'a Runtime,
    pub shared: &'a Shared,
    pub meters: &'a Meters,
    /// The downstream client, for logs.
    pub peer: SocketAddr,
}

impl Forward<'_> {
    /// Sends a request whose `uri` is absolute (the authority the next hop sees) and whose
    /// hop-by-hop headers are gone to an endpoint of the destination: a route by weight,
    /// the endpoints round-robin, the next one when a connection fails. The request is counted
    /// on the chosen endpoint's series (`finish.meter`), which also holds the pooled stream
    /// slot until the response ends.
    pub(crate) async fn send(
        &self,
        mut parts: http::request::Parts,
        body: RequestBody,
        tunnel: bool,
        finish: &mut Finish,
    ) -> Result<Response<Incoming>, Failure> {
        let shared = self.shared;
        let service = self.out.destination.host.as_str();
        let Some((route, start)) = self.out.pick() else {
            shared.metrics.upstream_failed(service, "no_endpoint");
            return Err(Failure::NoEndpoint);
        };
        let n = route.endpoints.len();
        let mut chosen = None;
        for attempt in 0..n {
            let ep = &route.endpoints[(start + attempt) % n];
            let labels = |id: Option<&SpiffeId>| labels(self.out, self.rt, Some(ep), id);
            let got = if tunnel {
                pool::dedicated(ep, shared).await.map(Upstream::Dedicated)
            } else {
                shared.h2_pool.checkout(ep, shared, &labels).await
            };
            match got {
                Ok(upstream) => {
                    chosen = Some((ep, upstream));
                    break;
                }
                Err((reason, detail)) => {
                    shared.metrics.upstream_failed(service, reason);
                    tracing::warn!(peer = %self.peer, destination = service, endpoint = %format!("{}:{}", ep.host, ep.port), side = "upstream", reason, error = %detail, "upstream connection failed");
                }
            }
        }
        let Some((ep, upstream)) = chosen else {
            return Err(Failure::Connect);
        };
        let is_connect = parts.method == Method::CONNECT;
        let http2_destination = matches!(
            self.out.destination.protocol,
            Protocol::Http2 | Protocol::Grpc
        );
        let sent = match upstream {
            Upstream::Pooled(lease) => {
                finish.meter = self
                    .meters
                    .get(self.out, self.rt, shared, ep, lease.server_id());
                finish.log.principal = principal(lease.server_id());
                parts.version = Version::HTTP_2;
                let mut sender = lease.sender();
                finish.lease = Some(lease);
                match sender.ready().await {
                    Ok(()) => sender.send_request(Request::from_parts(parts, body)).await,
                    Err(e) => Err(e),
                }
            }
            Upstream::Dedicated(d) => {
                finish.meter = self
                    .meters
                    .get(self.out, self.rt, shared, ep, d.server_id.as_ref());
                finish.log.principal = principal(d.server_id.as_ref());
                let tcp = shared.metrics.tcp_connection(
                    &labels(self.out, self.rt, Some(ep), d.server_id.as_ref()),
                    "outbound",
                );
                let io = TokioIo::new(Counted::new(*d.tls, tcp));
                if http2_destination && !tunnel {
                    parts.version = Version::HTTP_2;
                    send_h2(io, Request::from_parts(parts, body)).await
                } else {
                    let uri = std::mem::take(&mut parts.uri);
                    parts.uri = origin_form(&uri, is_connect);
                    parts.version = Version::HTTP_11;
                    if !parts.headers.contains_key(header::HOST) {
                        if let Some(a) = uri
                            .authority()
                            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                        {
                            parts.headers.insert(header::HOST, a);
                        }
                    }
                    send_h1(io, Request::from_parts(parts, body)).await
                }
            }
        };
        sent.map_err(|e| {
            tracing::warn!(peer = %self.peer, destination = service, error = %e, "upstream request failed");
            Failure::Reset
        })
    }
}

fn principal(id: Option<&SpiffeId>) -> Arc<str> {
    id.map(|i| i.to_string())
        .unwrap_or_else(|| UNKNOWN.to_string())
        .into()
}

/// `/path?query` for HTTP/1 (or the authority for `CONNECT`).
fn origin_form(uri: &Uri, connect: bool) -> Uri {
    if connect {
        if let Some(a) = uri.authority() {
            return Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(a.as_str().as_bytes()))
                .unwrap_or_else(|_| Uri::from_static("/"));
        }
    }
    uri.path_and_query()
        .and_then(|p| Uri::try_from(p.as_str()).ok())
        .unwrap_or_else(|| Uri::from_static("/"))
}

type Io = TokioIo<Counted<tokio_rustls::client::TlsStream<TcpStream>>>;

/// One request on a dedicated HTTP/1.1 connection (upgrades allowed); the connection closes
/// after it.
async fn send_h1(io: Io, req: Request<RequestBody>) -> hyper::Result<Response<Incoming>> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "dedicated upstream connection failed");
        }
    });
    sender.send_request(req).await
}

/// One request on a dedicated HTTP/2 connection (prior knowledge).
async fn send_h2(io: Io, req: Request<RequestBody>) -> hyper::Result<Response<Incoming>> {
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "dedicated upstream connection failed");
        }
    });
    sender.send_request(req).await
}
