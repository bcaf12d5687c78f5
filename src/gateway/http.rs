//! HTTP at the gateway: each request picks a server (the SNI's, or the one whose hosts match
//! its authority on a plaintext port), passes the port's RequestAuthentication and
//! AuthorizationPolicy, and is routed by the first matching rule of the VirtualServices bound
//! to that server: forwarded into the mesh (rewrites, header edits, timeout, retries),
//! redirected, or answered directly. A request no rule matches gets Envoy's 404 (`NR`).
//!
//! Forwarding is the sidecar's ([`Forward::send`]): pooled HTTP/2 over mesh mTLS with the
//! gateway's identity, counted with `reporter="source"`. The client's
//! `x-forwarded-client-cert` is never trusted: it is replaced by the gateway's element for a
//! client certificate (Istio's gateway default SANITIZE_SET) or removed.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Incoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::listener::Admitted;
use super::routes::destination;
use crate::config::{GatewayPortPlan, HttpAction, RetryPolicy};
use crate::metrics::{Peer, Reporter, TcpLabels, UNKNOWN};
use crate::proxy::http::body::{RequestBody, ResponseBody};
use crate::proxy::http::headers::strip_hop_by_hop;
use crate::proxy::http::inbound::Gate;
use crate::proxy::http::outbound::{Failure, Forward, Meters};
use crate::proxy::http::route::{self, AttemptResult, RequestFacts};
use crate::proxy::http::server::{authority_of, Finish, LogContext, Meter, Tunnels};
use crate::proxy::http::{flags, preface, server, xfcc};
use crate::proxy::sniff::Rewind;
use crate::proxy::{Runtime, Shared};

/// What one downstream connection's requests share.
struct Conn {
    a: Admitted,
    /// The current plan: every request is routed by the newest one, as Envoy applies new
    /// routes to open connections.
    runtime: watch::Receiver<Arc<Runtime>>,
    /// The runtime the request metrics series below belong to (kept alive with them, so an
    /// endpoint's address is never reused while its series is cached).
    current: Mutex<(Arc<Runtime>, Arc<Meters>)>,
    shared: Shared,
    /// For requests answered by the gateway itself (404, redirects, refusals).
    local: Arc<Meter>,
    log: LogContext,
    /// The gateway's XFCC element for the client certificate, if one was presented.
    xfcc: Option<HeaderValue>,
}

impl Conn {
    /// The newest runtime and the metric series cached for it.
    fn view(&self) -> (Arc<Runtime>, Arc<Meters>) {
        let rt = self.runtime.borrow().clone();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current.0, &rt) {
            *current = (rt, Arc::new(Meters::default()));
        }
        (current.0.clone(), current.1.clone())
    }
}

/// This connection's port in `rt`'s plan.
fn port_plan(rt: &Runtime, port: u16) -> Option<&GatewayPortPlan> {
    rt.plan
        .gateway
        .as_ref()?
        .ports
        .iter()
        .find(|p| p.port == port)
}

