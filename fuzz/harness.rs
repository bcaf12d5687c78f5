//! What each fuzz target does with one input, shared by the libFuzzer targets in
//! `fuzz/fuzz_targets/` and by the replay test `tests/fuzz_regressions.rs`, so a crashing input
//! kept under `fuzz/regressions/<target>/` is replayed through exactly the code that found it.
//!
//! Every function takes untrusted bytes, calls outrider's public parsers, and panics only when
//! an invariant the parser promises does not hold (a round trip, a replayed prefix, a leaf the
//! CA signed that its own bundle refuses). Errors are the expected outcome for most inputs.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rcgen::{KeyPair, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use outrider::ca::server::MAX_CSR_BYTES;
use outrider::ca::token::TokenKey;
use outrider::ca::{workload_id, Authority};
use outrider::config::ConfigError;
use outrider::identity::spiffe::{validate_trust_domain, SpiffeId};
use outrider::identity::svid::{svid_id, verify_svid, PeerRole};
use outrider::identity::TrustBundle;
use outrider::proxy::sniff::{detect, Detected, Rewind};

/// The trust domain of every fixture.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The instant SVIDs are verified at: inside the validity of the seed SVIDs in
/// `fuzz/seeds/svid_*` (issued 2026-12-02 for ten years), so a seed stays valid forever.
pub const VERIFY_AT_UNIX: u64 = 1_796_200_000;

// ---------------------------------------------------------------------------------------------
// sniff

/// Feeds `data[1..]` to the ClientHello sniffer as a stream, split into reads of
/// `data[0]` bytes each (0: one read of everything), and checks that the bytes the sniffer
/// returns are the stream's own prefix, that [`Rewind`] replays the whole stream, and that the
/// decision does not depend on how the stream was split into reads. Returns the decision.
pub fn sniff(data: &[u8]) -> Detected {
    let Some((&split, stream)) = data.split_first() else {
        return Detected::Closed;
    };
    let detected = sniff_split(stream, split as usize);
    if split != 0 {
        let whole = sniff_split(stream, 0);
        assert_eq!(
            detected, whole,
            "the decision must not depend on the read sizes"
        );
    }
    detected
}

fn sniff_split(stream: &[u8], split: usize) -> Detected {
    thread_local! {
        // The sniffer's deadline needs a timer; one runtime per thread, not per input.
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let mut reader = Chunks::new(stream, split);
            let (detected, read) = detect(
                &mut reader,
                Duration::from_secs(60),
                Duration::from_secs(60),
            )
            .await
            .expect("an in-memory reader never fails");
            assert!(read.len() <= stream.len());
            assert_eq!(
                read,
                stream[..read.len()],
                "the sniffer must return what it read"
            );
            let mut replayed = Vec::new();
            Rewind::new(read, reader)
                .read_to_end(&mut replayed)
                .await
                .expect("an in-memory reader never fails");
            assert_eq!(
                replayed, stream,
                "the rewound stream must replay every byte"
            );
            detected
        })
    })
}

/// An in-memory stream that hands out at most one chunk per read, then end of stream.
struct Chunks<'a> {
    chunks: VecDeque<&'a [u8]>,
}

