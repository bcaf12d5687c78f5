//! `outrider fetch`: a tiny plaintext HTTP/1.1 GET, for images that have no curl.
//!
//! The container image is FROM scratch: there is no shell and no curl in it. The compose file
//! still needs two small clients, and both are this command:
//! - the health check of a sidecar container: `outrider fetch http://127.0.0.1:15021/healthz/ready`
//!   (exit 0 on a 2xx answer, 1 otherwise);
//! - the sidecar-less `intruder`, which makes plain HTTP requests straight to a service's port
//!   (`--every 5s` keeps trying and logs each attempt, as the labs' rogue `curl` loop does);
//!   with `--header 'Authorization: Bearer <token>'` it is the labs' `curl -H` of an end user.
//!
//! Failures are printed the way curl words them (`Connection reset by peer`), so the storyline
//! reads the same as in the labs.
//!
//! The library side also speaks HTTPS for the demo's edge step ([`request_via`]): a client
//! outside the mesh calling the ingress gateway as the labs' `curl --cacert ... --resolve ...`
//! does, with the caller's own rustls configuration (roots, optional client certificate).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer that is read (the sample app answers a few bytes).
const MAX_ANSWER: u64 = 1 << 20;

/// One `outrider fetch`: what to get and how.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `http://host:port/path` (plaintext only; host is a name or an IP).
    pub url: String,
    /// Deadline for the whole request (connect, send, read the answer).
    pub timeout: Duration,
    /// Repeat forever with this pause, printing one line per attempt (never exits).
    pub every: Option<Duration>,
    /// Print nothing on success (health checks).
    pub quiet: bool,
    /// Extra request headers, `Name: value` each (`--header 'Authorization: Bearer ...'`).
    pub headers: Vec<String>,
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `host:port`, as dialed and as sent in `Host:`.
    authority: String,
    path: String,
}

/// What one GET got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// The `Location` header, when the answer has one (a redirect).
    pub location: Option<String>,
}

/// How a request reaches its server when that is not "dial the authority, plaintext".
#[derive(Clone, Default)]
pub struct Via {
    /// Dial this `ip:port` instead of the authority, which still names the server in `Host:`
    /// and TLS (curl's `--resolve host:port:addr`).
    pub address: Option<String>,
    /// Speak TLS with this configuration (https://): the authority's host is the server name
    /// sent (SNI) and checked against the server's certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Via")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a GET got no answer, worded as curl words it (`Recv failure: Connection reset by
/// peer`), so the storyline reads the same as in the labs.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("Failed to connect to {authority}: {}", curl_words(.error))]
    Connect {
        authority: String,
        error: std::io::Error,
    },
    #[error("Send failure: {}", curl_words(.0))]
    Send(std::io::Error),
    #[error("Recv failure: {}", curl_words(.0))]
    Recv(std::io::Error),
    /// The TLS handshake failed (a refused certificate, an alert from the server).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The authority's host cannot be a TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("Empty reply from server")]
    Empty,
    #[error("not an HTTP answer: {0:?}")]
    NotHttp(Option<String>),
    #[error("Operation timed out after {0:?}")]
    Timeout(Duration),
    /// An answer, but not the one asked for (callers that want a 200 only).
    #[error("HTTP {0}")]
    Status(u16),
}

impl FetchError {
    /// True when the server reset the connection (what a STRICT sidecar does to plaintext).
    pub fn is_reset(&self) -> bool {
        match self {
            FetchError::Connect { error, .. }
            | FetchError::Send(error)
            | FetchError::Recv(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
            _ => false,
        }
    }
}

impl FetchOptions {
    /// Exits 0 on a 2xx answer; an error (exit 1) otherwise, worded like curl's.
    pub fn run(self) -> anyhow::Result<()> {
        let target = parse_url(&self.url)?;
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        rt.block_on(async move {
            let Some(every) = self.every else {
                let answer =
                    request(&target.authority, &target.path, &headers, self.timeout).await?;
                if !self.quiet || !(200..300).contains(&answer.status) {
                    println!("{} {}", answer.status, answer.body.trim_end());
                }
                if (200..300).contains(&answer.status) {
                    return Ok(());
                }
                anyhow::bail!("{} answered HTTP {}", self.url, answer.status);
            };
            loop {
                match request(&target.authority, &target.path, &headers, self.timeout).await {
                    Ok(a) => println!("GET {} -> {} {}", self.url, a.status, a.body.trim_end()),
                    Err(e) => println!("GET {} -> {e:#}", self.url),
                }
                tokio::time::sleep(every).await;
            }
        })
    }
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        anyhow::bail!("{url:?} has no host");
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_string(),
    })
}

