//! `x-forwarded-client-cert` (XFCC): what the app learns about the client of an mTLS
//! connection, per Envoy's rules (SEMANTICS §8).
//!
//! The element this proxy adds is built once per connection ([`element`]); per request only
//! the mode decides what happens to the header the client sent ([`apply`]).

use std::fmt::Write as _;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::config::ForwardClientCert;

/// The header name.
pub const HEADER: &str = "x-forwarded-client-cert";

/// What the client certificate of an mTLS connection says, for the XFCC element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// Hex SHA-256 of the leaf's DER.
    pub hash: String,
    /// The subject DN in RFC 2253 form (empty for SVIDs, which carry no subject).
    pub subject: String,
    /// The first URI SAN (the SPIFFE ID), if any.
    pub uri: Option<String>,
    pub dns: Vec<String>,
}

impl ClientCert {
    /// Reads the details of a verified leaf certificate; an unparsable one (which the verifier
    /// would have refused) yields the hash alone.
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> ClientCert {
        let hash = hex(sha256(leaf.as_ref()).as_ref());
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
            return ClientCert {
                hash,
                ..ClientCert::default()
            };
        };
        let mut uri = None;
        let mut dns = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) if uri.is_none() => uri = Some(u.to_string()),
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
        ClientCert {
            hash,
            subject: rfc2253(cert.subject()),
            uri,
            dns,
        }
    }
}

/// The element this proxy appends: `By=<own id>;Hash=<hex>;Subject="<dn>";URI=<uri>` and
/// one `DNS=` per DNS SAN (Istio's sidecar details: Subject, URI, DNS).
pub fn element(by: &str, cert: &ClientCert) -> String {
    let mut out = String::with_capacity(160);
    push_pair(&mut out, "By", by, false);
    push_pair(&mut out, "Hash", &cert.hash, false);
    push_pair(&mut out, "Subject", &cert.subject, true);
    push_pair(&mut out, "URI", cert.uri.as_deref().unwrap_or(""), false);
    for d in &cert.dns {
        push_pair(&mut out, "DNS", d, false);
    }
    out
}

