//! The request path of the CA service: authenticate the caller (SVID or bootstrap token),
//! authorise (impersonation, rate limit, TTL), sign the CSR for that identity, audit.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::ca::impersonation::{NodeAccount, Refusal, IMPERSONATED_IDENTITY};
use crate::ca::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::ca::rotation::{self};
use crate::ca::token::TokenError;
use crate::ca::{workload_id, CaError};
use crate::identity::SpiffeId;

use super::{unix, Shared, MAX_CSR_BYTES};

pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A certificate signed for a request.
pub(super) struct Issued {
    id: SpiffeId,
    /// Set when a node agent asked for another workload's certificate.
    node: Option<NodeAgent>,
    chain: Vec<String>,
    serial_hex: String,
    /// Unix seconds.
    not_after: u64,
}

/// The node agent behind an impersonated issuance: its account and its own identity.
pub(super) struct NodeAgent {
    account: NodeAccount,
    caller: SpiffeId,
}

/// A refusal: the gRPC status for the caller and the reason label for audit and metrics.
pub(super) struct Denial {
    reason: &'static str,
    status: Status,
}

impl Denial {
    pub(super) fn new(reason: &'static str, code: Code, message: impl Into<String>) -> Denial {
        Denial {
            reason,
            status: Status::new(code, message),
        }
    }
}

