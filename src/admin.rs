//! The admin, metrics and readiness HTTP servers (hyper).
//!
//! Each listener serves a fixed set of paths: the admin listener (127.0.0.1:15000 by default)
//! serves everything, the metrics listener (`:15090`) only `/stats/prometheus`, the readiness
//! listener (`:15021`) only `/healthz/ready`. What a path answers is supplied by the wiring as
//! a [`Handler`], so this module knows HTTP, not sidecar internals.

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
