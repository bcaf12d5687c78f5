//! The JWKS fetcher: keeps the key sets of RequestAuthentication's `jwtRules` fresh, off the
//! request path.
//!
//! Each configured source (a `jwksUri`, or an issuer to discover) gets one background task
//! that fetches its document and hands it to the [`JwksSink`]s that want it — the JWT
//! validator's key slots, which parse it and publish the keys for the data path to read. The
//! data path never waits for a fetch: without a good document a sink holds no keys and every
//! token fails (fail closed).
//!
//! The timing follows istiod's JWKS resolver (SEMANTICS.md §5), with every interval in
//! [`FetchConfig`] so tests run in milliseconds:
//! - a new source is fetched at once; after a success, again every [`FetchConfig::refresh`]
//!   (20 min);
//! - after a failure, retried after [`FetchConfig::retry_min`] (1 min), doubling per
//!   consecutive failure up to [`FetchConfig::retry_max`] (60 min); a failed fetch leaves the
//!   sinks' previous keys in place;
//! - when a sink reports an unknown `kid` ([`JwksSink::take_refresh_request`], polled every
//!   [`FetchConfig::poll`]), a healthy source is fetched early, but not sooner than
//!   [`FetchConfig::early_refresh_min`] after its last fetch; while a source is failing, the
//!   backoff decides and such requests are dropped.
//!
//! A fetch is one GET (two for OIDC discovery: the issuer's
//! `/.well-known/openid-configuration`, then its `jwks_uri`), bounded as a whole by the
//! source's timeout (5 s by default), with a capped body; anything but a 2xx answer is a
//! failure, redirects are not followed, and a body the sink cannot parse is a failure too.
//! https is always verified, against [`FetchConfig::ca_file`] or the compiled-in Mozilla
//! roots, with the usual DNS/IP name check.
//!
//! Observability: `outrider_jwks_fetches_total{source,result}`, `outrider_jwks_keys{source}`
//! and `outrider_jwks_last_success_timestamp_seconds{source}` ([`JwksMetrics`]), where
//! `source` is the JWKS URI, or the issuer for a source found by discovery (stable even when
//! the discovered URI changes). One warning per failed fetch, one info line when a source's
//! key count changes.

mod client;
mod schedule;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::JwksMetrics;

use client::Client;
use schedule::{Intervals, Schedule};

/// Where fetched keys are published; implemented by the JWT validator's key slot.
///
/// Both methods are called from the fetcher's tasks (and [`Jwks::set_targets`]), never
/// from the data path, and must not block for long.
pub trait JwksSink: Send + Sync + 'static {
    /// Parses and publishes a fetched JWKS document: `Ok(number of usable keys)`, or
    /// `Err(reason)` when the body does not parse — a failed fetch, after which the sink
    /// must keep its previous keys.
    fn publish(&self, body: &[u8]) -> Result<usize, String>;

    /// True once after the data path saw an unknown `kid` (asks for an early refresh; the
    /// fetcher rate-limits it).
    fn take_refresh_request(&self) -> bool;
}

/// The JWT validator's key slot is the fetcher's usual sink: a document is parsed into a
/// [`KeySet`](crate::policy::jwt::KeySet) and published; one without a usable key is refused
/// and the slot keeps the keys it had.
impl JwksSink for crate::policy::jwt::KeySlot {
    fn publish(&self, body: &[u8]) -> Result<usize, String> {
        let keys = crate::policy::jwt::KeySet::from_json(body).map_err(|e| e.to_string())?;
        let count = keys.len();
        crate::policy::jwt::KeySlot::publish(self, Arc::new(keys));
        Ok(count)
    }

    fn take_refresh_request(&self) -> bool {
        crate::policy::jwt::KeySlot::take_refresh_request(self)
    }
}

/// The fetcher's targets for the remote key sources of an authenticator (the slots stay
/// owned by it; the fetcher keeps them filled).
pub fn targets_of(authenticator: &crate::policy::jwt::Authenticator) -> Vec<Target> {
    authenticator
        .remote_sources()
        .into_iter()
        .map(|(source, timeout, slot)| Target {
            source: match source {
                crate::policy::jwt::JwksSource::Uri(uri) => JwksSource::Uri(uri.clone()),
                crate::policy::jwt::JwksSource::Discovery { issuer } => JwksSource::Discovery {
                    issuer: issuer.clone(),
                },
            },
            timeout,
            sink: slot.clone() as Arc<dyn JwksSink>,
        })
        .collect()
}

