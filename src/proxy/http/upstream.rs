//! Keep-alive connection pools to the local app: one HTTP client per app port and protocol
//! (HTTP/1.1 to an HTTP app, HTTP/2 to an HTTP2 or GRPC app), shared by every connection of
//! the sidecar, so a request does not pay a TCP connect to the app.
//!
//! The pool is hyper-util's client; its connector ignores the request's authority and always
//! dials the app, so requests keep the `Host`/`:authority` the client sent.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::RequestBody;

/// How long an idle pooled connection to the app is kept.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP client towards one app port.
pub type AppClient = Client<AppConnector, RequestBody>;

/// The pools of one sidecar, by (app address, HTTP/2).
#[derive(Default)]
pub struct AppClients {
    by_app: Mutex<HashMap<(SocketAddr, bool), AppClient>>,
}

impl AppClients {
    /// The client for `app` (made on first use, once per connection, not per request).
    pub fn get(&self, app: SocketAddr, http2: bool, connect_timeout: Duration) -> AppClient {
        let mut by_app = self.by_app.lock().unwrap_or_else(|p| p.into_inner());
        by_app
            .entry((app, http2))
            .or_insert_with(|| {
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(APP_IDLE_TIMEOUT)
                    .http2_only(http2);
                builder.build(AppConnector {
                    app,
                    connect_timeout,
                })
            })
            .clone()
    }
}

/// Dials the app, whatever the request's URI says.
#[derive(Clone)]
pub struct AppConnector {
    app: SocketAddr,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (app, timeout) = (self.app, self.connect_timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(app))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            crate::proxy::tune(&stream);
            Ok(TokioIo::new(stream))
        })
    }
}

/// Whether a client error happened while connecting (nothing was sent to the app).
pub fn is_connect_error(e: &hyper_util::client::legacy::Error) -> bool {
    e.is_connect()
}
