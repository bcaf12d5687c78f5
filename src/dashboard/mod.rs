//! `outrider dashboard`: a live service graph of the mesh, with a padlock on every edge
//! carried over mutual TLS and an open, red edge wherever plaintext still flows (Kiali's view,
//! without Kubernetes or a control plane).
//!
//! The numbers come from the metrics the sidecars already export (scraped directly, or from a
//! Prometheus server, see [`source`]); [`graph`] turns per-second rates into nodes and edges
//! (a pure function); [`page`] lays the graph out and draws it as SVG. The server is read-only
//! and serves:
//! - `/`: the page (every asset inline: it loads nothing from anywhere else);
//! - `/api/graph?window=5m`: the graph as JSON, for scripts and tests;
//! - `/api/graph.svg?window=5m`: the drawing the page swaps in on each refresh;
//! - `/plaintext`: every reachable sidecar's plaintext-client list, the list to clean up
//!   before switching to STRICT.

pub mod graph;
pub mod page;
pub mod source;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use self::source::{Histories, Prometheus};

/// The longest window the page offers; scraped history is kept this long.
const LONGEST_WINDOW: Duration = Duration::from_secs(30 * 60);

/// Where the rates come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Sidecars' `/stats/prometheus` (`host:port` each), read every `interval`.
    Scrape(Vec<String>),
    /// A Prometheus server's HTTP API (`http://host:port`), queried per refresh.
    Prometheus(String),
}

/// One `outrider dashboard`.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Where the page is served (loopback by default: it shows the mesh's topology).
    pub listen: SocketAddr,
    pub source: Source,
    /// Sidecar admin endpoints (`host:port`) to read `/config_dump` and `/plaintext` from,
    /// besides the `--scrape` targets (which are tried too: an admin listener serves metrics).
    pub admin: Vec<String>,
    /// How often targets are read and the page refreshes.
    pub interval: Duration,
    /// The window the page opens with.
    pub window: Duration,
}

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl DashboardOptions {
    /// Runs until Ctrl-C.
    pub fn run(self) -> Result<(), DashboardError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(DashboardError::Runtime)?;
        rt.block_on(async move {
            let dashboard = Dashboard::bind(self).await?;
            println!(
                "outrider dashboard: http://{}/ (JSON: /api/graph, plaintext clients: /plaintext)",
                dashboard.local_addr()
            );
            tokio::select! {
                () = dashboard.serve() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        })
    }
}

/// A bound dashboard.
pub struct Dashboard {
    listener: TcpListener,
    state: Arc<State>,
}

struct State {
    options: DashboardOptions,
    prometheus: Option<Prometheus>,
    histories: Histories,
    /// `host:port` targets polled every interval, and whether their metrics are wanted.
    targets: Vec<(String, bool)>,
}

impl Dashboard {
    /// Binds now, so a taken port fails start-up with the address in the message.
    pub async fn bind(options: DashboardOptions) -> Result<Dashboard, DashboardError> {
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|error| DashboardError::Bind {
                    addr: options.listen,
                    error,
                })?;
        let (prometheus, mut targets) = match &options.source {
            Source::Scrape(t) => (None, t.iter().map(|t| (t.clone(), true)).collect()),
            Source::Prometheus(url) => (Some(Prometheus::new(url)?), Vec::new()),
        };
        for a in &options.admin {
            if !targets.iter().any(|(t, _)| t == a) {
                targets.push((a.clone(), false));
            }
        }
        Ok(Dashboard {
            listener,
            state: Arc::new(State {
                options,
                prometheus,
                histories: Histories::default(),
                targets,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Polls the targets and serves the page, forever.
    pub async fn serve(self) {
        tokio::spawn(poll_forever(self.state.clone()));
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(respond(&state, &req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(Duration::from_secs(120), conn).await;
            });
        }
    }
}

/// Reads every target once per interval, all at once; a target that fails keeps its history
/// and shows its error in the graph's `sources`.
async fn poll_forever(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keep = LONGEST_WINDOW.max(state.options.window) + state.options.interval * 2;
    loop {
        tick.tick().await;
        let mut set = tokio::task::JoinSet::new();
        for (target, metrics) in state.targets.clone() {
            set.spawn(async move {
                let result = source::poll(&target, metrics).await;
                (target, Instant::now(), result)
            });
        }
        while let Some(done) = set.join_next().await {
            let Ok((target, at, result)) = done else {
                continue;
            };
            match result {
                Ok(snapshot) => {
                    state.histories.push(&target, at, snapshot, keep);
                    state.histories.set_error(&target, None);
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "dashboard source unreachable");
                    state.histories.set_error(&target, Some(e.to_string()));
                }
            }
        }
    }
}

/// The graph over `window`, and the sources that could not be read.
async fn current_graph(state: &State, window: Duration) -> (graph::Graph, Vec<String>) {
    let (mut rates, sidecars) = state.histories.read(window);
    let mut errors: Vec<String> = state.histories.errors().into_values().collect();
    if let Some(p) = &state.prometheus {
        match p.rates(window).await {
            Ok(r) => rates.extend(r),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (graph::build(&rates, &sidecars), errors)
}

/// `window=5m` from a query string, else the default; never shorter than two intervals
/// (a rate needs two snapshots) nor longer than the history kept.
fn window_of(query: Option<&str>, options: &DashboardOptions) -> Duration {
    let asked = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("window="))
        .and_then(|w| crate::duration::parse(w).ok())
        .unwrap_or(options.window);
    asked
        .max(options.interval * 2)
        .min(LONGEST_WINDOW.max(options.window))
}

async fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "read-only: GET only\n".into(),
        );
    }
    let window = window_of(req.uri().query(), &state.options);
    match req.uri().path() {
        "/" => {
            let (g, _) = current_graph(state, window).await;
            let source = match &state.options.source {
                Source::Scrape(t) => format!("scraping {} sidecar(s)", t.len()),
                Source::Prometheus(url) => format!("Prometheus {url}"),
            };
            let html = page::html(
                &page::svg(&g),
                window.as_secs(),
                state.options.interval.as_millis().max(1000) as u64,
                &source,
            );
            reply(StatusCode::OK, "text/html; charset=utf-8", html)
        }
        "/api/graph" => {
            let (g, errors) = current_graph(state, window).await;
            let body = serde_json::json!({
                "window_seconds": window.as_secs(),
                "nodes": g.nodes,
                "edges": g.edges,
                "errors": errors,
            });
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        "/api/graph.svg" => {
            let (g, _) = current_graph(state, window).await;
            reply(StatusCode::OK, "image/svg+xml", page::svg(&g))
        }
        "/plaintext" => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&state.histories.plaintext()).unwrap_or_default(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: / /api/graph /api/graph.svg /plaintext\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let options = DashboardOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            source: Source::Scrape(vec![]),
            admin: vec![],
            interval: Duration::from_secs(5),
            window: Duration::from_secs(300),
        };
        let w = |q: Option<&str>| window_of(q, &options).as_secs();
        assert_eq!(w(None), 300);
        assert_eq!(w(Some("window=1m")), 60);
        assert_eq!(w(Some("x=1&window=15m")), 900);
        assert_eq!(w(Some("window=1s")), 10);
        assert_eq!(w(Some("window=7d")), 1800);
        assert_eq!(w(Some("window=bogus")), 300);
    }
}
