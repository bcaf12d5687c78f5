//! Inbound: one listener per workload port. Peeks at the first bytes, then terminates mesh
//! mTLS, passes plaintext (PERMISSIVE, DISABLE) or resets it (STRICT), and carries the
//! connection to the app on `127.0.0.1:<targetPort>`.
//!
//! The rule per mode is Istio's inbound filter chains: STRICT terminates any TLS as mTLS
//! (client certificate required) and resets plaintext; PERMISSIVE terminates TLS that offers
//! the mesh ALPN (`istio`, `istio-peer-exchange`, `istio-http/*`, `istio-h2`), passes other
//! TLS to the app untouched on TCP ports (refuses it on HTTP ports) and passes plaintext;
//! DISABLE inspects nothing. A client that sends nothing before `--detect-timeout` is
//! plaintext (Istio waits forever; server-speaks-first protocols would hang).
//!
//! Once admitted, a connection on an HTTP, HTTP2 or GRPC port is served at L7
//! ([`super::http::serve_inbound`]); TCP and TLS ports (and TLS passed through) move bytes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rustls::HandshakeKind;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::copy::{copy_bidirectional, CopyStream};
use super::http::alpn::Acceptors;
use super::live::{AuthzFacts, Carried, LiveConnections, Registration};
use super::sniff::{detect, Detected, Rewind};
use super::{reset, tls_error, tune, Direction, Runtime, Shared};
use crate::config::{InboundPlan, MtlsMode, Protocol};
use crate::identity::SpiffeId;
use crate::metrics::Peer;
use crate::policy::authz::Verdict;

/// One bound inbound listener.
pub struct Inbound {
    listener: TcpListener,
    /// The sidecar port (`port` of the plan), the key to find this listener's plan entry.
    port: u16,
    app_host: IpAddr,
    live: Arc<LiveConnections>,
}