impl Shared {
    pub(super) fn create_certificate(
        &self,
        peer: Option<SpiffeId>,
        remote: SocketAddr,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string());
        let message = request.into_inner();
        let auth = if peer.is_some() { "mtls" } else { "token" };
        match self.decide(peer.clone(), bearer.as_deref(), &message) {
            Ok(issued) => {
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                if let Some(node) = &issued.node {
                    *self
                        .stats
                        .impersonated
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(node.account.to_string())
                        .or_default() += 1;
                }
                tracing::info!(
                    target: "outrider::ca::audit",
                    decision = "issued",
                    identity = %issued.id,
                    node_agent = issued.node.as_ref().map(|n| tracing::field::display(&n.caller)),
                    auth,
                    serial = %issued.serial_hex,
                    not_after = issued.not_after,
                    requested_ttl_s = message.validity_duration,
                    %remote,
                    "certificate issued"
                );
                Ok(tonic::Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain,
                }))
            }
            Err(denial) => {
                self.stats.deny(denial.reason);
                tracing::info!(
                    target: "outrider::ca::audit",
                    decision = "denied",
                    reason = denial.reason,
                    code = ?denial.status.code(),
                    auth,
                    peer = ?peer.map(|p| p.to_string()),
                    %remote,
                    "{}",
                    denial.status.message()
                );
                Err(denial.status)
            }
        }
    }

    /// Authenticate, authorize, apply policy, sign.
    pub(super) fn decide(
        &self,
        peer: Option<SpiffeId>,
        bearer: Option<&str>,
        request: &IstioCertificateRequest,
    ) -> Result<Issued, Denial> {
        let material = self.material();
        let td = material.authority.trust_domain().to_string();
        let id = match (peer, bearer) {
            (Some(id), _) => {
                if id.trust_domain() != td
                    || id.namespace().is_none()
                    || id.service_account().is_none()
                {
                    return Err(Denial::new(
                        "bad_identity",
                        Code::PermissionDenied,
                        format!("the client certificate's identity {id} is not a workload of trust domain {td}"),
                    ));
                }
                if id == self.serving_id {
                    return Err(Denial::new(
                        "bad_identity",
                        Code::PermissionDenied,
                        "the CA's own identity cannot request certificates",
                    ));
                }
                id
            }
            (None, Some(header)) => {
                let token = header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
                    .ok_or_else(|| {
                        Denial::new(
                            "token_malformed",
                            Code::Unauthenticated,
                            "the authorization metadata is not `Bearer <token>`",
                        )
                    })?;
                let subject = self
                    .token_key
                    .verify(token.trim())
                    .map_err(|e: TokenError| {
                        Denial::new(e.reason(), Code::Unauthenticated, e.to_string())
                    })?;
                workload_id(&td, &subject.namespace, &subject.service_account).map_err(|e| {
                    Denial::new(
                        "bad_identity",
                        Code::PermissionDenied,
                        format!("the token names no valid identity: {e}"),
                    )
                })?
            }
            (None, None) => {
                return Err(Denial::new(
                    "no_credentials",
                    Code::Unauthenticated,
                    "no client certificate and no `authorization: Bearer <token>` metadata",
                ))
            }
        };
        let caller = id;
        let (id, node) = self.subject(&caller, request, &td)?;
        if !self.take_token(&id) {
            return Err(Denial::new(
                "rate_limited",
                Code::ResourceExhausted,
                format!("too many certificate requests for {id}; retry later"),
            ));
        }
        if request.csr.len() > MAX_CSR_BYTES {
            return Err(Denial::new(
                "too_large",
                Code::ResourceExhausted,
                format!(
                    "the CSR is {} bytes; the limit is {MAX_CSR_BYTES}",
                    request.csr.len()
                ),
            ));
        }
        let ttl = if request.validity_duration <= 0 {
            self.config.default_ttl
        } else {
            let asked = Duration::from_secs(request.validity_duration as u64);
            if asked > self.config.max_ttl {
                return Err(Denial::new(
                    "ttl_too_long",
                    Code::InvalidArgument,
                    format!(
                        "requested TTL {}s is greater than the max allowed TTL {}s",
                        asked.as_secs(),
                        self.config.max_ttl.as_secs()
                    ),
                ));
            }
            asked
        };
        let leaf = material
            .authority
            .sign_csr(request.csr.as_bytes(), &id, ttl)
            .map_err(|e| match e {
                CaError::BadCsr(_) => {
                    Denial::new("invalid_csr", Code::InvalidArgument, e.to_string())
                }
                other => Denial::new("internal", Code::Internal, other.to_string()),
            })?;
        let not_after = unix(leaf.not_after);
        self.note_issued(material.authority.serial_hex(), not_after);
        Ok(Issued {
            id,
            node: node.map(|account| NodeAgent { account, caller }),
            chain: vec![leaf.pem, material.bundle_pem.clone()],
            serial_hex: leaf.serial_hex,
            not_after,
        })
    }

    /// The identity to certify: the caller's own, or the one a trusted node agent names in
    /// `ImpersonatedIdentity` (with the node account that asked).
    pub(super) fn subject(
        &self,
        caller: &SpiffeId,
        request: &IstioCertificateRequest,
        td: &str,
    ) -> Result<(SpiffeId, Option<NodeAccount>), Denial> {
        let Some(value) = request
            .metadata
            .as_ref()
            .and_then(|meta| meta.fields.get(IMPERSONATED_IDENTITY))
        else {
            return Ok((caller.clone(), None));
        };
        let Some(prost_types::value::Kind::StringValue(text)) = &value.kind else {
            return Err(Denial::new(
                "bad_identity",
                Code::InvalidArgument,
                format!("{IMPERSONATED_IDENTITY} must be a string (a SPIFFE ID)"),
            ));
        };
        let target = SpiffeId::parse(text.trim());
        // Asking for oneself is no impersonation (Istio's clients may always set the key).
        if target.as_ref().is_ok_and(|t| t == caller) {
            return Ok((caller.clone(), None));
        }
        let not_trusted = || {
            Denial::new(
                "impersonation",
                Code::PermissionDenied,
                format!("{caller} is not a trusted node account and may not request a certificate for {}", text.trim()),
            )
        };
        if self.impersonation.node_account_of(caller).is_none() {
            return Err(not_trusted());
        }
        let target = target
            .ok()
            .filter(|t| {
                t.trust_domain() == td && t.namespace().is_some() && t.service_account().is_some()
            })
            .ok_or_else(|| {
                Denial::new(
                    "bad_identity",
                    Code::InvalidArgument,
                    format!("{IMPERSONATED_IDENTITY} {text:?} is not a workload SPIFFE ID of trust domain {td}"),
                )
            })?;
        if target == self.serving_id {
            return Err(Denial::new(
                "bad_identity",
                Code::PermissionDenied,
                "the CA's own identity cannot be requested",
            ));
        }
        match self.impersonation.decide(caller, &target) {
            Ok(node) => Ok((target, node)),
            Err(Refusal::NotTrusted) => Err(not_trusted()),
            Err(Refusal::NotAllowed(node)) => Err(Denial::new(
                "impersonation_not_allowed",
                Code::PermissionDenied,
                format!("node account {node} may not request a certificate for {target} (not in its node identities)"),
            )),
        }
    }

    pub(super) fn take_token(&self, id: &SpiffeId) -> bool {
        let rate = f64::from(self.config.rate_per_minute) / 60.0;
        let burst = f64::from(self.config.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(id.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Remembers the latest notAfter per signing root, on disk, for `rotate-root --step retire`.
    pub(super) fn note_issued(&self, root_serial: &str, not_after: u64) {
        let mut until = self.issued_until.lock().unwrap_or_else(|e| e.into_inner());
        let known = until
            .entry(root_serial.to_string())
            .or_insert_with(|| rotation::issued_until(&self.config.dir, root_serial));
        if not_after > *known {
            *known = not_after;
            if let Err(e) = rotation::record_issued_until(&self.config.dir, root_serial, not_after)
            {
                tracing::warn!(error = %e, "cannot record the validity of issued leaves");
            }
        }
    }
}
