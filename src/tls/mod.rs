//! rustls configurations built on the live certificate store, with SPIFFE verifiers.

pub mod origination;
