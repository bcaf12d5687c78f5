//! Istio's CA protocol, `istio.v1.auth` (istio/api `security/v1alpha1/ca.proto`), written out
//! by hand with prost's derive so the build needs no `protoc`. Field numbers and types are
//! Istio's; `tests/fixtures/ca.proto` restates the published definition and the Python interop
//! test compiles it with `grpcio-tools` against this server.

/// The gRPC method path of `IstioCertificateService.CreateCertificate`.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds; ≤ 0 asks for the CA's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional metadata (`CertSigner`, `ImpersonatedIdentity`, ...).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `IstioCertificateResponse`: leaf first, then intermediates, the root(s) last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}
