//! Name resolution off the connection path.
//!
//! An endpoint host that is an IP address is used as it is. A name (`age` in docker-compose) is
//! resolved once when first needed, then refreshed in the background every `refresh`
//! (Envoy's `dns_refresh_rate` defaults to 5 s): a connection reads the last answer and never
//! waits for `getaddrinfo`. A failed refresh keeps the last good answer (a resolver outage
//! does not take the service down), and connections are spread over every address of the
//! answer in turn.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// How a name becomes addresses (the system resolver; tests inject their own).
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> + Send + Sync,
>;

/// The system resolver (`getaddrinfo`, on tokio's blocking pool).
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// The names endpoints use, with their last answers.
pub struct Resolver {
    lookup: Lookup,
    names: Mutex<HashMap<String, Weak<Name>>>,
}

/// One name and its last good answer; held by the endpoints that use it.
pub struct Name {
    host: String,
    addrs: RwLock<Arc<[IpAddr]>>,
    next: AtomicUsize,
}

/// Where to connect for one endpoint.
#[derive(Clone)]
pub enum Target {
    /// The host was an IP address.
    Ip(IpAddr),
    /// The host is a name, resolved off the connection path.
    Name(Arc<Name>),
}

impl Resolver {
    pub fn new(lookup: Lookup) -> Resolver {
        Resolver {
            lookup,
            names: Mutex::default(),
        }
    }

    /// The target for `host`: an IP as it is, a name registered for background refresh
    /// (shared with every other endpoint naming it).
    pub fn target(&self, host: &str) -> Target {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Target::Ip(ip);
        }
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = names.get(host).and_then(Weak::upgrade) {
            return Target::Name(name);
        }
        let name = Arc::new(Name {
            host: host.to_string(),
            addrs: RwLock::new(Arc::from(Vec::new())),
            next: AtomicUsize::new(0),
        });
        names.insert(host.to_string(), Arc::downgrade(&name));
        Target::Name(name)
    }

    /// Resolves every name still in use, every `refresh`, forever.
    pub async fn refresh_every(self: Arc<Self>, refresh: Duration) {
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
        }
    }

    /// One refresh round: re-resolves the names in use, forgets the ones nobody uses.
    pub async fn refresh(&self) {
        let live: Vec<Arc<Name>> = {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            names.retain(|_, n| n.strong_count() > 0);
            names.values().filter_map(Weak::upgrade).collect()
        };
        for name in live {
            let _ = name.resolve(&self.lookup).await;
        }
    }

    /// The socket addresses to try for `target` on `port`, starting with the next one in
    /// turn. A name never resolved yet is resolved now (once; later connections read the
    /// refreshed answer).
    pub async fn addrs(&self, target: &Target, port: u16) -> io::Result<Vec<SocketAddr>> {
        match target {
            Target::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            Target::Name(name) => {
                let mut addrs = name.current();
                if addrs.is_empty() {
                    addrs = name.resolve(&self.lookup).await?;
                }
                let start = name.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
                Ok(addrs[start..]
                    .iter()
                    .chain(&addrs[..start])
                    .map(|ip| SocketAddr::new(*ip, port))
                    .collect())
            }
        }
    }
}

impl Target {
    /// Whether the target is, or last resolved to, `ip` (never waits for DNS: a name not
    /// resolved yet points nowhere).
    pub fn points_at(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            Target::Ip(own) => own.to_canonical() == ip,
            Target::Name(name) => name.current().iter().any(|a| a.to_canonical() == ip),
        }
    }
}

impl Name {
    fn current(&self) -> Arc<[IpAddr]> {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks the resolver; a good answer replaces the last one, a failure or an empty answer
    /// keeps it (and is returned as an error only if there is none).
    async fn resolve(&self, lookup: &Lookup) -> io::Result<Arc<[IpAddr]>> {
        match lookup(self.host.clone()).await {
            Ok(found) if !found.is_empty() => {
                let found: Arc<[IpAddr]> = Arc::from(found);
                *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = found.clone();
                Ok(found)
            }
            outcome => {
                let last = self.current();
                if !last.is_empty() {
                    tracing::warn!(host = %self.host, "name resolution failed; keeping the last answer");
                    return Ok(last);
                }
                match outcome {
                    Err(e) => Err(e),
                    Ok(_) => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} has no address", self.host),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose answers the test scripts; counts lookups.
    fn scripted(answers: Vec<io::Result<Vec<IpAddr>>>) -> (Lookup, Arc<AtomicUsize>) {
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let lookup: Lookup = Arc::new(move |_host| {
            counter.fetch_add(1, Ordering::Relaxed);
            let next = answers.lock().unwrap().next();
            Box::pin(
                async move { next.unwrap_or_else(|| Err(io::Error::other("no more answers"))) },
            )
        });
        (lookup, calls)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn ips(resolver: &Resolver, target: &Target) -> Vec<IpAddr> {
        let addrs = resolver.addrs(target, 0).await.unwrap();
        addrs.iter().map(SocketAddr::ip).collect()
    }

    #[tokio::test]
    async fn a_name_is_resolved_once_then_read_and_spread_over_its_addresses() {
        let (lookup, calls) = scripted(vec![Ok(vec![ip("10.0.0.1"), ip("10.0.0.2")])]);
        let resolver = Resolver::new(lookup);
        let target = resolver.target("age");
        let mut first = Vec::new();
        for _ in 0..4 {
            first.push(resolver.addrs(&target, 0).await.unwrap()[0].ip());
        }
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "one lookup for four connections"
        );
        assert_eq!(
            first,
            [
                ip("10.0.0.1"),
                ip("10.0.0.2"),
                ip("10.0.0.1"),
                ip("10.0.0.2")
            ]
        );
    }

    #[tokio::test]
    async fn an_outage_keeps_the_last_answer_and_a_new_answer_replaces_it() {
        let (lookup, calls) = scripted(vec![
            Ok(vec![ip("10.0.0.1")]),
            Err(io::Error::other("resolver down")),
            Ok(vec![]),
            Ok(vec![ip("10.0.0.9")]),
        ]);
        let resolver = Resolver::new(lookup);
        let target = resolver.target("age");
        assert_eq!(ips(&resolver, &target).await, [ip("10.0.0.1")]);
        resolver.refresh().await; // fails
        assert_eq!(ips(&resolver, &target).await, [ip("10.0.0.1")]);
        resolver.refresh().await; // empty answer
        assert_eq!(ips(&resolver, &target).await, [ip("10.0.0.1")]);
        resolver.refresh().await; // a new address
        assert_eq!(ips(&resolver, &target).await, [ip("10.0.0.9")]);
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn ips_are_not_looked_up_and_unused_names_are_forgotten() {
        let (lookup, calls) = scripted(vec![Ok(vec![ip("10.0.0.1")])]);
        let resolver = Resolver::new(lookup);
        let target = resolver.target("127.0.0.1");
        assert_eq!(ips(&resolver, &target).await, [ip("127.0.0.1")]);
        let a = resolver.target("age");
        let b = resolver.target("age");
        assert!(matches!((&a, &b), (Target::Name(x), Target::Name(y)) if Arc::ptr_eq(x, y)));
        drop((a, b));
        resolver.refresh().await;
        assert_eq!(calls.load(Ordering::Relaxed), 0);
        assert!(resolver.names.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_name_that_never_resolved_is_an_error() {
        let (lookup, _) = scripted(vec![Err(io::Error::other("no such host"))]);
        let resolver = Resolver::new(lookup);
        let target = resolver.target("nowhere");
        assert!(resolver.addrs(&target, 0).await.is_err());
    }
}
