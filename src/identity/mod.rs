//! Workload identity: SPIFFE IDs, X.509-SVID rules, the certificate store and its sources.

pub mod spiffe;

pub use spiffe::{SpiffeId, SpiffeIdError};