/// The element an ingress gateway sets for an external client certificate (Istio's gateway
/// default, SANITIZE_SET with Subject, Cert, DNS, URI): `Hash`, `Cert` (the URL-encoded PEM of
/// the leaf, quoted), `Subject`, `URI` and one `DNS` per DNS SAN. No `By`: the certificate the
/// gateway served is the user's, with no URI SAN to name itself by.
pub fn gateway_element(leaf: &CertificateDer<'_>) -> String {
    let cert = ClientCert::from_leaf(leaf);
    // LF line endings, as OpenSSL (and so Envoy) writes PEM.
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", leaf.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let mut out = String::with_capacity(256 + pem.len() * 2);
    push_pair(&mut out, "Hash", &cert.hash, false);
    push_pair(&mut out, "Cert", &url_encode(&pem), true);
    push_pair(&mut out, "Subject", &cert.subject, true);
    push_pair(&mut out, "URI", cert.uri.as_deref().unwrap_or(""), false);
    for d in &cert.dns {
        push_pair(&mut out, "DNS", d, false);
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters (how Envoy writes `Cert`).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn push_pair(out: &mut String, key: &str, value: &str, always_quote: bool) {
    if !out.is_empty() {
        out.push(';');
    }
    out.push_str(key);
    out.push('=');
    if always_quote || value.contains([',', ';', '=', '"']) {
        out.push('"');
        for c in value.chars() {
            if c == '"' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// What to do with the request's XFCC header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave the header as it came (absent or not).
    Keep,
    /// Remove every XFCC header.
    Remove,
    /// Replace every XFCC header by this value.
    Set(String),
}

/// Envoy's rule: on a connection that is not mTLS (`own` is `None`) the client's header is
/// removed in every mode but `ALWAYS_FORWARD_ONLY`; on mTLS, `own` is this hop's element.
pub fn apply(mode: ForwardClientCert, incoming: Option<&str>, own: Option<&str>) -> Action {
    use ForwardClientCert::*;
    match (mode, own) {
        (AlwaysForwardOnly, _) => Action::Keep,
        (_, None) => Action::Remove,
        (Sanitize, Some(_)) => Action::Remove,
        (ForwardOnly, Some(_)) => Action::Keep,
        (SanitizeSet, Some(own)) => Action::Set(own.to_string()),
        (AppendForward, Some(own)) => match incoming {
            Some(prev) if !prev.is_empty() => Action::Set(format!("{prev},{own}")),
            _ => Action::Set(own.to_string()),
        },
    }
}

/// A DN as RFC 2253 prints it: last RDN first, `,` between RDNs, `+` inside one, special
/// characters escaped.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut rdns = Vec::new();
    for rdn in name.iter() {
        let mut parts = Vec::new();
        for atv in rdn.iter() {
            let key = x509_parser::objects::oid2abbrev(atv.attr_type(), registry)
                .map(str::to_string)
                .unwrap_or_else(|_| atv.attr_type().to_id_string());
            let value = atv.as_str().unwrap_or("");
            let mut escaped = String::new();
            for (i, c) in value.chars().enumerate() {
                let leading = i == 0 && (c == ' ' || c == '#');
                if leading || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            if escaped.ends_with(' ') {
                escaped.pop();
                escaped.push_str("\\ ");
            }
            parts.push(format!("{key}={escaped}"));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

/// SHA-256 through the TLS provider (rustls exposes its hashes through its cipher suites).
fn sha256(bytes: &[u8]) -> rustls::crypto::hash::Output {
    rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite")
        .common
        .hash_provider
        .hash(bytes)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &str, uri: Option<&str>, dns: &[&str]) -> ClientCert {
        ClientCert {
            hash: "ab01".into(),
            subject: subject.into(),
            uri: uri.map(str::to_string),
            dns: dns.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn elements_quote_what_envoy_quotes() {
        let by = "spiffe://cluster.local/ns/default/sa/age";
        let table = [
            (
                cert("", Some("spiffe://cluster.local/ns/default/sa/sentences"), &[]),
                "By=spiffe://cluster.local/ns/default/sa/age;Hash=ab01;Subject=\"\";URI=spiffe://cluster.local/ns/default/sa/sentences",
            ),
            // Subject is always quoted; its commas and equals signs stay inside the quotes.
            (
                cert("CN=client,O=Example", None, &[]),
                "By=spiffe://cluster.local/ns/default/sa/age;Hash=ab01;Subject=\"CN=client,O=Example\";URI=",
            ),
            // A quote inside a quoted value is escaped.
            (
                cert("CN=say \"hi\"", None, &[]),
                "By=spiffe://cluster.local/ns/default/sa/age;Hash=ab01;Subject=\"CN=say \\\"hi\\\"\";URI=",
            ),
            // One DNS= per DNS SAN; a value with `;` or `=` is quoted.
            (
                cert("", Some("spiffe://td/ns/a;b/sa/c"), &["age", "age.default"]),
                "By=spiffe://cluster.local/ns/default/sa/age;Hash=ab01;Subject=\"\";URI=\"spiffe://td/ns/a;b/sa/c\";DNS=age;DNS=age.default",
            ),
        ];
        for (c, want) in table {
            assert_eq!(element(by, &c), want);
        }
    }

    #[test]
    fn modes_treat_the_incoming_header_as_envoy_does() {
        use ForwardClientCert::*;
        let own = Some("By=me");
        let table = [
            (
                AppendForward,
                Some("By=prev"),
                own,
                Action::Set("By=prev,By=me".into()),
            ),
            (AppendForward, None, own, Action::Set("By=me".into())),
            (AppendForward, Some("By=forged"), None, Action::Remove),
            (Sanitize, Some("By=prev"), own, Action::Remove),
            (ForwardOnly, Some("By=prev"), own, Action::Keep),
            (ForwardOnly, Some("By=forged"), None, Action::Remove),
            (
                SanitizeSet,
                Some("By=prev"),
                own,
                Action::Set("By=me".into()),
            ),
            (SanitizeSet, Some("By=forged"), None, Action::Remove),
            (AlwaysForwardOnly, Some("By=forged"), None, Action::Keep),
            (AlwaysForwardOnly, Some("By=prev"), own, Action::Keep),
        ];
        for (mode, incoming, own, want) in table {
            assert_eq!(
                apply(mode, incoming, own),
                want,
                "{mode:?} {incoming:?} {own:?}"
            );
        }
    }

    #[test]
    fn a_real_leaf_gives_its_uri_dns_and_hash() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["age".to_string()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/default/sa/age"
                .try_into()
                .unwrap(),
        ));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "age, the service");
        let c = params.self_signed(&key).unwrap();
        let details = ClientCert::from_leaf(c.der());
        assert_eq!(details.hash.len(), 64);
        assert_eq!(
            details.uri.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/age")
        );
        assert_eq!(details.dns, vec!["age".to_string()]);
        assert_eq!(details.subject, "CN=age\\, the service,O=Example");
    }

    #[test]
    fn the_gateway_element_carries_the_url_encoded_certificate_and_no_by() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client.example.com".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client.example.com");
        let c = params.self_signed(&key).unwrap();
        let element = gateway_element(c.der());
        let pairs: Vec<&str> = element.split(';').collect();
        assert!(
            pairs[0].starts_with("Hash=") && pairs[0].len() == 5 + 64,
            "{element}"
        );
        assert!(
            pairs[1].starts_with("Cert=\"-----BEGIN%20CERTIFICATE-----%0A"),
            "{element}"
        );
        assert!(
            pairs[1].ends_with("-----END%20CERTIFICATE-----%0A\""),
            "{element}"
        );
        // The URL-encoded PEM has nothing that needs quoting inside, and decodes to the leaf.
        let encoded = &pairs[1][6..pairs[1].len() - 1];
        assert!(
            !encoded.contains([',', ';', '=', '"', '+', '/']),
            "{encoded}"
        );
        assert_eq!(pairs[2], "Subject=\"CN=client.example.com\"");
        assert_eq!(pairs[3], "URI=");
        assert_eq!(pairs[4], "DNS=client.example.com");
        assert_eq!(pairs.len(), 5);
        assert!(!element.contains("By="));
    }
}