/// Serves one admitted downstream connection until it closes.
pub(super) async fn serve<S>(
    mut io: S,
    a: Admitted,
    runtime: watch::Receiver<Arc<Runtime>>,
    shared: &Shared,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (http2, prefix) = if a.tls {
        // ALPN decided; a client that agreed on nothing speaks HTTP/1.1.
        (a.h2_alpn, Vec::new())
    } else {
        match preface::read(&mut io, server::PREFACE_TIMEOUT).await {
            Ok((preface::Version::Http1, p)) => (false, p),
            Ok((preface::Version::Http2, p)) => (true, p),
            Ok((preface::Version::Closed, _)) => return,
            Ok((version, _)) => {
                let reason = if version == preface::Version::NotHttp {
                    "not_http"
                } else {
                    "http_header_timeout"
                };
                shared.metrics.inbound_rejected(a.port, reason);
                tracing::info!(peer = %a.peer, port = a.port, reason, "gateway: closed a client that does not speak HTTP");
                return;
            }
            Err(e) => {
                tracing::debug!(peer = %a.peer, port = a.port, error = %e, "gateway: client failed before its first request");
                return;
            }
        }
    };
    let rt = runtime.borrow().clone();
    let labels = TcpLabels {
        reporter: Reporter::Source,
        source: rt.me.clone(),
        destination: Peer::unknown(),
        destination_service: UNKNOWN.into(),
        destination_service_name: UNKNOWN.into(),
        destination_service_namespace: UNKNOWN.into(),
        security_policy: "unknown",
    };
    let xfcc = a
        .client_leaf
        .as_ref()
        .and_then(|leaf| HeaderValue::try_from(xfcc::gateway_element(leaf)).ok());
    let tunnels = Arc::new(Tunnels::default());
    let peer = a.peer;
    let conn = Arc::new(Conn {
        log: LogContext {
            direction: "gateway",
            peer,
            listener: a.port.to_string().into(),
            principal: UNKNOWN.into(),
        },
        local: Meter::new(shared.metrics.request_labels(&labels)),
        current: Mutex::new((rt, Arc::new(Meters::default()))),
        runtime,
        shared: shared.clone(),
        xfcc,
        a,
    });
    let draining = shared.shutdown.watch();
    server::serve(
        Rewind::new(prefix, io),
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
    let mut finish = Finish::begin(&req, conn.local.clone(), conn.log.clone());
    // As Envoy at Istio's default (`pathNormalization: BASE`): routes, policies and the
    // upstream all see the normalized path, so `/public/../admin` cannot slip past a
    // prefix match.
    if normalize_path(&mut req).is_err() {
        return Ok(finish.local(StatusCode::BAD_REQUEST, "Bad Request", flags::NONE));
    }
    let authority = authority_of(&req);
    let authority_text = authority.as_ref().map_or("", |a| a.as_str()).to_string();
    let host = route::host::strip_port(&authority_text);
    let (rt, meters) = conn.view();
    let Some(plan) = port_plan(&rt, conn.a.port) else {
        return Ok(not_found(finish));
    };
    // TLS: the server of the connection's SNI (in the newest plan); plaintext: the request's
    // authority chooses.
    let server_host = if conn.a.tls {
        conn.a.sni.as_deref()
    } else {
        Some(host)
    };
    let Some(server_index) = route::server_for_host(&plan.servers, server_host) else {
        return Ok(not_found(finish));
    };
    let server = &plan.servers[server_index];
    if conn.a.tls && server.tls != conn.a.handshake_tls {
        // The server's TLS changed since this connection's handshake (a reload made it
        // MUTUAL, say): its requests need a new handshake.
        return Ok(local_reply(
            finish,
            StatusCode::MISDIRECTED_REQUEST,
            Bytes::from_static(b"the server's TLS settings changed; reconnect"),
            None,
            flags::NONE,
        ));
    }
    if server.https_redirect && !conn.a.tls {
        let facts = facts(&conn, &req, &authority_text);
        let location = route::https_redirect_location(&facts);
        return Ok(local_reply(
            finish,
            StatusCode::MOVED_PERMANENTLY,
            Bytes::new(),
            Some(location),
            flags::NONE,
        ));
    }
    let gate = Gate {
        port: conn.a.port,
        local: conn.a.local,
        peer: conn.a.peer,
        peer_id: None,
        sni: conn.a.sni.as_deref(),
        authorization: &plan.authorization,
        authentication: &plan.authentication,
        metrics: &conn.shared.metrics,
        direction: "gateway",
    };
    finish = match gate.admit(&mut req, finish, &authority_text) {
        Ok(finish) => finish,
        Err(refused) => return Ok(*refused),
    };

    let facts = facts(&conn, &req, &authority_text);
    let Some((rule, matched)) = route::select(&server.http, &facts) else {
        return Ok(not_found(finish));
    };
    let rule_index = server
        .http
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .unwrap_or_default();
    let action = match &rule.action {
        HttpAction::Redirect(r) => {
            let location = route::redirect_location(r, &facts);
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            return Ok(local_reply(
                finish,
                status,
                Bytes::new(),
                Some(location),
                flags::NONE,
            ));
        }
        HttpAction::DirectResponse { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let body = body.clone().map(Bytes::from).unwrap_or_default();
            return Ok(local_reply(finish, status, body, None, flags::NONE));
        }
        HttpAction::Route(action) => action,
    };
    let Some(dest_index) = route::pick_weighted(&action.destinations) else {
        return Ok(Failure::NoEndpoint.reply(finish));
    };
    let dest = &action.destinations[dest_index];
    let out = rt
        .gateway
        .as_ref()
        .and_then(|g| g.server(conn.a.port, server_index))
        .and_then(|s| destination(&s.http, rule_index, dest_index));
    let Some(out) = out.cloned() else {
        return Ok(Failure::NoEndpoint.reply(finish));
    };

    // The request as it goes upstream.
    let new_path = action.rewrite.as_ref().and_then(|rw| {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        route::rewrite_path(matched, rw, pq)
    });
    let new_authority = route::authority_rewrite(rule, dest_index)
        .unwrap_or(&authority_text)
        .to_string();
    strip_hop_by_hop(req.headers_mut(), false);
    {
        let headers = req.headers_mut();
        headers.remove(xfcc::HEADER);
        if let Some(v) = &conn.xfcc {
            headers.insert(xfcc::HEADER, v.clone());
        }
        let proto = if conn.a.tls { "https" } else { "http" };
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(proto),
        );
        append_forwarded_for(headers, conn.a.peer.ip());
        if new_authority != authority_text {
            if let Ok(v) = HeaderValue::try_from(new_authority.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
        route::apply_header_ops(&rule.headers.request, headers);
        route::apply_header_ops(&dest.headers.request, headers);
    }
    let Some(uri) = upstream_uri(&req, new_path.as_deref(), &new_authority) else {
        return Ok(finish.local(StatusCode::BAD_REQUEST, "Bad Request", flags::NONE));
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    // A request can be tried again only if nothing of it was consumed: bodiless requests.
    let replayable = body.is_end_stream();
    let to = Forward {
        out: &out,
        rt: &rt,
        shared: &conn.shared,
        meters: &meters,
        peer: conn.a.peer,
    };
    let counter = finish.request_body.clone();
    let first = RequestBody::new(body, counter.clone());
    let sent = attempts(
        &to,
        parts,
        first,
        counter,
        replayable,
        &action.retries,
        action.timeout,
        &mut finish,
    )
    .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(Outcome::Failed(failure)) => return Ok(failure.reply(finish)),
        Err(Outcome::TimedOut) => {
            return Ok(finish.local(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                "UT",
            ))
        }
    };
    strip_hop_by_hop(response.headers_mut(), false);
    route::apply_header_ops(&dest.headers.response, response.headers_mut());
    route::apply_header_ops(&rule.headers.response, response.headers_mut());
    Ok(finish.respond(response))
}

/// Why no upstream response came back.
enum Outcome {
    Failed(Failure),
    /// The route's `timeout` (or the last try's `perTryTimeout`) passed.
    TimedOut,
}

/// Sends the request, trying again as the route's retry policy says (bodiless requests only),
/// within the route's timeout.
#[allow(clippy::too_many_arguments)]
async fn attempts(
    to: &Forward<'_>,
    parts: http::request::Parts,
    first: RequestBody,
    counter: Arc<std::sync::atomic::AtomicU64>,
    replayable: bool,
    policy: &RetryPolicy,
    timeout: Option<Duration>,
    finish: &mut Finish,
) -> Result<Response<Incoming>, Outcome> {
    let tries = async {
        let retries = if replayable { policy.attempts } else { 0 };
        let mut body = Some(first);
        let mut attempt = 0;
        loop {
            let this_body = body
                .take()
                .unwrap_or_else(|| RequestBody::empty(counter.clone()));
            let this_parts = copy_parts(&parts);
            let sent = to.send(this_parts, this_body, false, finish);
            let result = match policy.per_try_timeout {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r.map_err(Outcome::Failed),
                    Err(_) => Err(Outcome::TimedOut),
                },
                None => sent.await.map_err(Outcome::Failed),
            };
            let verdict = match &result {
                Ok(r) => AttemptResult::Status {
                    status: r.status().as_u16(),
                    grpc_status: crate::proxy::http::body::grpc_status(r.headers()),
                },
                Err(Outcome::Failed(Failure::Connect | Failure::NoEndpoint)) => {
                    AttemptResult::ConnectFailure
                }
                Err(Outcome::Failed(Failure::Reset)) => AttemptResult::Reset,
                Err(Outcome::TimedOut) => AttemptResult::Timeout,
            };
            if attempt >= retries || !route::retriable(policy, &verdict) {
                return result;
            }
            attempt += 1;
            // The failed try's stream slot goes back before the next one.
            finish.lease = None;
            tokio::time::sleep(route::backoff(attempt)).await;
        }
    };
    match timeout {
        Some(t) => match tokio::time::timeout(t, tries).await {
            Ok(r) => r,
            Err(_) => Err(Outcome::TimedOut),
        },
        None => tries.await,
    }
}

/// A copy of the request head for one try (extensions are not carried).
fn copy_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

fn facts<'a>(conn: &'a Conn, req: &'a Request<Incoming>, authority: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        method: req.method(),
        scheme: if conn.a.tls { "https" } else { "http" },
        authority,
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers: req.headers(),
        port: conn.a.port,
    }
}

