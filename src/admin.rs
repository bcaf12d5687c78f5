//! The admin, metrics and readiness HTTP servers (hyper).
//!
//! Each listener serves a fixed set of paths: the admin listener (127.0.0.1:15000 by default)
//! serves everything, the metrics listener (`:15090`) only `/stats/prometheus`, the readiness
//! listener (`:15021`) only `/healthz/ready`. What a path answers is a [`Handler`]; the
//! sidecar's is [`sidecar_routes`], which reads live handles (cert store, runtime, metrics).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::reload::ReloadStats;
use crate::identity::{CertStore, Identity};
use crate::metrics::Metrics;
use crate::proxy::plaintext::PlaintextLog;
use crate::proxy::Runtime;

/// A response: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
    pub fn json(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

/// Answers a path (`/certs`), or `None` for "not found".
pub type Handler = Arc<dyn Fn(&str) -> Option<Reply> + Send + Sync>;

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Metrics,
    Ready,
}

impl Role {
    fn allows(self, path: &str) -> bool {
        match self {
            Role::Admin => true,
            Role::Metrics => path == "/stats/prometheus" || path == "/metrics",
            Role::Ready => path == "/healthz/ready",
        }
    }
}

/// A bound HTTP listener.
pub struct HttpServer {
    listener: TcpListener,
    role: Role,
}

impl HttpServer {
    /// Binds now, so a conflict fails start-up with the address in the message.
    pub async fn bind(addr: SocketAddr, role: Role) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({role:?}): {e}"))
        })?;
        Ok(HttpServer { listener, role })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` turns true.
    pub async fn run(self, handler: Handler, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::shutdown::draining(&mut shutdown) => return,
            };
            let handler = handler.clone();
            let role = self.role;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(respond(role, &handler, req.uri().path())) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
            });
        }
    }
}

fn respond(role: Role, handler: &Handler, path: &str) -> Response<Full<Bytes>> {
    let reply = if role.allows(path) {
        handler(path)
    } else {
        None
    };
    let reply = reply.unwrap_or_else(|| Reply::text(404, "not found\n"));
    Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", reply.content_type)
        .body(Full::new(Bytes::from(reply.body)))
        .expect("static response parts are valid")
}

/// What the admin routes read: live handles, never copies of the data.
pub struct AdminState {
    pub store: CertStore,
    pub metrics: Metrics,
    pub plaintext: Arc<PlaintextLog>,
    pub runtime: watch::Receiver<Arc<Runtime>>,
    pub reload_stats: Arc<ReloadStats>,
    /// The listeners as `/config_dump` shows them.
    pub listeners: watch::Receiver<serde_json::Value>,
    pub warnings: Vec<String>,
    /// A gateway's edge certificates, listed by `/certs` under `edge`.
    pub edge: Option<crate::gateway::EdgeCertificates>,
}

/// The sidecar's admin routes: `/healthz/ready`, `/stats/prometheus`, `/config_dump`,
/// `/certs`, `/plaintext`.
pub fn sidecar_routes(state: AdminState) -> Handler {
    use std::sync::atomic::Ordering;
    Arc::new(move |path: &str| {
        let identity = state.store.current();
        match path {
            "/healthz/ready" => Some(match identity {
                Some(_) => Reply::text(200, "ready\n"),
                None => Reply::text(503, "no workload certificate yet\n"),
            }),
            "/stats/prometheus" | "/metrics" => {
                let stats = state.store.stats();
                state.metrics.set_identity_state(
                    identity.as_ref().map(|i| i.svid.not_after),
                    stats.rotations,
                    stats.rejected + stats.rotation_failures,
                );
                state.metrics.set_reloads(
                    state.reload_stats.ok.load(Ordering::Relaxed),
                    state.reload_stats.failed.load(Ordering::Relaxed),
                );
                Some(Reply {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: state.metrics.encode(),
                })
            }
            "/config_dump" => {
                let rt = state.runtime.borrow().clone();
                let dump = serde_json::json!({
                    "plan": &*rt.plan,
                    "listeners": &*state.listeners.borrow(),
                    "warnings": &state.warnings,
                });
                Some(Reply::json(
                    serde_json::to_string_pretty(&dump).unwrap_or_default(),
                ))
            }
            "/certs" => Some(match identity {
                None => Reply::text(503, "no workload certificate yet\n"),
                Some(i) => {
                    let mut doc = certs_json(&i);
                    if let (Some(edge), Some(map)) = (&state.edge, doc.as_object_mut()) {
                        map.insert("edge".into(), edge.describe());
                    }
                    Reply::json(serde_json::to_string_pretty(&doc).unwrap_or_default())
                }
            }),
            "/plaintext" => Some(Reply::json(
                serde_json::to_string_pretty(&state.plaintext.clients()).unwrap_or_default(),
            )),
            "/" => Some(Reply::text(
                200,
                "outrider admin: /config_dump /certs /plaintext /stats/prometheus /healthz/ready\n",
            )),
            _ => None,
        }
    })
}

/// The `/certs` document: own SPIFFE ID, each certificate of the chain (serial, validity,
/// PEM), and the trust bundle per trust domain.
fn certs_json(identity: &Identity) -> serde_json::Value {
    let describe = |der: &rustls::pki_types::CertificateDer<'_>| {
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => serde_json::json!({
                "subject": cert.subject().to_string(),
                "issuer": cert.issuer().to_string(),
                "serial": cert.raw_serial_as_string().replace(':', ""),
                "not_before": cert.validity().not_before.to_rfc2822().unwrap_or_default(),
                "not_after": cert.validity().not_after.to_rfc2822().unwrap_or_default(),
                "pem": pem,
            }),
            Err(_) => serde_json::json!({ "pem": pem }),
        }
    };
    let svid = &identity.svid;
    let not_after = svid
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let bundle: serde_json::Map<String, serde_json::Value> = identity
        .bundle
        .trust_domains()
        .into_iter()
        .map(|td| {
            let roots = identity
                .bundle
                .roots(&td)
                .unwrap_or_default()
                .iter()
                .map(describe)
                .collect();
            (td, serde_json::Value::Array(roots))
        })
        .collect();
    serde_json::json!({
        "spiffe_id": svid.id.to_string(),
        "serial": svid.serial_hex,
        "not_after_unix": not_after,
        "chain": svid.chain().iter().map(describe).collect::<Vec<_>>(),
        "trust_bundle": bundle,
    })
}
