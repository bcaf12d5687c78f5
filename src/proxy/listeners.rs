//! The listeners a plan asks for, kept in step with the plan: Envoy's listener semantics.
//!
//! Inbound listeners are keyed by workload port, outbound ones by their configured `bind`
//! address — never by position in a list, so reordering or inserting entries cannot move a
//! socket to another destination. On every reload, [`Listeners::reconcile`]:
//! - stops listeners whose key left the plan (new connections are refused at once; open
//!   ones get the drain timeout, then are closed and counted);
//! - binds and starts listeners for new keys (a bind failure is logged and retried on the
//!   next reload; the rest keeps serving);
//! - closes open inbound connections that the port's new mode refuses — plaintext after a
//!   move to STRICT — counted in `outrider_connections_closed_on_reload_total` and logged once
//!   per port;
//! - on TCP/TLS ports, installs the new AuthorizationPolicy authorizer and closes the open
//!   connections it denies (`reason="denied_by_authorization"`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::captured::{CapturedInbound, CapturedOutbound, PortConnections};
use super::inbound::Inbound;
use super::live::{allowed_under, LiveConnections};
use super::outbound::Outbound;
use super::{Runtime, Shared};
use crate::config::{InboundPlan, Plan, Protocol};

/// Where listeners bind and how long a removed one drains.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// IP address of the inbound listeners (their ports come from the plan).
    pub inbound_ip: IpAddr,
    /// Where the app listens.
    pub app_host: IpAddr,
    /// How long open connections of a removed listener may go on.
    pub drain_timeout: Duration,
    /// Transparent capture: the two capture listeners instead of one inbound listener per
    /// port (the app listens on its own ports then); outbound entries are still bound.
    pub capture: Option<CaptureAddrs>,
}

/// Where the capture listeners bind (`outrider iptables -p` and `-z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureAddrs {
    /// Redirected outbound connections (Istio's 15001).
    pub outbound: SocketAddr,
    /// Redirected inbound connections (Istio's 15006).
    pub inbound: SocketAddr,
}

/// Every address the data path listens on now.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ListenerAddrs {
    /// (workload port, bound address).
    pub inbound: Vec<(u16, SocketAddr)>,
    /// (configured bind, bound address): they differ when the bind asks for port 0.
    pub outbound: Vec<(SocketAddr, SocketAddr)>,
    /// The outbound capture listener (`--capture`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_outbound: Option<SocketAddr>,
    /// The inbound capture listener (`--capture`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_inbound: Option<SocketAddr>,
}

/// Listeners bound for a plan, not serving yet.
pub struct Bound {
    settings: ListenerSettings,
    inbound: Vec<Inbound>,
    outbound: Vec<Outbound>,
    capture: Option<(CapturedOutbound, CapturedInbound)>,
}

impl Bound {
    /// Binds every listener of `plan` now; any failure fails start-up with the address.
    pub async fn bind(plan: &Plan, settings: ListenerSettings) -> std::io::Result<Bound> {
        let mut inbound = Vec::new();
        if settings.capture.is_none() {
            for p in &plan.inbound {
                let addr = SocketAddr::new(settings.inbound_ip, p.port);
                inbound.push(Inbound::bind(addr, p.port, settings.app_host).await?);
            }
        }
        let mut outbound = Vec::new();
        for o in &plan.outbound {
            outbound.push(Outbound::bind(o.bind).await?);
        }
        let capture = match settings.capture {
            None => None,
            Some(addrs) => Some((
                CapturedOutbound::bind(addrs.outbound).await?,
                CapturedInbound::bind(addrs.inbound, settings.app_host).await?,
            )),
        };
        Ok(Bound {
            settings,
            inbound,
            outbound,
            capture,
        })
    }

    pub fn addrs(&self) -> ListenerAddrs {
        ListenerAddrs {
            inbound: self
                .inbound
                .iter()
                .map(|l| (l.port(), l.local_addr()))
                .collect(),
            outbound: self
                .outbound
                .iter()
                .map(|l| (l.bind_addr(), l.local_addr()))
                .collect(),
            capture_outbound: self.capture.as_ref().map(|(o, _)| o.local_addr()),
            capture_inbound: self.capture.as_ref().map(|(_, i)| i.local_addr()),
        }
    }

