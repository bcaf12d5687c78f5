//! outrider — a sidecar mTLS proxy with SPIFFE identities, a built-in mesh CA and Istio's
//! security configuration.
//!
//! A tour of the crate, from the outside in:
//! - [`app`] wires a sidecar together: configuration → identity store → TLS → metrics →
//!   listeners, and returns the bound addresses with a shutdown handle.
//! - [`config`] reads `mesh.yaml` (outrider's kinds plus Istio's PeerAuthentication,
//!   DestinationRule, VirtualService) and resolves it into a per-workload [`config::Plan`].
//! - [`identity`] holds SPIFFE IDs, SVID rules and the hot-swappable certificate store.
//! - [`ca`] is the mesh CA: root, issuance, the CSR service, bootstrap tokens, root
//!   rotation; [`ca_protocol`] is Istio's CA protocol, spoken by the service and by the
//!   sidecar's CA client.
//! - [`tls`] builds rustls configurations on the live store, with SPIFFE verifiers.
//! - [`proxy`] is the data path: sniffing, inbound, outbound, the copy loop.
//! - [`metrics`] and [`admin`] expose Istio-named Prometheus metrics and the admin endpoints.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod ca;
pub mod ca_protocol;
pub mod config;
pub mod demo;
pub mod duration;
pub mod fetch;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod samples;
pub mod shutdown;
pub mod tls;
