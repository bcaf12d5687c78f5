//! The live connections of one listener, so a reload can act on connections that are
//! already open: close the ones a port's new mode refuses (plaintext after a move to
//! STRICT), or drain a listener that left the configuration and close what is left at the
//! deadline.
//!
//! A TCP port's connections also leave here what AuthorizationPolicy reads about them
//! ([`AuthzFacts`]), and are authorized under the registry's lock against the port's newest
//! [`Authorizer`]: a reload installs its authorizer and re-checks every open connection in one
//! step ([`LiveConnections::reauthorize`]), so a connection is either checked against the new
//! policy when it arrives, or found open and checked by the reload.
//!
//! Each connection runs in its own task, registered here with the task's abort handle and
//! what the connection carries. Registering and deregistering take a short lock once per
//! connection; the copy loop never sees this registry. Closing is an abort: the task's future
//! is dropped, which closes both sockets and still reports the connection's last bytes and
//! its close to the metrics (their guards flush on drop).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::config::{MtlsMode, Protocol};
use crate::identity::SpiffeId;
use crate::policy::authz::{Authorizer, Connection, Outcome, Verdict};

/// What an inbound connection carries, once detection has decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// Accepted; the first bytes are still being read.
    Detecting,
    /// Mesh mTLS terminated here.
    Mtls,
    /// Plaintext passed to the app.
    Plain,
    /// TLS passed to the app untouched; `mesh` if the client offered the mesh ALPN.
    Passthrough { mesh: bool },
    /// An outbound connection (the mode of a port does not apply).
    Outbound,
}

/// Whether a connection that is already open may stay open under a port's (new) mode: the
/// same rule that admits a new connection (see `inbound::classify`). mTLS is never closed
/// (even under DISABLE, where a new one would be passed through instead); a connection
/// still in detection decides under the new mode by itself.
pub fn allowed_under(carried: Carried, mode: MtlsMode, protocol: Protocol) -> bool {
    let http = matches!(protocol, Protocol::Http | Protocol::Http2 | Protocol::Grpc);
    match (carried, mode) {
        (Carried::Detecting | Carried::Mtls | Carried::Outbound, _) => true,
        (_, MtlsMode::Disable) => true,
        (Carried::Plain, MtlsMode::Permissive) => true,
        (Carried::Passthrough { mesh }, MtlsMode::Permissive) => !mesh && !http,
        (Carried::Plain | Carried::Passthrough { .. }, MtlsMode::Strict) => false,
    }
}

/// The live connections of one listener.
#[derive(Default)]
pub struct LiveConnections {
    inner: Mutex<Inner>,
    /// Woken when the last connection deregisters (a drain waits on it).
    emptied: Notify,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_id: HashMap<u64, Entry>,
    /// The port's authorizer as the last reload installed it (`None` before the first).
    authorizer: Option<Arc<Authorizer>>,
}

struct Entry {
    carried: Carried,
    abort: AbortHandle,
    /// Recorded when the connection was authorized (TCP ports).
    facts: Option<Box<AuthzFacts>>,
}

/// What AuthorizationPolicy reads about a TCP connection, owned so a reload can ask again.
#[derive(Debug, Clone)]
pub struct AuthzFacts {
    pub peer: Option<SpiffeId>,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub sni: Option<String>,
}

impl AuthzFacts {
    pub fn connection(&self) -> Connection<'_> {
        Connection {
            peer: self.peer.as_ref(),
            source: self.source,
            destination: self.destination,
            sni: self.sni.as_deref(),
        }
    }
}

/// A connection's registration; dropping it (the task ended, or was aborted) deregisters.
pub struct Registration {
    id: u64,
    live: Arc<LiveConnections>,
}

impl LiveConnections {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (single inserts/removes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns a connection task and registers it. The task gets its [`Registration`] to
    /// record what it carries; the task cannot deregister before it is registered, because
    /// both take the lock and the spawn happens under it.
    pub fn spawn<F, Fut>(self: &Arc<Self>, task: F)
    where
        F: FnOnce(Registration) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let registration = Registration {
            id,
            live: self.clone(),
        };
        let handle = tokio::spawn(task(registration));
        inner.by_id.insert(
            id,
            Entry {
                carried: Carried::Detecting,
                abort: handle.abort_handle(),
                facts: None,
            },
        );
    }

