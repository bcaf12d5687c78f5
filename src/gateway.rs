//! The ingress gateway (`outrider gateway`): the edge of the mesh, configured with Istio's
//! Gateway and VirtualService (SEMANTICS.md §6).
//!
//! A gateway is a Workload with `spec.role: gateway`. It has a mesh identity like a sidecar
//! (its SVID, from files or the mesh CA) but no app beside it: it listens on the port of every
//! Gateway server that selects it ([`listener`]), terminates TLS with the user's own
//! certificates (SIMPLE, MUTUAL, OPTIONAL_MUTUAL; [`certs`]), or passes it through by SNI
//! (PASSTHROUGH), and sends what the bound VirtualService rules say into the mesh with its own
//! identity over mesh mTLS — HTTP requests over the same pooled HTTP/2 the sidecars use
//! ([`http`]), TCP and passed-through TLS as bytes ([`l4`]). [`routes`] holds the destinations
//! of the current plan, built for the data path.
//!
//! Certificates, identity, admin, metrics, readiness, reload and drain are the sidecar's
//! ([`crate::app`]); only the listeners differ.

pub mod certs;
mod http;
mod l4;
pub mod listener;
pub mod routes;

pub use certs::EdgeCertificates;
pub use listener::GatewayListeners;