impl Inbound {
    /// Binds `addr` now (a conflict fails start-up with the address in the message).
    pub async fn bind(addr: SocketAddr, port: u16, app_host: IpAddr) -> std::io::Result<Inbound> {
        let listener = super::bind_listener(addr, &format!("inbound port {port}")).await?;
        Ok(Inbound {
            listener,
            port,
            app_host,
            live: Arc::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The workload port this listener serves.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connections this listener carries now.
    pub fn live(&self) -> Arc<LiveConnections> {
        self.live.clone()
    }

    /// Accepts until draining starts or `stop` turns true (the port left the plan).
    pub async fn run(
        self,
        shared: Shared,
        runtime: watch::Receiver<Arc<Runtime>>,
        tls: TlsAcceptor,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut draining = shared.shutdown.watch();
        let tls = Acceptors::new(tls);
        loop {
            let Some((stream, peer)) =
                super::accept(&self.listener, &mut draining, &mut stop, "inbound").await
            else {
                return;
            };
            let Some(permits) = shared.permits(Direction::Inbound) else {
                shared
                    .metrics
                    .inbound_rejected(self.port, "connection_limit");
                reset(stream);
                continue;
            };
            let accepted = Accepted {
                stream,
                peer,
                port: self.port,
                app_host: self.app_host,
                original_dst: None,
            };
            let (shared, runtime, tls) = (shared.clone(), runtime.clone(), tls.clone());
            self.live.spawn(move |registration| async move {
                let _permits = permits;
                let _guard = shared.shutdown.connection();
                serve(accepted, runtime, &shared, tls, registration).await;
            });
        }
    }
}

/// An accepted connection and where it came in.
pub(super) struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The workload port it is for: the listener's, or the port a captured connection was
    /// headed for.
    pub port: u16,
    pub app_host: IpAddr,
    /// Captured (accepted on the capture listener): where the client was connecting. A port
    /// the workload does not declare is then served under the capture plan's rule for
    /// undeclared ports, to the app on that same port.
    pub original_dst: Option<SocketAddr>,
}

/// The plan entry of a connection for `port`: the workload's port, or for a captured
/// connection to a port it does not declare, the rule for those (`None` if neither).
fn plan_index(rt: &Runtime, port: u16, captured: bool) -> Option<PlanIndex> {
    match rt.plan.inbound.iter().position(|p| p.port == port) {
        Some(index) => Some(PlanIndex::Declared(index)),
        None if captured => Some(PlanIndex::Undeclared),
        None => None,
    }
}

/// Where a connection's plan entry is in the runtime's plan.
#[derive(Debug, Clone, Copy)]
enum PlanIndex {
    Declared(usize),
    Undeclared,
}

impl PlanIndex {
    fn of(self, rt: &Runtime) -> &InboundPlan {
        match self {
            PlanIndex::Declared(index) => &rt.plan.inbound[index],
            PlanIndex::Undeclared => &rt.plan.capture.undeclared,
        }
    }
}

/// What to do with a connection, decided from what detection saw and the port's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Terminate mesh mTLS.
    Mtls,
    /// Pass plaintext to the app.
    Plain,
    /// Pass TLS to the app untouched (the app's own TLS).
    Passthrough { mesh: bool },
    /// Plaintext (or a silent client) on a STRICT port: reset, as Istio does.
    RefusePlaintext,
    /// Close without counting (the client left before sending anything).
    Drop,
    /// Reset and count under `reason`.
    Refuse(&'static str),
}

impl Decision {
    fn carried(self) -> Carried {
        match self {
            Decision::Mtls => Carried::Mtls,
            Decision::Plain => Carried::Plain,
            Decision::Passthrough { mesh } => Carried::Passthrough { mesh },
            Decision::RefusePlaintext | Decision::Drop | Decision::Refuse(_) => Carried::Detecting,
        }
    }
}

/// The inbound rule (Istio's filter chains for a port, see the module doc): pure, so a
/// reload's "would the new mode still admit this connection" uses the same answers
/// ([`super::live::allowed_under`]).
fn decide(detected: &Detected, mode: MtlsMode, protocol: Protocol) -> Decision {
    let http = matches!(protocol, Protocol::Http | Protocol::Http2 | Protocol::Grpc);
    match (detected, mode) {
        (Detected::Closed, _) => Decision::Drop,
        (Detected::Malformed, _) => Decision::Refuse("malformed_client_hello"),
        (Detected::Tls { .. }, MtlsMode::Strict)
        | (Detected::Tls { mesh: true, .. }, MtlsMode::Permissive) => Decision::Mtls,
        // Istio builds no chain for foreign TLS on HTTP ports.
        (Detected::Tls { mesh: false, .. }, MtlsMode::Permissive) if http => {
            Decision::Refuse("non_mesh_tls_on_http_port")
        }
        (Detected::Tls { mesh: false, .. }, MtlsMode::Permissive) => {
            Decision::Passthrough { mesh: false }
        }
        (Detected::Tls { mesh, .. }, MtlsMode::Disable) => Decision::Passthrough { mesh: *mesh },
        (Detected::Plaintext | Detected::Silent, MtlsMode::Strict) => Decision::RefusePlaintext,
        (Detected::Plaintext | Detected::Silent, _) => Decision::Plain,
    }
}

pub(super) async fn serve(
    accepted: Accepted,
    runtime: watch::Receiver<Arc<Runtime>>,
    shared: &Shared,
    tls: Acceptors,
    registration: Registration,
) {
    let Accepted {
        mut stream,
        peer,
        port,
        app_host,
        original_dst,
    } = accepted;
    tune(&stream);
    let captured = original_dst.is_some();
    // What the client connected to: authorization's `destination.ip`, the L7 engine's local
    // address.
    let local = original_dst.unwrap_or_else(|| {
        stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port))
    });
    let settings = shared.settings;
    let inspect = {
        let rt = runtime.borrow();
        plan_index(&rt, port, captured).is_some_and(|i| i.of(&rt).mode != MtlsMode::Disable)
    };
    let (detected, prefix) = if !inspect {
        // DISABLE ports get no TLS inspection: everything goes to the app as it came.
        (Detected::Plaintext, Vec::new())
    } else {
        match detect(
            &mut stream,
            settings.detect_timeout,
            settings.handshake_timeout,
        )
        .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, port, error = %e, "downstream failed during detection");
                shared.metrics.inbound_rejected(port, "downstream_error");
                return;
            }
        }
    };
    // Decide under the plan in force now (not the one at accept time), registered with the
    // live connections so a reload to STRICT either is seen here or sees this connection.
    let decided = registration.decide(|| {
        let rt = runtime.borrow().clone();
        match plan_index(&rt, port, captured) {
            None => (Carried::Detecting, None),
            Some(index) => {
                let plan = index.of(&rt);
                let decision = decide(&detected, plan.mode, plan.protocol);
                (decision.carried(), Some((rt, index, decision)))
            }
        }
    });
    let Some((rt, index, decision)) = decided else {
        // The port left the plan while the client was being read.
        shared.metrics.inbound_rejected(port, "port_not_in_plan");
        reset(stream);
        return;
    };
    let plan = index.of(&rt);
    // Undeclared captured ports (target port 0) go to the app on the port they came for.
    let target_port = if plan.target_port == 0 {
        port
    } else {
        plan.target_port
    };
    let app = SocketAddr::new(app_host, target_port);
    match decision {
        Decision::Drop => return,
        Decision::Refuse(reason) => {
            shared.metrics.inbound_rejected(port, reason);
            tracing::info!(%peer, port, reason, "connection refused");
            reset(stream);
            return;
        }
        Decision::RefusePlaintext => {
            shared.metrics.plaintext_rejected(port);
            shared.plaintext.record(peer.ip(), port, true);
            tracing::info!(%peer, port, decided_by = %plan.decided_by, "reset: plaintext on a STRICT port");
            reset(stream);
            return;
        }
        Decision::Plain => {
            shared.metrics.plaintext_accepted(port);
            shared.plaintext.record(peer.ip(), port, false);
        }
        Decision::Mtls | Decision::Passthrough { .. } => {}
    }
    let tls = tls.pick(&prefix, plan.protocol).clone();
    let mut downstream = Rewind::new(prefix, stream);
    let sni = match &detected {
        Detected::Tls { sni, .. } => sni.as_deref(),
        _ => None,
    };
    let gate = Gate {
        registration: &registration,
        peer_id: None,
        local,
        sni,
    };
    let mut l7 = super::http::Downstream {
        peer,
        local,
        source: Peer::unknown(),
        security: "none",
        peer_id: None,
        leaf: None,
        sni: sni.map(str::to_string),
    };
    if decision != Decision::Mtls {
        if plan.protocol.is_http() && decision == Decision::Plain {
            // Boxed (both here and below): the L7 state would otherwise size every TCP
            // connection's task.
            return Box::pin(super::http::serve_inbound(
                downstream, l7, plan, app, &rt, shared,
            ))
            .await;
        }
        return forward(&mut downstream, peer, "none", plan, app, &rt, shared, gate).await;
    }
    // The handshake's state (~1.4 KiB) lives on the heap while it runs, and the stream after
    // it in one box: the connection's future keeps neither inline, so an open connection
    // costs ~2.5 KiB less.
    let handshake = Box::pin(tokio::time::timeout(
        settings.handshake_timeout,
        tls.accept(downstream),
    ));
    let mut tls_stream = match handshake.await {
        Err(_) => {
            shared.metrics.handshake_failed("inbound", "timeout");
            tracing::info!(%peer, port, "downstream TLS handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            let reason = tls_error(&e)
                .map(crate::tls::failure_reason)
                .unwrap_or("io");
            shared.metrics.handshake_failed("inbound", reason);
            tracing::info!(%peer, port, reason, error = %e, "downstream TLS handshake failed");
            return;
        }
        Ok(Ok(s)) => Box::new(s),
    };
    let resumed = tls_stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    shared.metrics.handshake_completed("inbound", resumed);
    let peer_id = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(crate::tls::peer_spiffe_id);
    if plan.protocol.is_http() {
        l7.leaf = tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        l7.source = match &peer_id {
            Some(id) => rt.peers.lookup(id),
            None => Peer::unknown(),
        };
        l7.security = "mutual_tls";
        l7.peer_id = peer_id;
        return Box::pin(super::http::serve_inbound(
            tls_stream, l7, plan, app, &rt, shared,
        ))
        .await;
    }
    let gate = Gate {
        peer_id: peer_id.as_ref(),
        ..gate
    };
    forward(
        &mut *tls_stream,
        peer,
        "mutual_tls",
        plan,
        app,
        &rt,
        shared,
        gate,
    )
    .await;
}

