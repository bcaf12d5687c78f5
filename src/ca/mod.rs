//! The mesh CA: root key and certificate, workload certificate (SVID) issuance.

pub mod cli;