/// Rewrites the request's path to its normalized form (query kept).
fn normalize_path(req: &mut Request<Incoming>) -> Result<(), &'static str> {
    let Some(pq) = req.uri().path_and_query() else {
        return Ok(());
    };
    let normalized = match crate::policy::authz::path::normalize(pq.as_str())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(path) => match pq.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        },
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(normalized).map_err(|_| "bad path")?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| "bad path")?;
    Ok(())
}

/// The absolute URI of the upstream request: the (rewritten) path and authority.
fn upstream_uri(req: &Request<Incoming>, path: Option<&str>, authority: &str) -> Option<Uri> {
    let pq = match path {
        Some(p) => PathAndQuery::try_from(p).ok()?,
        None => req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let authority = if authority.is_empty() {
        Authority::from_static("localhost")
    } else {
        Authority::try_from(authority).ok()?
    };
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .ok()
}

fn append_forwarded_for(headers: &mut http::HeaderMap, ip: std::net::IpAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// Envoy's answer when no route matches: 404, empty body, flag `NR`.
fn not_found(finish: Finish) -> Response<ResponseBody> {
    local_reply(finish, StatusCode::NOT_FOUND, Bytes::new(), None, "NR")
}

/// A response the gateway makes itself, with an optional `location`.
fn local_reply(
    finish: Finish,
    status: StatusCode,
    body: Bytes,
    location: Option<String>,
    flag: &'static str,
) -> Response<ResponseBody> {
    let header = location
        .and_then(|l| HeaderValue::try_from(l).ok())
        .map(|v| (header::LOCATION, v));
    finish.local_bytes(status, body, flag, header)
}