/// What AuthorizationPolicy reads about a connection, gathered along [`serve`].
struct Gate<'a> {
    registration: &'a Registration,
    peer_id: Option<&'a SpiffeId>,
    local: SocketAddr,
    sni: Option<&'a str>,
}

impl Gate<'_> {
    /// The workload port for metrics and logs: the plan's, or for a captured connection to
    /// an undeclared port (plan port 0), the port it was headed for.
    fn port(&self, plan: &InboundPlan) -> u16 {
        if plan.port == 0 {
            self.local.port()
        } else {
            plan.port
        }
    }
}

/// AuthorizationPolicy on a TCP/TLS port, once per connection before the app is dialled
/// (HTTP ports decide per request): false ⇒ the caller closes the connection, nothing
/// reached the app. The facts stay with the live registry, so a reload whose policy denies
/// the connection closes it.
fn authorized(gate: &Gate<'_>, peer: SocketAddr, plan: &InboundPlan, shared: &Shared) -> bool {
    if !matches!(plan.protocol, Protocol::Tcp | Protocol::Tls) {
        return true;
    }
    let facts = AuthzFacts {
        peer: gate.peer_id.cloned(),
        source: peer,
        destination: gate.local,
        sni: gate.sni.map(str::to_string),
    };
    let outcome = gate.registration.authorize(facts, &plan.authorization);
    let port = gate.port(plan);
    // Built only for the log lines below (most connections are allowed without one).
    let principal = || {
        gate.peer_id
            .map(SpiffeId::principal)
            .unwrap_or_else(|| "-".into())
    };
    if let Some(shadow) = &outcome.shadow {
        shared
            .metrics
            .authz_dry_run(port, *shadow == Verdict::Allow);
        tracing::debug!(%peer, port, source_principal = principal(), shadow = ?shadow, "dry-run AuthorizationPolicy result");
    }
    if outcome.audit {
        shared.metrics.authz_audited(port);
        tracing::info!(target: "access", direction = "inbound", %peer, port, source_principal = principal(), verdict = ?outcome.verdict, "audited by AuthorizationPolicy");
    }
    let policy: &str = match &outcome.verdict {
        Verdict::Allow => return true,
        Verdict::Deny { policy } => policy,
        // Not an answer for a connection; closed all the same.
        Verdict::BadRequest { reason } => reason,
    };
    shared.metrics.authz_denied(port, policy);
    tracing::info!(target: "access", direction = "inbound", %peer, port, source_principal = principal(), policy = %policy, "connection denied by AuthorizationPolicy");
    false
}

