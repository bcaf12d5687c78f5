//! TLS 1.3 session resumption, kept from outliving the identities it was granted to.
//!
//! A resumed session carries its peer's certificate chain from the original full handshake
//! without verifying it again, and every resumed connection hands out new tickets carrying
//! that same chain: left alone, a peer whose leaf expired or whose root was retired would be
//! accepted for as long as it keeps resuming. So a resumed session is re-judged against the
//! *current* trust bundle at the *current* time:
//!
//! - **Server side (inbound)**: the session ticket key is wrapped (`tls::ticketer`): a
//!   ticket whose client chain is expired, or not anchored by the current bundle, is declined
//!   when it is decrypted. The client is not refused: the handshake continues as a full one,
//!   so a client that has a valid new certificate just presents it, and a client whose only
//!   certificate is expired or untrusted fails in the verifier with `expired` or
//!   `unknown_issuer`, as any full handshake would. A bundle change also replaces the ticket
//!   key, so no ticket issued before it is even decrypted.
//! - **Client side (outbound)**: rustls offers no hook between taking a ticket and using it
//!   that could see the ticket's server chain, so the check comes right after the handshake:
//!   [`check_resumed`] refuses a resumed session whose server chain is expired or no longer
//!   anchored, and makes every [`TicketCache`] bound to the store forget its tickets, so the
//!   next connection is a full handshake. The cache also forgets every ticket when the trust
//!   bundle changes, so after a root is retired the next connection verifies the server anew.
//!
//! Re-judging is a lookup, not a path validation: the verifiers record, at full verification,
//! each accepted chain's validity in the bundle that anchored it (`record_verified`); a
//! chain the current bundle has not seen (the bundle changed since) is validated once in full.
//!
//! The client's ticket cache is sized for a sidecar: rustls' built-in cache keeps at most 8
//! tickets per server, and a TLS 1.3 ticket is used once. A sidecar opens connections to one
//! peer in bursts (an app's connection pool, a load test): with more than 8 connects in
//! flight, the rest would find the cache empty and fall back to full handshakes, even though
//! each finished connection brings two new tickets. This cache keeps up to
//! [`TICKETS_PER_SERVER`] tickets per destination, so bursts resume too. TLS 1.2 is never
//! negotiated between sidecars (TLS 1.3 only), so TLS 1.2 sessions are not stored.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::{CommonState, HandshakeKind, NamedGroup};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::identity::svid::verify_svid;
use crate::identity::{CertStore, PeerRole, SvidError, TrustBundle};

/// Tickets kept per destination (each holds the server's chain: about 1–2 KiB).
pub const TICKETS_PER_SERVER: usize = 64;

/// Destinations remembered; past this, an arbitrary one is forgotten.
pub const MAX_SERVERS: usize = 256;

/// Refuses a resumed session whose peer chain the current trust bundle of `store` does not
/// anchor (`unknown_issuer`, ...) or that is not valid at `now` (`expired`, `not_yet_valid`);
/// see [`crate::tls::failure_reason`] for the labels. Full handshakes are always accepted here:
/// their verifier already judged the chain.
///
/// `peer` is the role of the other side: [`PeerRole::Server`] on a client connection. The
/// outbound proxy calls this right after every handshake and, on an error, closes the
/// connection and counts a handshake failure. A refusal also makes every [`TicketCache`]
/// bound to `store` forget its tickets, so the next connection is a full handshake.
///
/// Server connections need not call it: their ticket key declines such sessions up front.
pub fn check_resumed(
    conn: &CommonState,
    peer: PeerRole,
    store: &CertStore,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    if conn.handshake_kind() != Some(HandshakeKind::Resumed) {
        return Ok(());
    }
    let identity = store.current().ok_or(SvidError::NoIdentity)?;
    let chain = conn
        .peer_certificates()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    judge_chain(&identity.bundle, peer, chain, now).inspect_err(|e| {
        identity.bundle.anchored().refused();
        // Debug only: the caller logs and counts the failed connection with the reason.
        tracing::debug!(
            reason = super::failure_reason(e),
            error = %e,
            "refused a resumed TLS session: the peer's certificate is no longer acceptable"
        );
    })
}

/// Whether `bundle` anchors `chain` (leaf first) for a peer of `role`, and `chain` is valid at
/// `now`: a lookup when the bundle verified this chain before, else a full path validation.
pub(crate) fn judge_chain(
    bundle: &TrustBundle,
    role: PeerRole,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    match bundle.anchored().lookup(role, leaf, intermediates) {
        Some(validity) => validity
            .check(now)
            .map_err(rustls::Error::InvalidCertificate),
        None => {
            verify_svid(bundle, leaf, intermediates, now, role)?;
            bundle.anchored().record(role, leaf, intermediates, now);
            Ok(())
        }
    }
}

/// Records that `bundle` anchors this chain, just accepted by [`verify_svid`] for a peer of
/// `role`, so a session resuming it is re-judged by a lookup.
pub(crate) fn record_verified(
    bundle: &TrustBundle,
    role: PeerRole,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) {
    bundle
        .anchored()
        .record(role, end_entity, intermediates, now);
}

/// A bounded in-memory ticket cache; see the module documentation.
#[derive(Debug, Default)]
pub struct TicketCache {
    /// The identity the tickets belong to: when its trust bundle changes, or a resumed session
    /// is refused under it, every ticket is forgotten. `None`: never forgets.
    store: Option<CertStore>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    servers: HashMap<ServerName<'static>, Server>,
    /// Bundle fingerprint and refusal count the stored tickets were received under.
    epoch: Option<([u8; 32], u64)>,
}

#[derive(Debug, Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    /// Oldest first; the newest is used first.
    tickets: VecDeque<Tls13ClientSessionValue>,
}

impl TicketCache {
    /// A cache that never forgets tickets by itself (rustls' lifetime limits still apply).
    pub fn new() -> TicketCache {
        TicketCache::default()
    }

    /// A cache for connections authenticated by `store`: it forgets every ticket when the
    /// trust bundle changes and when [`check_resumed`] refuses a session under it.
    pub fn bound_to(store: &CertStore) -> TicketCache {
        TicketCache {
            store: Some(store.clone()),
            state: Mutex::default(),
        }
    }

    /// The state, with its tickets forgotten if the identity moved on since they came.
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        let epoch = self.store.as_ref().and_then(|s| {
            s.current()
                .map(|i| (i.bundle.fingerprint(), i.bundle.anchored().refusals()))
        });
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.epoch != epoch {
            if state.epoch.is_some() {
                tracing::debug!("trust bundle changed or a resumed session was refused: forgetting session tickets");
            }
            for server in state.servers.values_mut() {
                server.tickets.clear();
            }
            state.epoch = epoch;
        }
        state
    }
}

impl State {
    fn server(&mut self, name: ServerName<'static>) -> &mut Server {
        if !self.servers.contains_key(&name) && self.servers.len() >= MAX_SERVERS {
            if let Some(victim) = self.servers.keys().next().cloned() {
                self.servers.remove(&victim);
            }
        }
        self.servers.entry(name).or_default()
    }
}

impl ClientSessionStore for TicketCache {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.state().server(server_name).kx_hint = Some(group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.state()
            .servers
            .get(server_name)
            .and_then(|s| s.kx_hint)
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
        let mut state = self.state();
        let server = state.server(server_name);
        if server.tickets.len() >= TICKETS_PER_SERVER {
            server.tickets.pop_front();
        }
        server.tickets.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.state()
            .servers
            .get_mut(server_name)?
            .tickets
            .pop_back()
    }
}
