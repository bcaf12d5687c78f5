//! The client's TLS 1.3 ticket cache, sized for a sidecar.
//!
//! rustls' built-in cache keeps at most 8 tickets per server, and a TLS 1.3 ticket is used
//! once. A sidecar opens connections to one peer in bursts (an app's connection pool, a load
//! test): with more than 8 connects in flight, the rest find the cache empty and fall back to
//! full handshakes, even though each finished connection brings two new tickets. This cache
//! keeps up to [`TICKETS_PER_SERVER`] tickets per destination, so bursts resume too.
//!
//! TLS 1.2 is never negotiated between sidecars (TLS 1.3 only), so TLS 1.2 sessions are not
//! stored.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// Tickets kept per destination (each holds the server's chain: about 1–2 KiB).
pub const TICKETS_PER_SERVER: usize = 64;

/// Destinations remembered; past this, an arbitrary one is forgotten.
pub const MAX_SERVERS: usize = 256;

/// A bounded in-memory ticket cache; see the module documentation.
#[derive(Debug, Default)]
pub struct TicketCache {
    servers: Mutex<HashMap<ServerName<'static>, Server>>,
}

#[derive(Debug, Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    /// Oldest first; the newest is used first.
    tickets: VecDeque<Tls13ClientSessionValue>,
}

impl TicketCache {
    pub fn new() -> TicketCache {
        TicketCache::default()
    }

    fn with_server<T>(&self, name: ServerName<'static>, f: impl FnOnce(&mut Server) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        if !servers.contains_key(&name) && servers.len() >= MAX_SERVERS {
            if let Some(victim) = servers.keys().next().cloned() {
                servers.remove(&victim);
            }
        }
        f(servers.entry(name).or_default())
    }
}

impl ClientSessionStore for TicketCache {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_server(server_name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        let servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.get(server_name).and_then(|s| s.kx_hint)
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with_server(server_name, |s| {
            if s.tickets.len() >= TICKETS_PER_SERVER {
                s.tickets.pop_front();
            }
            s.tickets.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        servers.get_mut(server_name)?.tickets.pop_back()
    }
}