    /// Starts serving every bound listener.
    pub fn start(
        self,
        shared: Shared,
        runtime: watch::Receiver<Arc<Runtime>>,
        tls: TlsAcceptor,
    ) -> Listeners {
        let mut listeners = Listeners {
            settings: self.settings,
            shared,
            runtime,
            tls,
            inbound: BTreeMap::new(),
            outbound: BTreeMap::new(),
            capture: None,
        };
        for l in self.inbound {
            listeners.start_inbound(l);
        }
        for l in self.outbound {
            listeners.start_outbound(l);
        }
        if let Some((outbound, inbound)) = self.capture {
            listeners.start_capture(outbound, inbound);
        }
        listeners
    }
}

/// The serving listeners of one sidecar.
pub struct Listeners {
    settings: ListenerSettings,
    shared: Shared,
    runtime: watch::Receiver<Arc<Runtime>>,
    tls: TlsAcceptor,
    inbound: BTreeMap<u16, Running>,
    outbound: BTreeMap<SocketAddr, Running>,
    capture: Option<CaptureRunning>,
}

/// The two serving capture listeners.
struct CaptureRunning {
    outbound: SocketAddr,
    inbound: SocketAddr,
    stop: watch::Sender<bool>,
    /// Captured inbound connections by original port.
    live: Arc<PortConnections>,
}

/// One serving listener.
struct Running {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    live: Arc<LiveConnections>,
    task: JoinHandle<()>,
}

impl Listeners {
    fn start_inbound(&mut self, l: Inbound) {
        let (stop, stop_rx) = watch::channel(false);
        let (port, local, live) = (l.port(), l.local_addr(), l.live());
        let task = tokio::spawn(l.run(
            self.shared.clone(),
            self.runtime.clone(),
            self.tls.clone(),
            stop_rx,
        ));
        let running = Running {
            local,
            stop,
            live,
            task,
        };
        self.inbound.insert(port, running);
    }

    fn start_outbound(&mut self, l: Outbound) {
        let (stop, stop_rx) = watch::channel(false);
        let (bind, local, live) = (l.bind_addr(), l.local_addr(), l.live());
        let task = tokio::spawn(l.run(self.shared.clone(), self.runtime.clone(), stop_rx));
        let running = Running {
            local,
            stop,
            live,
            task,
        };
        self.outbound.insert(bind, running);
    }

    fn start_capture(&mut self, outbound: CapturedOutbound, inbound: CapturedInbound) {
        let (stop, stop_rx) = watch::channel(false);
        let running = CaptureRunning {
            outbound: outbound.local_addr(),
            inbound: inbound.local_addr(),
            stop,
            live: inbound.live(),
        };
        tokio::spawn(outbound.run(self.shared.clone(), self.runtime.clone(), stop_rx.clone()));
        tokio::spawn(inbound.run(
            self.shared.clone(),
            self.runtime.clone(),
            self.tls.clone(),
            stop_rx,
        ));
        self.capture = Some(running);
    }

    pub fn addrs(&self) -> ListenerAddrs {
        ListenerAddrs {
            inbound: self.inbound.iter().map(|(p, r)| (*p, r.local)).collect(),
            outbound: self.outbound.iter().map(|(b, r)| (*b, r.local)).collect(),
            capture_outbound: self.capture.as_ref().map(|c| c.outbound),
            capture_inbound: self.capture.as_ref().map(|c| c.inbound),
        }
    }

