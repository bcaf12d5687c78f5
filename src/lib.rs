//! outrider — a sidecar mTLS proxy with SPIFFE identities, a built-in mesh CA and Istio's
//! security configuration.
//!
//! A tour of the crate, from the outside in. The command line is not part of the library:
//! the binary's `cli` module turns flags and `OUTRIDER_*` variables into the plain
//! configuration structs below ([`app::SidecarConfig`], [`ca::server::ServeConfig`], ...).
//! - [`app`] wires a sidecar together: configuration → identity store → TLS → metrics →
//!   listeners, returns the bound addresses, then serves, follows reloads and drains.
//! - [`config`] reads `mesh.yaml` (outrider's kinds plus Istio's PeerAuthentication,
//!   DestinationRule, VirtualService) and resolves it into a per-workload [`config::Plan`];
//!   one module per kind (hosts, destination rules, virtual services, the outbound plan).
//! - [`identity`] holds SPIFFE IDs, SVID rules, the hot-swappable certificate store and the
//!   identity sources (watched files, the mesh CA's client).
//! - [`ca`] is the mesh CA: root, issuance, the CSR service, bootstrap tokens, root
//!   rotation, node-agent impersonation; [`ca_protocol`] is Istio's CA protocol, spoken by
//!   the service and by the sidecar's CA client.
//! - [`tls`] builds rustls configurations on the live store, with SPIFFE verifiers and
//!   resumption that never outlives the peer's identity.
//! - [`proxy`] is the data path: the listener set that follows the plan, sniffing, inbound,
//!   outbound, the capture listeners of `run --capture`, the copy loop, the live connections
//!   a reload may close.
//! - [`policy`] holds pure decisions over small fact structs (authorization, JWT
//!   authentication), compiled by [`config`] and asked by [`proxy`].
//! - [`jwks`] fetches the JWKS documents of RequestAuthentication's issuers in the
//!   background and hands them to the JWT validator; the data path never waits for it.
//! - [`metrics`] and [`admin`] expose Istio-named Prometheus metrics and the admin endpoints.
//! - [`capture`] is transparent capture: `outrider iptables` (Istio's init step: the nat
//!   rules that send the app's traffic to the proxy) and the original destination of a
//!   captured connection.
//! - Around them: [`shutdown`] (drain), [`logging`], [`duration`] (the one duration syntax),
//!   and the tools the FROM-scratch image needs besides the sidecar: [`demo`], [`samples`]
//!   (the labs' sample app and their small OIDC issuer), [`fetch`] (a plaintext GET), [`dashboard`] (the live mesh
//!   graph, drawn from the sidecars' metrics). The data path never imports these.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod ca;
pub mod ca_protocol;
pub mod capture;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod duration;
pub mod fetch;
pub mod gateway;
pub mod identity;
pub mod jwks;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod samples;
pub mod shutdown;
pub mod tls;