/// `Name: value` → (name, value); refuses what would break the request head.
fn parse_header(h: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = h
        .split_once(':')
        .with_context(|| format!("--header {h:?}: expected `Name: value`"))?;
    let name = name.trim();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        anyhow::bail!("--header {h:?}: {name:?} is not a header name");
    }
    let value = value.trim();
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        anyhow::bail!("--header {h:?}: the value has a line break or NUL");
    }
    Ok((name.to_string(), value.to_string()))
}

/// One plaintext HTTP/1.1 GET of `path` from `authority` (`host:port`), with a deadline for
/// the whole exchange.
pub async fn get(authority: &str, path: &str, timeout: Duration) -> Result<Answer, FetchError> {
    request(authority, path, &[], timeout).await
}

/// A GET like [`get`] with extra request headers (`(name, value)`, sent as given).
pub async fn request(
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Answer, FetchError> {
    exchange(
        authority,
        "GET",
        path,
        headers,
        b"",
        &Via::default(),
        timeout,
    )
    .await
}

/// A GET like [`request`], reaching the server as `via` says (another address, TLS).
pub async fn request_via(
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    via: &Via,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    exchange(authority, "GET", path, headers, b"", via, timeout).await
}

/// A POST of a form (`application/x-www-form-urlencoded`) body, as an OAuth token request.
pub async fn post_form(
    authority: &str,
    path: &str,
    form: &str,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    let headers = [(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    exchange(
        authority,
        "POST",
        path,
        &headers,
        form.as_bytes(),
        &Via::default(),
        timeout,
    )
    .await
}

/// The host part of `host:port` (`[v6]:port` → `v6`).
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

async fn exchange(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    via: &Via,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    let io = async {
        let dial = via.address.as_deref().unwrap_or(authority);
        let s = TcpStream::connect(dial)
            .await
            .map_err(|error| FetchError::Connect {
                authority: dial.to_string(),
                error,
            })?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: outrider-fetch\r\nConnection: close\r\n"
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if method != "GET" || !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        let raw = match &via.tls {
            None => talk(s, &message).await?,
            Some(config) => {
                let host = host_of(authority);
                let name = ServerName::try_from(host.to_string())
                    .map_err(|_| FetchError::ServerName(host.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, s)
                    .await
                    .map_err(FetchError::Tls)?;
                talk(tls, &message).await?
            }
        };
        parse_answer(&raw)
    };
    tokio::time::timeout(timeout, io)
        .await
        .unwrap_or(Err(FetchError::Timeout(timeout)))
}

/// Sends `message`, then reads the answer to the end of the stream (the request said
/// `Connection: close`).
async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    message: &[u8],
) -> Result<Vec<u8>, FetchError> {
    s.write_all(message).await.map_err(FetchError::Send)?;
    s.flush().await.map_err(FetchError::Send)?;
    let mut raw = Vec::new();
    match (&mut s).take(MAX_ANSWER).read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        // A TLS server that closes without close_notify after a complete answer: the answer
        // is still whole (HTTP/1.1 with `Connection: close` ends at the end of the stream).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(FetchError::Recv(e)),
    }
}

/// curl says "Connection reset by peer"; keep the OS wording but make the common ones exact.
fn curl_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "Connection reset by peer".into(),
        std::io::ErrorKind::ConnectionRefused => "Connection refused".into(),
        _ => e.to_string(),
    }
}

