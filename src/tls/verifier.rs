//! rustls certificate verifiers for SPIFFE peers, reading the trust bundle from the live
//! certificate store on every handshake.
//!
//! Both wrap webpki path validation (never replace it, see [`verify_svid`]); the server-cert
//! verifier adds secure naming: the server's SPIFFE ID must be one the destination allows.

use std::fmt;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::svid::{verify_svid, PeerRole, PROVIDER};
use crate::identity::{CertStore, SpiffeId, SvidError};
use crate::tls::resumption::record_verified;

/// Verifies TLS clients (used by the inbound server): a client certificate is required and
/// must be an SVID chaining to the live bundle of its trust domain.
pub struct SpiffeClientVerifier {
    store: CertStore,
    /// False only where a client may also authenticate otherwise (the CA service, whose first
    /// request carries a bootstrap token): a certificate presented is still fully verified.
    mandatory: bool,
}

impl SpiffeClientVerifier {
    pub fn new(store: CertStore) -> Self {
        SpiffeClientVerifier {
            store,
            mandatory: true,
        }
    }

    /// A verifier that asks for a client certificate but admits clients without one.
    pub fn optional(store: CertStore) -> Self {
        SpiffeClientVerifier {
            store,
            mandatory: false,
        }
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust_domain", &self.store.trust_domain())
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle is live, so there is no stable slice to lend; SVID clients do not need
        // hints (they have one certificate).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = self.store.current().ok_or(SvidError::NoIdentity)?;
        verify_svid(
            &identity.bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
        )?;
        // Lets the ticket key re-judge a session resuming this chain by a lookup.
        record_verified(
            &identity.bundle,
            PeerRole::Client,
            end_entity,
            intermediates,
            now,
        );
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies TLS servers (used by the outbound client): the server must present an SVID
/// chaining to the live bundle whose SPIFFE ID is one of `allowed` (secure naming). The DNS
/// name the client dialled is not checked: the SPIFFE ID is the server's name.
pub struct SpiffeServerVerifier {
    store: CertStore,
    allowed: Vec<SpiffeId>,
}

impl SpiffeServerVerifier {
    /// An empty `allowed` list refuses every server.
    pub fn new(store: CertStore, allowed: Vec<SpiffeId>) -> Self {
        SpiffeServerVerifier { store, allowed }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("trust_domain", &self.store.trust_domain())
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = self.store.current().ok_or(SvidError::NoIdentity)?;
        let id = verify_svid(
            &identity.bundle,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
        )?;
        // Lets `check_resumed` re-judge a session resuming this chain by a lookup.
        record_verified(
            &identity.bundle,
            PeerRole::Server,
            end_entity,
            intermediates,
            now,
        );
        if !self.allowed.contains(&id) {
            return Err(SvidError::IdentityMismatch {
                got: id.to_string(),
                allowed: self
                    .allowed
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &PROVIDER.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}
