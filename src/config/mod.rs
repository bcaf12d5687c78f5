//! Mesh configuration: outrider's own kinds plus Istio's security resources, parsed,
//! validated and resolved into a per-workload [`Plan`].

pub mod check;
pub mod plan;

pub use plan::*;