fn parse_answer(raw: &[u8]) -> Result<Answer, FetchError> {
    if raw.is_empty() {
        return Err(FetchError::Empty);
    }
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 ").or(l.strip_prefix("HTTP/1.0 ")))
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| FetchError::NotHttp(head.lines().next().map(str::to_string)))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let location = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_string())
    });
    Ok(Answer {
        status,
        body,
        location,
    })
}

/// Joins the chunks of a chunked body (best effort: stops at the first malformed size).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://age:8080/healthz").unwrap();
        assert_eq!(t.authority, "age:8080");
        assert_eq!(t.path, "/healthz");
        let t = parse_url("http://127.0.0.1:15021").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:15021", "/")
        );
        assert_eq!(
            parse_url("http://sentences/").unwrap().authority,
            "sentences:80"
        );
        assert!(parse_url("https://age:8080/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer a.b.c").unwrap(),
            ("Authorization".into(), "Bearer a.b.c".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": empty name").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert!(parse_header("X-A: b\r\nX-Injected: c").is_err());
    }

    #[test]
    fn answers() {
        let a = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n42").unwrap();
        assert_eq!(
            a,
            Answer {
                status: 200,
                body: "42".into(),
                location: None,
            }
        );
        let a = parse_answer(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://sentences.example.com/\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (a.status, a.location.as_deref()),
            (301, Some("https://sentences.example.com/"))
        );
        let a = parse_answer(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!(a.status, 503);
        let a = parse_answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(a.body, "ok");
        assert!(parse_answer(b"").is_err());
        assert!(parse_answer(b"SSH-2.0-x\r\n").is_err());
    }

    /// A TLS server for `sentences.example.com` (a certificate from its own root) that answers
    /// one request and closes without close_notify; returns its address, the root's PEM and
    /// the request it received.
    async fn tls_server() -> (
        std::net::SocketAddr,
        String,
        tokio::task::JoinHandle<String>,
    ) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::default();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key).unwrap();
        let issuer = Issuer::new(root, &root_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["sentences.example.com".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(crate::identity::svid::PROVIDER.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return String::new();
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = tls.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            // Dropped without close_notify, as some servers close.
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, root_cert.pem(), task)
    }

    fn client_trusting(root_pem: &str) -> Arc<rustls::ClientConfig> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(crate::identity::svid::PROVIDER.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    #[tokio::test]
    async fn https_via_another_address_names_the_authority() {
        let (addr, root, server) = tls_server().await;
        let authority = format!("sentences.example.com:{}", addr.port());
        let via = Via {
            address: Some(addr.to_string()),
            tls: Some(client_trusting(&root)),
        };
        let answer = request_via(&authority, "/", &[], &via, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
        let request = server.await.unwrap();
        assert!(
            request.contains(&format!("\r\nHost: {authority}\r\n")),
            "{request}"
        );
    }

    #[tokio::test]
    async fn https_refuses_a_server_of_another_root() {
        let (addr, _, server) = tls_server().await;
        let (_, other_root, _other) = tls_server().await;
        let via = Via {
            address: Some(addr.to_string()),
            tls: Some(client_trusting(&other_root)),
        };
        let authority = format!("sentences.example.com:{}", addr.port());
        let err = request_via(&authority, "/", &[], &via, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Tls(_)), "{err}");
        assert!(server.await.unwrap().is_empty());
    }

    #[test]
    fn hosts_of_authorities() {
        assert_eq!(
            host_of("sentences.example.com:8443"),
            "sentences.example.com"
        );
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("age"), "age");
    }

    #[test]
    fn failures_read_like_curl() {
        let reset = FetchError::Recv(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(reset.to_string(), "Recv failure: Connection reset by peer");
        assert!(reset.is_reset());
        let refused = FetchError::Connect {
            authority: "age:8080".into(),
            error: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(
            refused.to_string(),
            "Failed to connect to age:8080: Connection refused"
        );
        assert!(!refused.is_reset());
    }
}
