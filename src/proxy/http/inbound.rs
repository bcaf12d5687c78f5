//! Inbound requests: authenticated (RequestAuthentication: a JWT invalid for every provider
//! is answered 401/403 here), authorized, given their `x-forwarded-client-cert`, stripped of hop-by-hop
//! headers and sent to the app over its keep-alive pool; metrics with `reporter=destination`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::{RequestBody, ResponseBody};
use super::flags;
use super::headers::{strip_hop_by_hop, wants_tunnel};
use super::server::{authority_of, upstream_uri, Finish, LogContext, Meter, Tunnels};
use super::upstream::AppClient;
use super::xfcc;
use crate::config::ForwardClientCert;
use crate::identity::SpiffeId;
use crate::metrics::Metrics;
use crate::policy::authz::{self, Authorizer, Verdict};
use crate::policy::jwt::{Authenticator, AuthnOutcome, HeaderEdits, RequestAuth};

/// What one downstream connection's requests share, resolved when it opens.
pub struct Conn {
    pub port: u16,
    pub local: SocketAddr,
    pub peer_id: Option<SpiffeId>,
    pub sni: Option<String>,
    pub log: LogContext,
    pub authorization: Arc<Authorizer>,
    /// The port's RequestAuthentication (empty: every request is anonymous).
    pub authentication: Arc<Authenticator>,
    /// For the authorization counters (denied, dry-run, audited), as on TCP ports.
    pub metrics: Arc<Metrics>,
    pub xfcc_mode: ForwardClientCert,
    /// This hop's XFCC element (mTLS only).
    pub xfcc_own: Option<String>,
    pub client: AppClient,
    /// The app speaks HTTP/2 (HTTP2 and GRPC ports).
    pub http2_app: bool,
    pub meter: Arc<Meter>,
    pub tunnels: Arc<Tunnels>,
}

pub async fn handle(
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let mut finish = Finish::begin(&req, conn.meter.clone(), conn.log.clone());
    let authority = authority_of(&req);

    let gate = Gate {
        port: conn.port,
        local: conn.local,
        peer: conn.log.peer,
        peer_id: conn.peer_id.as_ref(),
        sni: conn.sni.as_deref(),
        authorization: &conn.authorization,
        authentication: &conn.authentication,
        metrics: &conn.metrics,
        direction: "inbound",
    };
    let authority_text = authority.as_ref().map(|a| a.as_str()).unwrap_or("");
    finish = match gate.admit(&mut req, finish, authority_text) {
        Ok(finish) => finish,
        Err(refused) => return Ok(*refused),
    };

    let Some(uri) = upstream_uri(&req, authority) else {
        return Ok(finish.local(StatusCode::BAD_REQUEST, "Bad Request", flags::NONE));
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
            tracing::debug!(peer = %conn.log.peer, port = conn.port, error = %e, flags = flag, "local app request failed");
            return Ok(finish.local(StatusCode::SERVICE_UNAVAILABLE, body, flag));
        }
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

/// The policies one request passes before it is forwarded: RequestAuthentication (a JWT
/// invalid for every provider is answered 401/403), then AuthorizationPolicy. Sidecar inbound
/// ports and gateway ports share it.
pub(crate) struct Gate<'a> {
    pub port: u16,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The verified mesh identity of the client (mesh mTLS only).
    pub peer_id: Option<&'a SpiffeId>,
    pub sni: Option<&'a str>,
    pub authorization: &'a Authorizer,
    pub authentication: &'a Authenticator,
    pub metrics: &'a Metrics,
    /// `inbound` or `gateway`, for the audit log.
    pub direction: &'static str,
}

impl Gate<'_> {
    /// Authenticates and authorizes `req` (applying RequestAuthentication's header edits);
    /// a refusal is the response to send, already counted and logged.
    pub(crate) fn admit(
        &self,
        req: &mut Request<Incoming>,
        mut finish: Finish,
        authority: &str,
    ) -> Result<Finish, Box<Response<ResponseBody>>> {
        // Authentication first: a rejected token never reaches authorization or the app.
        let auth: Option<RequestAuth> = if self.authentication.is_empty() {
            None
        } else {
            match self.authentication.authenticate(
                req.method(),
                req.uri(),
                req.headers(),
                SystemTime::now(),
            ) {
                AuthnOutcome::Anonymous(edits) => {
                    apply_edits(req, &mut finish, &edits);
                    None
                }
                AuthnOutcome::Authenticated(auth, edits) => {
                    apply_edits(req, &mut finish, &edits);
                    Some(auth)
                }
                AuthnOutcome::Reject {
                    status,
                    reason,
                    www_authenticate,
                } => {
                    self.metrics.jwt_rejected(self.port, reason);
                    tracing::info!(peer = %self.peer, port = self.port, status = status.as_u16(), reason, "request refused by RequestAuthentication");
                    let challenge = HeaderValue::try_from(www_authenticate)
                        .ok()
                        .map(|v| (header::WWW_AUTHENTICATE, v));
                    return Err(Box::new(finish.local_with_header(
                        status,
                        reason,
                        flags::NONE,
                        challenge,
                    )));
                }
            }
        };
        if self.authorization.is_empty() {
            return Ok(finish);
        }
        let facts = authz::Connection {
            peer: self.peer_id,
            source: self.peer,
            destination: self.local,
            sni: self.sni,
        };
        let request = authz::Request {
            method: req.method().as_str(),
            authority,
            path: &finish.path,
            headers: req.headers(),
        };
        let outcome = self
            .authorization
            .check_request_with_auth(&facts, &request, auth.as_ref());
        if let Some(shadow) = &outcome.shadow {
            self.metrics
                .authz_dry_run(self.port, *shadow == Verdict::Allow);
        }
        if outcome.audit {
            self.metrics.authz_audited(self.port);
            tracing::info!(target: "access", direction = self.direction, peer = %self.peer, port = self.port, path = %finish.path, verdict = ?outcome.verdict, "audited by AuthorizationPolicy");
        }
        match outcome.verdict {
            Verdict::Allow => Ok(finish),
            Verdict::Deny { policy } => {
                self.metrics.authz_denied(self.port, &policy);
                tracing::info!(peer = %self.peer, port = self.port, %policy, "request denied by authorization");
                Err(Box::new(finish.local(
                    StatusCode::FORBIDDEN,
                    flags::RBAC_BODY,
                    flags::RBAC_DENIED,
                )))
            }
            Verdict::BadRequest { reason } => {
                tracing::info!(peer = %self.peer, port = self.port, reason, "bad request");
                Err(Box::new(finish.local(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    flags::NONE,
                )))
            }
        }
    }
}

/// Applies RequestAuthentication's edits: headers, and the URI when a token is taken out of
/// the query (the access log then shows the path without it too).
fn apply_edits(req: &mut Request<Incoming>, finish: &mut Finish, edits: &HeaderEdits) {
    edits.apply(req.headers_mut());
    let Some(pq) = edits.path_and_query.as_deref() else {
        return;
    };
    let Ok(pq) = http::uri::PathAndQuery::try_from(pq) else {
        return;
    };
    let mut uri = std::mem::take(req.uri_mut()).into_parts();
    uri.path_and_query = Some(pq);
    // The parts of a URI hyper parsed, with a valid path: always rebuilds.
    if let Ok(new) = http::Uri::from_parts(uri) {
        finish.path = pq_string(&new);
        *req.uri_mut() = new;
    }
}

fn pq_string(uri: &http::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
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