#[allow(clippy::too_many_arguments)]
async fn forward<S: CopyStream>(
    downstream: &mut S,
    peer: SocketAddr,
    security: &'static str,
    plan: &InboundPlan,
    app: SocketAddr,
    rt: &Runtime,
    shared: &Shared,
    gate: Gate<'_>,
) {
    if !authorized(&gate, peer, plan, shared) {
        return;
    }
    let port = gate.port(plan);
    let peer_id = gate.peer_id;
    let started = Instant::now();
    let mut upstream = match tokio::time::timeout(
        shared.settings.connect_timeout,
        TcpStream::connect(app),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.inbound_rejected(port, "app_unreachable");
            tracing::warn!(%peer, %app, error = %e, "local app refused the connection");
            return;
        }
        Err(_) => {
            shared.metrics.inbound_rejected(port, "app_unreachable");
            tracing::warn!(%peer, %app, "local app connect timed out");
            return;
        }
    };
    tune(&upstream);
    let conn = rt.inbound_series(&shared.metrics, peer_id, security).open();
    let (end, received, sent) =
        copy_bidirectional(downstream, &mut upstream, shared.settings.copy, |rx, tx| {
            conn.add(rx, tx)
        })
        .await;
    let outcome = end.outcome("downstream", "upstream");
    tracing::info!(
        target: "access",
        direction = "inbound",
        %peer,
        port,
        source_principal = %peer_id
            .map_or_else(|| crate::metrics::UNKNOWN.to_string(), |id| id.to_string()),
        security,
        mode = ?plan.mode,
        received,
        sent,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::live::allowed_under;

    #[test]
    fn what_each_mode_does_with_what_detection_saw() {
        use Decision::*;
        let mesh_tls = Detected::Tls {
            mesh: true,
            sni: None,
        };
        let other_tls = Detected::Tls {
            mesh: false,
            sni: Some("app.example".into()),
        };
        let (tcp, http) = (Protocol::Tcp, Protocol::Http);
        let table = [
            (&mesh_tls, MtlsMode::Strict, tcp, Mtls),
            (&other_tls, MtlsMode::Strict, tcp, Mtls),
            (&Detected::Plaintext, MtlsMode::Strict, tcp, RefusePlaintext),
            (&Detected::Silent, MtlsMode::Strict, tcp, RefusePlaintext),
            (&mesh_tls, MtlsMode::Permissive, tcp, Mtls),
            (
                &other_tls,
                MtlsMode::Permissive,
                tcp,
                Passthrough { mesh: false },
            ),
            (
                &other_tls,
                MtlsMode::Permissive,
                http,
                Refuse("non_mesh_tls_on_http_port"),
            ),
            (&Detected::Plaintext, MtlsMode::Permissive, http, Plain),
            (&Detected::Silent, MtlsMode::Permissive, tcp, Plain),
            (
                &mesh_tls,
                MtlsMode::Disable,
                tcp,
                Passthrough { mesh: true },
            ),
            (&Detected::Plaintext, MtlsMode::Disable, tcp, Plain),
            (
                &Detected::Malformed,
                MtlsMode::Permissive,
                tcp,
                Refuse("malformed_client_hello"),
            ),
            (&Detected::Closed, MtlsMode::Strict, tcp, Drop),
        ];
        for (detected, mode, protocol, want) in table {
            assert_eq!(
                decide(detected, mode, protocol),
                want,
                "{detected:?} under {mode:?} on {protocol:?}"
            );
        }
    }

    /// What a reload keeps open agrees with what a new connection is admitted as: a
    /// connection admitted under one mode stays open under a new mode exactly when the new
    /// mode would admit it the same way (or it is mTLS, which is never closed).
    #[test]
    fn reload_closes_exactly_what_the_new_mode_would_not_admit() {
        let seen = [
            Detected::Tls {
                mesh: true,
                sni: None,
            },
            Detected::Tls {
                mesh: false,
                sni: None,
            },
            Detected::Plaintext,
            Detected::Silent,
        ];
        let modes = [MtlsMode::Strict, MtlsMode::Permissive, MtlsMode::Disable];
        for protocol in [Protocol::Tcp, Protocol::Http] {
            for detected in &seen {
                for old in modes {
                    let admitted = decide(detected, old, protocol);
                    if !matches!(
                        admitted,
                        Decision::Mtls | Decision::Plain | Decision::Passthrough { .. }
                    ) {
                        continue;
                    }
                    for new in modes {
                        let again = decide(detected, new, protocol);
                        let kept = allowed_under(admitted.carried(), new, protocol);
                        let expected = admitted == Decision::Mtls || again == admitted;
                        assert_eq!(
                            kept, expected,
                            "{detected:?} admitted as {admitted:?} under {old:?}, then {new:?} on {protocol:?}"
                        );
                    }
                }
            }
        }
    }
}