    /// Brings the listeners in line with `plan` (already published to the data path).
    pub async fn reconcile(&mut self, plan: &Plan) {
        // Removals first: a port removed and re-added later must be free to bind again.
        let gone_in: Vec<u16> = self
            .inbound
            .keys()
            .filter(|port| !plan.inbound.iter().any(|p| p.port == **port))
            .copied()
            .collect();
        for port in gone_in {
            if let Some(running) = self.inbound.remove(&port) {
                self.retire("inbound", port.to_string(), running).await;
            }
        }
        let gone_out: Vec<SocketAddr> = self
            .outbound
            .keys()
            .filter(|bind| !plan.outbound.iter().any(|o| o.bind == **bind))
            .copied()
            .collect();
        for bind in gone_out {
            if let Some(running) = self.outbound.remove(&bind) {
                self.retire("outbound", bind.to_string(), running).await;
            }
        }
        for p in &plan.inbound {
            if self.settings.capture.is_some() || self.inbound.contains_key(&p.port) {
                continue;
            }
            let addr = SocketAddr::new(self.settings.inbound_ip, p.port);
            match Inbound::bind(addr, p.port, self.settings.app_host).await {
                Ok(l) => {
                    tracing::info!(port = p.port, %addr, "inbound listener added");
                    self.start_inbound(l);
                }
                Err(e) => tracing::error!(port = p.port, error = %e, "cannot add inbound listener"),
            }
        }
        for o in &plan.outbound {
            if self.outbound.contains_key(&o.bind) {
                continue;
            }
            match Outbound::bind(o.bind).await {
                Ok(l) => {
                    tracing::info!(bind = %o.bind, to = %o.to, "outbound listener added");
                    self.start_outbound(l);
                }
                Err(e) => {
                    tracing::error!(bind = %o.bind, error = %e, "cannot add outbound listener")
                }
            }
        }
        // Open connections the port's new mode and policy refuse.
        for p in &plan.inbound {
            if let Some(running) = self.inbound.get(&p.port) {
                self.enforce(p.port, &running.live, p);
            }
        }
        if let Some(capture) = &self.capture {
            for (port, live) in capture.live.ports() {
                let p = plan
                    .inbound
                    .iter()
                    .find(|p| p.port == port)
                    .unwrap_or(&plan.capture.undeclared);
                self.enforce(port, &live, p);
            }
        }
    }

    /// Closes the open connections to `port` that its plan entry `p` no longer admits: the
    /// mode refuses how they came (plaintext after a move to STRICT), or, on TCP/TLS ports,
    /// the AuthorizationPolicy denies them.
    fn enforce(&self, port: u16, live: &LiveConnections, p: &InboundPlan) {
        let closed = live.close_where(|carried| allowed_under(carried, p.mode, p.protocol));
        if closed > 0 {
            self.shared.metrics.closed_on_reload(
                "inbound",
                &port.to_string(),
                "refused_by_mode",
                closed,
            );
            tracing::warn!(
                port,
                closed,
                mode = ?p.mode,
                decided_by = %p.decided_by,
                "closed open connections that the port's new mode refuses"
            );
        }
        if matches!(p.protocol, Protocol::Tcp | Protocol::Tls) {
            let denied = live.reauthorize(p.authorization.clone());
            if !denied.is_empty() {
                self.shared.metrics.closed_on_reload(
                    "inbound",
                    &port.to_string(),
                    "denied_by_authorization",
                    denied.len(),
                );
                for policy in &denied {
                    self.shared.metrics.authz_denied(port, policy);
                }
                tracing::warn!(
                    port,
                    closed = denied.len(),
                    policy = %denied[0],
                    "closed open connections that the port's new AuthorizationPolicy denies"
                );
            }
        }
    }

    /// Stops accepting on a removed listener and closes what is still open after the drain
    /// timeout.
    async fn retire(&self, direction: &'static str, key: String, running: Running) {
        running.stop.send_replace(true);
        // The accept loop ends at once; wait for it so the address is free again.
        let _ = running.task.await;
        tracing::info!(direction, listener = %key, open = running.live.len(), "listener removed; draining");
        let (live, metrics, deadline) = (
            running.live,
            self.shared.metrics.clone(),
            self.settings.drain_timeout,
        );
        tokio::spawn(async move {
            if tokio::time::timeout(deadline, live.until_empty())
                .await
                .is_err()
            {
                let closed = live.close_all();
                metrics.closed_on_reload(direction, &key, "listener_removed", closed);
                tracing::info!(direction, listener = %key, closed, "drain deadline passed; closed");
            }
        });
    }

    /// Stops every listener (shutdown); open connections are the drain's business.
    pub fn stop(&self) {
        for r in self.inbound.values().chain(self.outbound.values()) {
            r.stop.send_replace(true);
        }
        if let Some(capture) = &self.capture {
            capture.stop.send_replace(true);
        }
    }
}
