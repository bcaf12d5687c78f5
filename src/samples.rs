//! The labs' sample app as small real HTTP services: `sentences` (the front end) calls `age`
//! and `name`; `name` runs as two versions. They know nothing about the mesh: they talk plain
//! HTTP to 127.0.0.1 and their sidecars do the rest. Used by `outrider demo`, the
//! docker-compose file (`outrider sample-app`) and `cargo run --example <service>`.
//!
//! Beside them, [`auth`] is the labs' identity provider: a small OIDC issuer of access tokens
//! for RequestAuthentication (a sample, not a product identity provider).

pub mod auth;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::fetch::FetchError;

/// Which service to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Answers a random age.
    Age,
    /// Answers a random name (v2 answers in capitals).
    Name,
    /// Calls `name` and `age` and answers a sentence.
    Sentences,
    /// A small OIDC issuer for the labs ([`auth`]).
    Auth,
}

impl std::str::FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Service, String> {
        match s {
            "age" => Ok(Service::Age),
            "name" => Ok(Service::Name),
            "sentences" => Ok(Service::Sentences),
            "auth" => Ok(Service::Auth),
            other => Err(format!(
                "{other:?} is not a sample service (age, name, sentences, auth)"
            )),
        }
    }
}

/// One service of the sample app (`outrider sample-app`).
#[derive(Debug, Clone)]
pub struct SampleConfig {
    pub service: Service,
    /// Where the service listens (its sidecar's `targetPort`).
    pub listen: SocketAddr,
    /// The version label it reports (`v1`, `v2`).
    pub version: String,
    /// For `sentences`: where `name` is reached (its sidecar's outbound bind address).
    pub name_addr: Option<String>,
    /// For `sentences`: where `age` is reached.
    pub age_addr: Option<String>,
    /// For `auth`: realm, issuer, users, key and token lifetime.
    pub auth: auth::AuthConfig,
}

impl SampleConfig {
    pub fn run(self) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            if self.service == Service::Auth {
                let issuer = auth::Issuer::bind(self.listen, &self.auth).await?;
                // The address last: a test that bound port 0 reads it from this line.
                println!(
                    "auth: issuer {} (kid {}), listening on {}",
                    issuer.issuer(),
                    issuer.kid(),
                    issuer.local_addr()
                );
                issuer.run().await;
                return Ok(());
            }
            let listener = TcpListener::bind(self.listen).await?;
            serve(listener, self).await;
            Ok(())
        })
    }
}

/// Serves HTTP/1.1 on `listener` forever.
pub async fn serve(listener: TcpListener, args: SampleConfig) {
    let args = std::sync::Arc::new(args);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let args = args.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let args = args.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&args, req.uri().path()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

async fn answer(args: &SampleConfig, path: &str) -> Response<Full<Bytes>> {
    use rand::Rng;
    if path == "/health_check" || path == "/healthz" {
        return reply(200, "ok".into());
    }
    match args.service {
        Service::Age => reply(200, rand::rng().random_range(1..100u32).to_string()),
        Service::Name => {
            let name = NAMES[rand::rng().random_range(0..NAMES.len())];
            let name = if args.version == "v1" {
                name.to_string()
            } else {
                name.to_uppercase()
            };
            reply(200, format!("{name} ({})", args.version))
        }
        Service::Sentences => {
            let (Some(name_addr), Some(age_addr)) = (&args.name_addr, &args.age_addr) else {
                return reply(500, "sentences needs --name-addr and --age-addr".into());
            };
            let (name, age) = tokio::join!(fetch(name_addr), fetch(age_addr));
            match (name, age) {
                (Ok(n), Ok(a)) => reply(200, format!("{n} is {a} years old")),
                (Err(e), _) => reply(502, format!("name failed: {e}")),
                (_, Err(e)) => reply(502, format!("age failed: {e}")),
            }
        }
        // Served by `auth::Issuer` instead (see `SampleConfig::run`).
        Service::Auth => reply(404, "not found".into()),
    }
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// A one-shot HTTP/1.1 GET of `/` returning the body of a 200 answer.
pub async fn fetch(addr: &str) -> Result<String, FetchError> {
    fetch_path(addr, "/").await
}

/// A one-shot HTTP/1.1 GET of `path` (5 s deadline) returning the body of a 200 answer.
pub async fn fetch_path(addr: &str, path: &str) -> Result<String, FetchError> {
    let answer = crate::fetch::get(addr, path, Duration::from_secs(5)).await?;
    match answer.status {
        200 => Ok(answer.body),
        status => Err(FetchError::Status(status)),
    }
}