/// Where a key set is published.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwksSource {
    /// A `jwksUri` (http or https).
    Uri(String),
    /// No `jwksUri`: OIDC discovery, `<issuer>/.well-known/openid-configuration` names the
    /// `jwks_uri` (looked up again on every fetch).
    Discovery {
        /// The `issuer` of the rule.
        issuer: String,
    },
}

impl JwksSource {
    /// The `source` label of this source's metrics and logs: the URI, or the issuer.
    pub fn label(&self) -> &str {
        match self {
            JwksSource::Uri(uri) => uri,
            JwksSource::Discovery { issuer } => issuer,
        }
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Uri(uri) => f.write_str(uri),
            JwksSource::Discovery { issuer } => write!(f, "discovery of {issuer}"),
        }
    }
}

/// One consumer of one source's keys.
#[derive(Clone)]
pub struct Target {
    /// Where the keys come from.
    pub source: JwksSource,
    /// The deadline of a whole fetch (the rule's `timeout`; Istio's default is 5 s). Targets
    /// that share a source share its fetches, under the longest of their timeouts.
    pub timeout: Duration,
    /// Where the keys go.
    pub sink: Arc<dyn JwksSink>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("source", &self.source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The fetch timeout of a rule that sets none (Istio's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the fetcher works: trust, intervals, limits. [`Default`] holds Istio's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchConfig {
    /// PEM bundle that https JWKS servers must chain to (`--jwks-ca`); `None`: Mozilla's
    /// roots, compiled in.
    pub ca_file: Option<PathBuf>,
    /// Refresh after a successful fetch (20 min).
    pub refresh: Duration,
    /// First retry after a failed fetch (1 min), doubling per consecutive failure...
    pub retry_min: Duration,
    /// ...up to this (60 min).
    pub retry_max: Duration,
    /// Least time between the last fetch and an early refresh for an unknown `kid` (60 s).
    pub early_refresh_min: Duration,
    /// How often the sinks are asked for early-refresh requests (1 s).
    pub poll: Duration,
    /// Largest accepted body, per GET (1 MiB).
    pub max_body: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            ca_file: None,
            refresh: Duration::from_secs(20 * 60),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(60 * 60),
            early_refresh_min: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            max_body: 1 << 20,
        }
    }
}

impl FetchConfig {
    fn intervals(&self) -> Intervals {
        Intervals {
            refresh: self.refresh,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            early_refresh_min: self.early_refresh_min,
        }
    }
}

/// Why the fetcher cannot start, or why one fetch failed (the reason logged and counted).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("{uri}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{uri}: cannot connect: {error}")]
    Connect { uri: String, error: std::io::Error },
    #[error("{uri}: TLS handshake failed: {error}")]
    Tls { uri: String, error: std::io::Error },
    #[error("{uri}: HTTP exchange failed: {reason}")]
    Http { uri: String, reason: String },
    #[error("{uri}: answered {status}")]
    Status { uri: String, status: u16 },
    #[error("{uri}: answered {status} to {location:?} (redirects are not followed)")]
    Redirect {
        uri: String,
        status: u16,
        location: String,
    },
    #[error("{uri}: body larger than {limit} bytes")]
    TooLarge { uri: String, limit: usize },
    #[error("{url}: not an OpenID provider configuration: {reason}")]
    Discovery { url: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the JWKS document was refused: {0}")]
    Refused(String),
}

/// The running fetcher: one task per source, stopped when the drain starts or this handle
/// is dropped.
pub struct Jwks {
    shared: Arc<Shared>,
    sources: Mutex<HashMap<JwksSource, Running>>,
}

/// What every source task uses.
struct Shared {
    client: Client,
    intervals: Intervals,
    poll: Duration,
    metrics: JwksMetrics,
    shutdown: watch::Receiver<bool>,
    runtime: tokio::runtime::Handle,
}

/// One source's task and the state it shares with [`Jwks::set_targets`].
struct Running {
    state: Arc<SourceState>,
    task: JoinHandle<()>,
}

/// One source: its consumers and its last good document, under one lock so a document is
/// never published into a sink after a newer one.
struct SourceState {
    source: JwksSource,
    inner: Mutex<SourceInner>,
}

struct SourceInner {
    sinks: Vec<Arc<dyn JwksSink>>,
    timeout: Duration,
    last_good: Option<Bytes>,
    keys: Option<usize>,
}

impl Jwks {
    /// Starts the fetcher with no sources (see [`Jwks::set_targets`]); must be called inside
    /// a tokio runtime. `shutdown` turning `true` stops every fetch (see
    /// [`crate::shutdown::Shutdown::watch`]). Fails only on an unusable `ca_file`.
    pub fn spawn(
        config: FetchConfig,
        metrics: JwksMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Jwks, JwksError> {
        let client = Client::new(config.ca_file.as_deref(), config.max_body)?;
        Ok(Jwks {
            shared: Arc::new(Shared {
                client,
                intervals: config.intervals(),
                poll: config.poll,
                metrics,
                shutdown,
                runtime: tokio::runtime::Handle::current(),
            }),
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the set of sources (on load and on every configuration reload).
    ///
    /// A source already known keeps its schedule and its last good document, which is
    /// published into its new sinks before this returns (so a reload never goes back to
    /// failing closed); a new source is fetched at once; a source no longer named stops
    /// (its key and timestamp gauges are removed).
    pub fn set_targets(&self, targets: Vec<Target>) {
        let mut wanted: HashMap<JwksSource, (Vec<Arc<dyn JwksSink>>, Duration)> = HashMap::new();
        for target in targets {
            let (sinks, timeout) = wanted
                .entry(target.source)
                .or_insert_with(|| (Vec::new(), Duration::ZERO));
            sinks.push(target.sink);
            *timeout = (*timeout).max(target.timeout);
        }
        let mut sources = lock(&self.sources);
        sources.retain(|source, running| {
            let keep = wanted.contains_key(source);
            if !keep {
                running.task.abort();
                self.shared.metrics.forget(source.label());
                tracing::info!(source = source.label(), "JWKS source dropped");
            }
            keep
        });
        for (source, (sinks, timeout)) in wanted {
            if let Some(running) = sources.get(&source) {
                running.state.replace_sinks(sinks, timeout);
                continue;
            }
            let state = Arc::new(SourceState {
                source: source.clone(),
                inner: Mutex::new(SourceInner {
                    sinks,
                    timeout,
                    last_good: None,
                    keys: None,
                }),
            });
            let task = self
                .shared
                .runtime
                .spawn(run_source(self.shared.clone(), state.clone()));
            sources.insert(source, Running { state, task });
        }
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        for running in lock(&self.sources).values() {
            running.task.abort();
        }
    }
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<JwksSource> = lock(&self.sources).keys().cloned().collect();
        f.debug_struct("Jwks").field("sources", &sources).finish()
    }
}

impl SourceState {
    /// New consumers: the ones not served before get the last good document at once.
    fn replace_sinks(&self, sinks: Vec<Arc<dyn JwksSink>>, timeout: Duration) {
        let mut inner = lock(&self.inner);
        if let Some(body) = inner.last_good.clone() {
            for sink in &sinks {
                if inner.sinks.iter().any(|old| same_sink(old, sink)) {
                    continue;
                }
                if let Err(reason) = sink.publish(&body) {
                    tracing::warn!(
                        source = self.source.label(),
                        %reason,
                        "a new consumer refused the last good JWKS document"
                    );
                }
            }
        }
        inner.sinks = sinks;
        inner.timeout = timeout;
    }

    fn timeout(&self) -> Duration {
        lock(&self.inner).timeout
    }

    /// Asks every sink (each request is taken once); true if any asked.
    fn refresh_requested(&self) -> bool {
        let inner = lock(&self.inner);
        inner
            .sinks
            .iter()
            .fold(false, |asked, sink| sink.take_refresh_request() | asked)
    }

    /// Publishes a fetched document into every sink; it becomes the last good one unless a
    /// sink refuses it. Returns the usable key count and the previous one.
    fn publish(&self, body: Bytes) -> Result<(usize, Option<usize>), JwksError> {
        let mut inner = lock(&self.inner);
        let mut keys = 0;
        for sink in &inner.sinks {
            keys = keys.max(sink.publish(&body).map_err(JwksError::Refused)?);
        }
        inner.last_good = Some(body);
        let previous = inner.keys.replace(keys);
        Ok((keys, previous))
    }
}

/// Whether two handles point at the same sink (compared by address only: the vtable part of
/// a `dyn` pointer may differ between codegen units).
fn same_sink(a: &Arc<dyn JwksSink>, b: &Arc<dyn JwksSink>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// A poisoned lock still holds consistent data here (every critical section is a few
/// assignments and sink calls): keep using it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resolves when the drain starts (never, if no one can start it any more).
async fn drained(mut shutdown: watch::Receiver<bool>) {
    if shutdown.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The life of one source: fetch when due, watch for early-refresh requests, stop at drain.
async fn run_source(shared: Arc<Shared>, state: Arc<SourceState>) {
    let drain = drained(shared.shutdown.clone());
    tokio::pin!(drain);
    let mut schedule = Schedule::new(shared.intervals, std::time::Instant::now());
    let mut poll = tokio::time::interval(shared.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut drain => return,
            _ = tokio::time::sleep_until(Instant::from_std(schedule.due())) => {}
            _ = poll.tick() => {
                if state.refresh_requested() {
                    schedule.request_early();
                }
                continue;
            }
        }
        let result = tokio::select! {
            _ = &mut drain => return,
            result = fetch(&shared.client, &state) => result,
        };
        let now = std::time::Instant::now();
        let label = state.source.label();
        match result {
            Ok((keys, previous)) => {
                schedule.succeeded(now);
                shared
                    .metrics
                    .fetch_succeeded(label, keys, SystemTime::now());
                if previous != Some(keys) {
                    tracing::info!(source = label, keys, previous, "JWKS keys loaded");
                }
            }
            Err(error) => {
                let retry = schedule.failed(now);
                shared.metrics.fetch_failed(label);
                tracing::warn!(source = label, %error, ?retry, "JWKS fetch failed");
            }
        }
    }
}

/// One fetch of a source's document, published into its sinks.
async fn fetch(client: &Client, state: &SourceState) -> Result<(usize, Option<usize>), JwksError> {
    let timeout = state.timeout();
    let body = tokio::time::timeout(timeout, client.jwks(&state.source))
        .await
        .map_err(|_| JwksError::Timeout(timeout))??;
    state.publish(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::jwt::{Authenticator, KeySlot, Keys, Provider};

    #[test]
    fn a_key_slot_publishes_usable_documents_and_keeps_its_keys_on_a_bad_one() {
        let slot = KeySlot::new();
        let sink: &dyn JwksSink = &slot;
        let good = br#"{"keys": [{"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"a"},
                                 {"kty":"oct","k":"b3RoZXI","alg":"HS256","kid":"b"}]}"#;
        assert_eq!(sink.publish(good), Ok(2));
        let published = slot.current().expect("keys published");
        assert!(published.matches_kid("a"));
        assert!(sink.publish(b"not json").is_err());
        assert!(sink.publish(br#"{"keys": []}"#).is_err());
        assert!(
            Arc::ptr_eq(&published, &slot.current().unwrap()),
            "old keys stay"
        );

        assert!(!sink.take_refresh_request());
        slot.request_refresh();
        assert!(sink.take_refresh_request());
        assert!(!sink.take_refresh_request(), "taken once");
    }

    #[test]
    fn targets_map_each_remote_source_to_its_slot() {
        let slot = Arc::new(KeySlot::new());
        let remote = |source| Keys::Remote {
            source,
            timeout: Duration::from_secs(3),
            slot: slot.clone(),
        };
        let auth = Authenticator::new(vec![
            Provider::new(
                "a",
                "https://a",
                remote(crate::policy::jwt::JwksSource::Discovery {
                    issuer: "https://a".into(),
                }),
            ),
            // The same slot again: one target.
            Provider::new(
                "b",
                "https://a",
                remote(crate::policy::jwt::JwksSource::Discovery {
                    issuer: "https://a".into(),
                }),
            ),
        ]);
        let targets = targets_of(&auth);
        assert_eq!(targets.len(), 1);
        assert_eq!(
            targets[0].source,
            JwksSource::Discovery {
                issuer: "https://a".into()
            }
        );
        assert_eq!(targets[0].timeout, Duration::from_secs(3));
        let sink: Arc<dyn JwksSink> = slot.clone();
        assert!(same_sink(&targets[0].sink, &sink));
        assert!(targets_of(&Authenticator::default()).is_empty());
    }
}