impl<'a> Chunks<'a> {
    fn new(stream: &'a [u8], size: usize) -> Self {
        let chunks = if size == 0 || stream.is_empty() {
            VecDeque::from([stream])
        } else {
            stream.chunks(size).collect()
        };
        Chunks { chunks }
    }
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(chunk) = self.chunks.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(&chunk[n..]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// spiffe_id

/// Parses `data` as a SPIFFE ID; when it parses, displaying and parsing again must give the
/// same ID, and the display must be the input with the scheme in lower case.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = validate_trust_domain(text);
    let Ok(id) = SpiffeId::parse(text) else {
        return;
    };
    let shown = id.to_string();
    let again = SpiffeId::parse(&shown).expect("a displayed SPIFFE ID must parse");
    assert_eq!(again, id, "parse -> display -> parse must round-trip");
    assert_eq!(again.to_string(), shown);
    assert_eq!(
        shown.get(9..),
        text.get(9..),
        "only the scheme may change case"
    );
    let _ = (id.namespace(), id.service_account(), id.principal());
    if let (Some(ns), Some(sa)) = (id.namespace(), id.service_account()) {
        let istio = SpiffeId::istio(id.trust_domain(), ns, sa).expect("its own parts");
        assert_eq!(istio, id);
    }
}

// ---------------------------------------------------------------------------------------------
// svid_der, svid_tbs

/// A CA made once per process: its bundle, and its key to sign fuzzed certificate bodies.
pub struct SvidFixture {
    bundle: TrustBundle,
    key: KeyPair,
}

impl SvidFixture {
    /// A new root for [`TRUST_DOMAIN`] with the subject every outrider root of that domain has
    /// (`O=outrider, CN=cluster.local root`), so the issuer names in seed SVIDs match it.
    pub fn new() -> SvidFixture {
        let (cert_pem, key_pem) =
            outrider::ca::generate_root(TRUST_DOMAIN, Duration::from_secs(3600)).expect("a root");
        SvidFixture {
            bundle: TrustBundle::from_pem(TRUST_DOMAIN, cert_pem.as_bytes()).expect("a bundle"),
            key: KeyPair::from_pem(&key_pem).expect("its key"),
        }
    }
}

impl Default for SvidFixture {
    fn default() -> Self {
        SvidFixture::new()
    }
}

/// Runs arbitrary DER (or PEM) through the SVID leaf rules and the full verification, as a
/// client and as a server certificate. Returns the ID when verification accepts it.
pub fn svid_der(fixture: &SvidFixture, data: &[u8]) -> Option<SpiffeId> {
    let der = CertificateDer::from_pem_slice(data).unwrap_or_else(|_| data.to_vec().into());
    let leaf_rules = svid_id(&der);
    let at = UnixTime::since_unix_epoch(Duration::from_secs(VERIFY_AT_UNIX));
    let mut verified = None;
    for role in [PeerRole::Client, PeerRole::Server] {
        if let Ok(id) = verify_svid(&fixture.bundle, &der, &[], at, role) {
            // What verification accepts, the leaf rules (a part of it) accept too.
            assert_eq!(leaf_rules.as_ref().ok(), Some(&id));
            verified = Some(id);
        }
    }
    verified
}

/// Treats `data` as a DER TBSCertificate, signs it with the fixture's root (ECDSA P-256,
/// SHA-256) and verifies the resulting certificate: the fuzzer reaches every SVID rule behind
/// a valid signature. Returns the ID when verification accepts it.
pub fn svid_tbs(fixture: &SvidFixture, data: &[u8]) -> Option<SpiffeId> {
    let signature = fixture.key.sign(data).expect("ECDSA signing");
    // AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters.
    const ECDSA_SHA256: &[u8] = &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ];
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(&signature);
    let mut body = data.to_vec();
    body.extend_from_slice(ECDSA_SHA256);
    body.extend(der_tlv(0x03, &bits));
    svid_der(fixture, &der_tlv(0x30, &body))
}

/// One DER TLV with a definite length.
pub fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

// ---------------------------------------------------------------------------------------------
// config