    /// Closes every connection whose carriage `keep` refuses; returns how many.
    pub fn close_where(&self, keep: impl Fn(Carried) -> bool) -> usize {
        let inner = self.lock();
        let mut closed = 0;
        for entry in inner.by_id.values() {
            if !keep(entry.carried) && !entry.abort.is_finished() {
                entry.abort.abort();
                closed += 1;
            }
        }
        closed
    }

    /// Installs a reload's `authorizer` and closes the open connections it denies; returns
    /// the deciding policy of each one closed.
    pub fn reauthorize(&self, authorizer: Arc<Authorizer>) -> Vec<Arc<str>> {
        let mut inner = self.lock();
        let mut denied = Vec::new();
        for entry in inner.by_id.values() {
            let Some(facts) = &entry.facts else { continue };
            if entry.abort.is_finished() {
                continue;
            }
            if let Verdict::Deny { policy } =
                authorizer.check_connection(&facts.connection()).verdict
            {
                entry.abort.abort();
                denied.push(policy);
            }
        }
        inner.authorizer = Some(authorizer);
        denied
    }

    /// Closes every connection; returns how many.
    pub fn close_all(&self) -> usize {
        self.close_where(|_| false)
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once no connection is registered.
    pub async fn until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }
}

impl Registration {
    /// Records what the connection carries, deciding it under the registry's lock: `decide`
    /// reads the current plan, so a reload either happens before (and `decide` sees the new
    /// mode) or after (and the reload sees this connection's carriage and can close it).
    pub fn decide<T>(&self, decide: impl FnOnce() -> (Carried, T)) -> T {
        let mut inner = self.live.lock();
        let (carried, result) = decide();
        if let Some(entry) = inner.by_id.get_mut(&self.id) {
            entry.carried = carried;
        }
        result
    }
}

