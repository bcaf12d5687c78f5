//! `outrider sample-app` flags → [`SampleConfig`]. Self-contained (no `super::`): the
//! `cargo run --example age|name|sentences|auth` programs include this file too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use outrider::samples::auth::AuthConfig;
use outrider::samples::{SampleConfig, Service};

/// `outrider sample-app --service age|name|sentences|auth`: one service of the sample app.
#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// age, name, sentences, or auth: a small OIDC issuer of access tokens for the labs
    /// (password grant, RS256, Keycloak's URLs under /auth/realms/<realm>/), a sample and not a
    /// product identity provider.
    #[arg(long)]
    pub service: Service,
    /// Where the service listens (its sidecar's `targetPort`).
    #[arg(long, env = "SAMPLE_LISTEN", default_value = "127.0.0.1:9080")]
    pub listen: SocketAddr,
    /// The version label it reports (`v1`, `v2`).
    #[arg(long, env = "SAMPLE_VERSION", default_value = "v1")]
    pub version: String,
    /// For `sentences`: where `name` is reached (its sidecar's outbound bind address).
    #[arg(long, env = "SAMPLE_NAME_ADDR")]
    pub name_addr: Option<String>,
    /// For `sentences`: where `age` is reached.
    #[arg(long, env = "SAMPLE_AGE_ADDR")]
    pub age_addr: Option<String>,
    /// The realm: the issuer answers under /auth/realms/<realm>/.
    #[arg(
        long,
        env = "SAMPLE_REALM",
        default_value = "mesh",
        help_heading = "auth"
    )]
    pub realm: String,
    /// The `iss` of the tokens and the base of the discovery document's URLs
    /// [default: http://<listen>/auth/realms/<realm>, localhost for 0.0.0.0].
    #[arg(long, env = "SAMPLE_ISSUER", help_heading = "auth")]
    pub issuer: Option<String>,
    /// A YAML file `users: [{username, password, audience?, scope?}]` (plain-text passwords:
    /// a sample) [default: alice/alice and bob/bob].
    #[arg(long, env = "SAMPLE_USERS", help_heading = "auth")]
    pub users: Option<PathBuf>,
    /// An RSA private key (PEM, PKCS#1 or PKCS#8) to sign with, instead of an RSA 2048 key made
    /// at start. POST /auth/realms/<realm>/rotate or SIGHUP switches to a new key; the JWKS keeps
    /// the previous one.
    #[arg(long, env = "SAMPLE_KEY", help_heading = "auth")]
    pub key: Option<PathBuf>,
    /// Lifetime of the access tokens (`5m`, `1h`, `90s`).
    #[arg(
        long,
        env = "SAMPLE_TOKEN_TTL",
        default_value = "5m",
        value_parser = ttl,
        help_heading = "auth"
    )]
    pub token_ttl: Duration,
}

fn ttl(s: &str) -> Result<Duration, String> {
    outrider::duration::parse(s).map_err(|e| e.to_string())
}

impl SampleArgs {
    pub fn into_config(self) -> SampleConfig {
        SampleConfig {
            service: self.service,
            listen: self.listen,
            version: self.version,
            name_addr: self.name_addr,
            age_addr: self.age_addr,
            auth: AuthConfig {
                realm: self.realm,
                issuer: self.issuer,
                users: self.users,
                key: self.key,
                token_ttl: self.token_ttl,
            },
        }
    }
}