/// Loads `data` as one mesh.yaml and plans every workload it declares. Errors must render
/// (they name file, line and field). Loading plans every sidecar workload already, so `plan`
/// must then succeed for each of them, and refuse each sidecar-less one.
pub fn config(data: &[u8]) -> Result<(), ConfigError> {
    let text = String::from_utf8_lossy(data);
    let mesh = match outrider::config::load_str("fuzz.yaml", &text) {
        Ok(mesh) => mesh,
        Err(e) => {
            let _ = (e.to_string(), e.location());
            return Err(e);
        }
    };
    let _ = (mesh.trust_domain(), mesh.root_namespace(), mesh.warnings());
    for name in mesh.workload_names() {
        match mesh.plan(&name) {
            Ok(plan) => drop(format!("{plan:?}")),
            Err(e) => {
                panic!("the configuration loaded, yet workload {name:?} cannot be planned: {e}")
            }
        }
    }
    for name in mesh.sidecarless_workload_names() {
        if let Ok(plan) = mesh.plan(&name) {
            panic!("sidecar-less workload {name:?} has a plan: {plan:?}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ca_request

/// The CA made once per process: its authority and its bootstrap-token key.
pub struct CaFixture {
    authority: Authority,
    bundle: TrustBundle,
    token_key: TokenKey,
    token_signer: jsonwebtoken::EncodingKey,
}

impl CaFixture {
    /// A CA and a token key in a temporary directory, loaded, then the directory removed.
    pub fn new() -> CaFixture {
        let dir = tempfile::tempdir().expect("a temp dir");
        let authority = Authority::init(dir.path(), TRUST_DOMAIN, Duration::from_secs(3600), false)
            .expect("a CA");
        let token_key = TokenKey::load_or_create(dir.path()).expect("a token key");
        let pem = std::fs::read(dir.path().join(outrider::ca::token::TOKEN_KEY)).expect("key");
        let token_signer = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("an ES256 key");
        let bundle =
            TrustBundle::from_pem(TRUST_DOMAIN, authority.root_pem().as_bytes()).expect("bundle");
        CaFixture {
            authority,
            bundle,
            token_key,
            token_signer,
        }
    }
}

impl Default for CaFixture {
    fn default() -> Self {
        CaFixture::new()
    }
}

/// One certificate request to the CA: `data` is `<credential>\n<CSR>`.
///
/// The credential is either the `authorization` metadata value (`Bearer <jwt>`), checked the
/// way the CA service checks it, or `claims:<JSON>`: those claims signed with the CA's own token
/// key (ES256), so the fuzzer reaches the claim and subject checks behind a valid signature.
/// The CSR (PEM or DER) is then signed for the token's identity, or for a fixed one when the
/// token is refused (the service would stop there; the CSR parser is fuzzed either way). A leaf
/// the CA signs must verify against the CA's own bundle. Returns the issued ID, if any.
pub fn ca_request(fixture: &CaFixture, data: &[u8]) -> Option<SpiffeId> {
    let (credential, csr) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let credential = String::from_utf8_lossy(credential);
    let token = match credential.strip_prefix("claims:") {
        Some(json) => {
            let claims: serde_json::Value = serde_json::from_str(json).ok()?;
            let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            jsonwebtoken::encode(&header, &claims, &fixture.token_signer).ok()
        }
        None => credential
            .strip_prefix("Bearer ")
            .or_else(|| credential.strip_prefix("bearer "))
            .map(|t| t.trim().to_string()),
    };
    let from_token = token
        .and_then(|t| fixture.token_key.verify(&t).ok())
        .and_then(|s| workload_id(TRUST_DOMAIN, &s.namespace, &s.service_account).ok());
    if csr.len() > MAX_CSR_BYTES {
        return None;
    }
    let id = from_token
        .clone()
        .unwrap_or_else(|| SpiffeId::istio(TRUST_DOMAIN, "fuzz", "fuzz").expect("valid"));
    let leaf = fixture
        .authority
        .sign_csr(csr, &id, Duration::from_secs(600))
        .ok()?;
    let der = CertificateDer::from_pem_slice(leaf.pem.as_bytes()).expect("the CA's own PEM");
    let now = UnixTime::now();
    for role in [PeerRole::Client, PeerRole::Server] {
        let verified = verify_svid(&fixture.bundle, &der, &[], now, role)
            .expect("a leaf the CA signed must verify against its own bundle");
        assert_eq!(verified, id);
    }
    from_token
}