impl Registration {
    /// Authorizes the connection against the port's newest authorizer (`current`, the plan's,
    /// until a reload installs one here) and records its facts for later reloads, both under
    /// the registry's lock.
    pub fn authorize(&self, facts: AuthzFacts, current: &Arc<Authorizer>) -> Outcome {
        let mut inner = self.live.lock();
        let authorizer = inner.authorizer.clone().unwrap_or_else(|| current.clone());
        let outcome = authorizer.check_connection(&facts.connection());
        if let Some(entry) = inner.by_id.get_mut(&self.id) {
            entry.facts = Some(Box::new(facts));
        }
        outcome
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.live.lock();
        inner.by_id.remove(&self.id);
        if inner.by_id.is_empty() {
            self.live.emptied.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_mode_keeps_open() {
        use Carried::*;
        use MtlsMode::*;
        let tcp = Protocol::Tcp;
        let http = Protocol::Http;
        let table = [
            (Mtls, Strict, tcp, true),
            (Mtls, Permissive, tcp, true),
            (Mtls, Disable, tcp, true),
            (Plain, Strict, tcp, false),
            (Plain, Strict, http, false),
            (Plain, Permissive, tcp, true),
            (Plain, Disable, tcp, true),
            (Passthrough { mesh: false }, Strict, tcp, false),
            (Passthrough { mesh: false }, Permissive, tcp, true),
            (Passthrough { mesh: false }, Permissive, http, false),
            (Passthrough { mesh: true }, Permissive, tcp, false),
            (Passthrough { mesh: true }, Disable, tcp, true),
            (Detecting, Strict, tcp, true),
            (Outbound, Strict, tcp, true),
        ];
        for (carried, mode, protocol, keep) in table {
            assert_eq!(
                allowed_under(carried, mode, protocol),
                keep,
                "{carried:?} under {mode:?} on {protocol:?}"
            );
        }
    }

    #[tokio::test]
    async fn closing_aborts_only_the_refused_connections() {
        let live = Arc::new(LiveConnections::default());
        let (plain_tx, plain_rx) = tokio::sync::oneshot::channel::<()>();
        let (mtls_tx, mtls_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(2);
        for (carried, done) in [(Carried::Plain, plain_tx), (Carried::Mtls, mtls_tx)] {
            let started = started_tx.clone();
            live.spawn(move |reg| async move {
                reg.decide(|| (carried, ()));
                started.send(()).await.unwrap();
                std::future::pending::<()>().await;
                drop(done);
            });
        }
        started_rx.recv().await.unwrap();
        started_rx.recv().await.unwrap();
        assert_eq!(live.len(), 2);
        let closed = live.close_where(|c| allowed_under(c, MtlsMode::Strict, Protocol::Tcp));
        assert_eq!(closed, 1);
        // The aborted task dropped its end: the receiver sees the sender gone.
        assert!(plain_rx.await.is_err());
        tokio::task::yield_now().await;
        assert_eq!(live.len(), 1);
        assert_eq!(live.close_all(), 1);
        assert!(mtls_rx.await.is_err());
        tokio::time::timeout(std::time::Duration::from_secs(5), live.until_empty())
            .await
            .expect("the registry empties once every task is gone");
        assert!(live.is_empty());
    }

    #[tokio::test]
    async fn a_new_authorizer_closes_the_connections_it_denies() {
        use crate::policy::authz::matcher::NamespaceMatch;
        use crate::policy::authz::{Action, Field, Matcher, Policy, PortFacts, Rule};

        let live = Arc::new(LiveConnections::default());
        let allow_all = Authorizer::allow_all();
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(2);
        let mut ends = Vec::new();
        for ns in ["default", "other"] {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            ends.push(done_rx);
            let (started, allow_all) = (started_tx.clone(), allow_all.clone());
            live.spawn(move |reg| async move {
                let facts = AuthzFacts {
                    peer: Some(SpiffeId::istio("cluster.local", ns, "a").unwrap()),
                    source: "127.0.0.1:1".parse().unwrap(),
                    destination: "127.0.0.1:2".parse().unwrap(),
                    sni: None,
                };
                assert_eq!(reg.authorize(facts, &allow_all).verdict, Verdict::Allow);
                started.send(()).await.unwrap();
                std::future::pending::<()>().await;
                drop(done_tx);
            });
        }
        started_rx.recv().await.unwrap();
        started_rx.recv().await.unwrap();
        let deny_default = Policy {
            name: Arc::from("default/deny"),
            action: Action::Deny,
            dry_run: false,
            provider: None,
            rules: vec![Rule {
                from: vec![vec![Field {
                    name: "namespaces".into(),
                    negated: false,
                    matchers: vec![Matcher::Namespace(NamespaceMatch::new("default"))],
                }]],
                ..Rule::default()
            }],
        };
        let port = PortFacts {
            port: 2,
            tcp: true,
            num_trusted_proxies: 0,
        };
        let denied = live.reauthorize(Arc::new(Authorizer::new(&[deny_default], port)));
        assert_eq!(denied, vec![Arc::<str>::from("default/deny")]);
        let mut ends = ends.into_iter();
        assert!(ends.next().unwrap().await.is_err(), "denied: aborted");
        tokio::task::yield_now().await;
        assert_eq!(live.len(), 1);
        // A connection arriving now is checked against the installed authorizer, not the
        // (older) one its plan carried.
        let (tx, rx) = tokio::sync::oneshot::channel();
        live.spawn(move |reg| async move {
            let facts = AuthzFacts {
                peer: Some(SpiffeId::istio("cluster.local", "default", "b").unwrap()),
                source: "127.0.0.1:1".parse().unwrap(),
                destination: "127.0.0.1:2".parse().unwrap(),
                sni: None,
            };
            let _ = tx.send(reg.authorize(facts, &Authorizer::allow_all()).verdict);
        });
        assert!(matches!(rx.await.unwrap(), Verdict::Deny { .. }));
        live.close_all();
    }
}
