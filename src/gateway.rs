//! placeholder

pub mod certs;
