//! Workload identity: SPIFFE IDs, X.509-SVID rules, the trust bundle, the hot-swappable
//! certificate store and its sources: a watched directory ([`files`]) or the mesh CA
//! ([`ca_client`]).

mod bundle;
pub mod ca_client;
pub mod files;
pub mod spiffe;
mod store;
pub mod svid;

use std::path::PathBuf;

pub use bundle::TrustBundle;
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use store::{CertStore, Identity, StoreStats, Svid};
pub use svid::{PeerRole, SvidError};

/// Why identity material (certificates, keys, bundles) was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("trust domain {domain:?} is invalid: {source}")]
    BadTrustDomain {
        domain: String,
        source: SpiffeIdError,
    },
    #[error("{what} is not valid PEM: {detail}")]
    BadPem { what: &'static str, detail: String },
    #[error("{what} holds no PEM certificate")]
    NoCertificates { what: &'static str },
    #[error("a certificate in {what} cannot be parsed: {detail}")]
    BadCertificate { what: &'static str, detail: String },
    #[error("the trust bundle certificate {subject:?} is not a CA certificate")]
    NotACa { subject: String },
    #[error("the private key cannot be used: {detail}")]
    BadKey { detail: String },
    #[error("the private key does not match the leaf certificate")]
    KeyMismatch,
    #[error("the certificate is not a valid SVID for the trust bundle: {reason}")]
    InvalidSvid { reason: rustls::Error },
    #[error("the SVID {id} is not in this store's trust domain {expected:?}")]
    WrongTrustDomain { id: String, expected: String },
    #[error("the certificate is for {id}, but this workload is {expected}")]
    WrongIdentity { id: String, expected: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}
