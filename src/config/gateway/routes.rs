//! A VirtualService bound to gateways, compiled in two steps.
//!
//! At load ([`compile`]), on its own: every `http[]` rule's matches (regexes compiled), action
//! (route, redirect, direct response), rewrite, timeout, retries and header edits; `tls[]` and
//! `tcp[]` matches. What a gateway does not act on (`fault`, `mirror`, `corsPolicy`,
//! `delegate`, source matches) becomes warnings; what it cannot honour is an error naming the
//! field.
//!
//! At plan time ([`attach`]), per server of a gateway workload: the rules whose match
//! `gateways` and `port` admit the server, each destination planned from the gateway workload
//! with the sidecar's outbound machinery (DestinationRules, subsets, ISTIO_MUTUAL and secure
//! naming to sidecars).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::super::error::ConfigError;
use super::super::gateway_plan::{
    HeaderEdits, HeaderOps, HttpAction, HttpMatch, HttpRouteAction, HttpRule, L4Rule, Redirect,
    RetryPolicy, Rewrite, StringMatch, WeightedDestination,
};
use super::super::hosts::split_fqdn;
use super::super::outbound::{PortRef, Target};
use super::super::plan::OutboundPlan;
use super::super::resources::{
    HeaderOperationsSpec, HeadersSpec, HttpMatchSpec, HttpRoute, RetriesSpec, RouteDestination,
    StringMatchSpec, VirtualServiceSpec,
};
use super::super::source::Document;
use super::super::virtual_service::{
    destination_weight, gateway_ref, VirtualService, MESH_GATEWAY,
};
use super::super::{MeshConfig, Workload};

/// Istio's retry conditions when a rule sets no `retries` (and `retryOn` when `retries` sets
/// none): Envoy's names plus the retriable status code 503.
const DEFAULT_RETRY_ON: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
    "503",
];

/// Istio's retry attempts when a rule sets no `retries`.
const DEFAULT_ATTEMPTS: u32 = 2;

/// The `retryOn` conditions Envoy knows (HTTP and gRPC); status codes are numbers.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The gateway rules of one VirtualService, compiled at load.
#[derive(Debug, Clone, Default)]
pub(crate) struct GatewayRoutes {
    pub http: Vec<CompiledHttp>,
    pub tls: Vec<CompiledL4>,
    pub tcp: Vec<CompiledL4>,
}

/// A match condition and the gateways it is limited to (empty: every gateway the
/// VirtualService is bound to).
#[derive(Debug, Clone)]
pub(crate) struct Limited<M> {
    pub condition: M,
    pub gateways: Vec<(String, String)>,
    pub port: Option<u16>,
}

/// One `http[]` rule, destinations not yet planned.
#[derive(Debug, Clone)]
pub(crate) struct CompiledHttp {
    pub origin: String,
    /// `None`: the rule has no `match` (it matches every request).
    pub matches: Option<Vec<Limited<HttpMatch>>>,
    pub action: CompiledAction,
    pub headers: HeaderEdits,
}

#[derive(Debug, Clone)]
pub(crate) enum CompiledAction {
    Route {
        destinations: Vec<CompiledDestination>,
        rewrite: Option<Rewrite>,
        timeout: Option<Duration>,
        retries: RetryPolicy,
    },
    Fixed(HttpAction),
}

/// One `route[]` entry: where it goes is planned per gateway workload.
#[derive(Debug, Clone)]
pub(crate) struct CompiledDestination {
    /// `spec.http[0].route[1]`, to locate errors.
    pub field: String,
    pub spec: RouteDestination,
    pub weight: u32,
    pub headers: HeaderEdits,
}

/// One `tls[]` or `tcp[]` rule: each match is `(sniHosts, port)`.
#[derive(Debug, Clone)]
pub(crate) struct CompiledL4 {
    pub origin: String,
    /// `None`: the rule has no `match` (`tcp[]` only).
    pub matches: Option<Vec<Limited<Vec<String>>>>,
    pub destinations: Vec<CompiledDestination>,
}

/// Compiles the rules of a VirtualService bound to at least one Gateway.
pub(crate) fn compile(
    doc: &Document,
    namespace: &str,
    name: &str,
    spec: &VirtualServiceSpec,
    warnings: &mut Vec<String>,
) -> Result<GatewayRoutes, ConfigError> {
    let ctx = Context {
        doc,
        namespace,
        name,
    };
    let mut routes = GatewayRoutes::default();
    for (i, r) in spec.http.iter().enumerate() {
        if let Some(rule) = ctx.http_rule(i, r, warnings)? {
            routes.http.push(rule);
        }
    }
    for (i, r) in spec.tls.iter().enumerate() {
        let base = format!("spec.tls[{i}]");
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let f = format!("{base}.match[{j}]");
            ctx.warn_source(
                &f,
                !m.source_labels.is_empty(),
                m.source_namespace.is_some(),
                warnings,
            );
            ctx.warn_subnets(&f, !m.destination_subnets.is_empty(), warnings);
            matches.push(Limited {
                condition: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                gateways: ctx.gateways(&m.gateways),
                port: ctx.port(&format!("{f}.port"), m.port)?,
            });
        }
        routes.tls.push(CompiledL4 {
            origin: format!("VirtualService {namespace}/{name} tls[{i}]"),
            matches: Some(matches),
            destinations: ctx.destinations(&base, &r.route)?,
        });
    }
    for (i, r) in spec.tcp.iter().enumerate() {
        let base = format!("spec.tcp[{i}]");
        let matches = match &r.matches {
            None => None,
            Some(ms) => {
                let mut matches = Vec::new();
                for (j, m) in ms.iter().enumerate() {
                    let f = format!("{base}.match[{j}]");
                    ctx.warn_source(
                        &f,
                        !m.source_labels.is_empty(),
                        m.source_namespace.is_some() || m.source_subnet.is_some(),
                        warnings,
                    );
                    ctx.warn_subnets(&f, !m.destination_subnets.is_empty(), warnings);
                    matches.push(Limited {
                        condition: Vec::new(),
                        gateways: ctx.gateways(&m.gateways),
                        port: ctx.port(&format!("{f}.port"), m.port)?,
                    });
                }
                Some(matches)
            }
        };
        routes.tcp.push(CompiledL4 {
            origin: format!("VirtualService {namespace}/{name} tcp[{i}]"),
            matches,
            destinations: ctx.destinations(&base, &r.route)?,
        });
    }
    Ok(routes)
}

/// The VirtualService being compiled, for locating errors and warnings.
struct Context<'a> {
    doc: &'a Document,
    namespace: &'a str,
    name: &'a str,
}

impl Context<'_> {
    fn warn(&self, field: &str, what: &str, warnings: &mut Vec<String>) {
        let at = self.doc.locate(field);
        warnings.push(format!(
            "{}:{}: {field}: VirtualService {}/{}: {what}",
            at.file.display(),
            at.line,
            self.namespace,
            self.name
        ));
    }

    fn warn_source(&self, field: &str, labels: bool, other: bool, warnings: &mut Vec<String>) {
        if labels || other {
            self.warn(
                field,
                "source matches (sourceLabels, sourceNamespace, sourceSubnet) are ignored at a gateway",
                warnings,
            );
        }
    }

    fn warn_subnets(&self, field: &str, set: bool, warnings: &mut Vec<String>) {
        if set {
            self.warn(
                field,
                "destinationSubnets is ignored at a gateway",
                warnings,
            );
        }
    }

    /// A match's `gateways`, as `(namespace, name)`; `mesh` can never match at a gateway and
    /// is kept as written so that a match naming only `mesh` admits no gateway.
    fn gateways(&self, written: &[String]) -> Vec<(String, String)> {
        written
            .iter()
            .map(|g| {
                if g == MESH_GATEWAY {
                    (String::new(), MESH_GATEWAY.to_string())
                } else {
                    gateway_ref(g, self.namespace)
                }
            })
            .collect()
    }

    fn port(&self, field: &str, port: Option<u32>) -> Result<Option<u16>, ConfigError> {
        port.map(|p| {
            u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                self.doc
                    .error(field, format!("port {p} is out of range 1-65535"))
            })
        })
        .transpose()
    }

    /// One `http[]` rule; `None` for a `delegate` rule (not acted on: a warning).
    fn http_rule(
        &self,
        i: usize,
        r: &HttpRoute,
        warnings: &mut Vec<String>,
    ) -> Result<Option<CompiledHttp>, ConfigError> {
        let base = format!("spec.http[{i}]");
        for (set, f) in [
            (r.fault.is_some(), "fault"),
            (r.mirror.is_some(), "mirror"),
            (r.mirrors.is_some(), "mirrors"),
            (r.mirror_percentage.is_some(), "mirrorPercentage"),
            (r.cors_policy.is_some(), "corsPolicy"),
        ] {
            if set {
                self.warn(
                    &format!("{base}.{f}"),
                    &format!("{f} is not acted on at a gateway; ignored"),
                    warnings,
                );
            }
        }
        if r.delegate.is_some() {
            self.warn(
                &format!("{base}.delegate"),
                "delegate is not acted on at a gateway; the rule is ignored",
                warnings,
            );
            return Ok(None);
        }
        let origin = match &r.name {
            Some(n) => format!(
                "VirtualService {}/{} http[{i}] ({n})",
                self.namespace, self.name
            ),
            None => format!("VirtualService {}/{} http[{i}]", self.namespace, self.name),
        };
        let matches = match &r.matches {
            None => None,
            Some(ms) => Some(
                ms.iter()
                    .enumerate()
                    .map(|(j, m)| self.http_match(&format!("{base}.match[{j}]"), m, warnings))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let headers = self.headers(&format!("{base}.headers"), r.headers.as_ref())?;
        let action = if let Some(redirect) = &r.redirect {
            let f = format!("{base}.redirect");
            if redirect.derive_port.is_some() {
                self.warn(
                    &format!("{f}.derivePort"),
                    "derivePort is not acted on; the redirect keeps the request's port unless `port` is set",
                    warnings,
                );
            }
            let status = redirect.redirect_code.unwrap_or(301);
            let Ok(status @ (301 | 302 | 303 | 307 | 308)) = u16::try_from(status) else {
                return Err(self.doc.error(
                    &format!("{f}.redirectCode"),
                    format!("{status} is not a redirect status (301, 302, 303, 307 or 308)"),
                ));
            };
            if let Some(s) = &redirect.scheme {
                if !matches!(s.as_str(), "http" | "https") {
                    return Err(self.doc.error(
                        &format!("{f}.scheme"),
                        format!("scheme {s:?} is neither http nor https"),
                    ));
                }
            }
            CompiledAction::Fixed(HttpAction::Redirect(Redirect {
                uri: redirect.uri.clone(),
                authority: redirect.authority.clone(),
                port: self.port(&format!("{f}.port"), redirect.port)?,
                scheme: redirect.scheme.clone(),
                status,
            }))
        } else if let Some(direct) = &r.direct_response {
            let f = format!("{base}.directResponse");
            if !(200..=599).contains(&direct.status) {
                return Err(self.doc.error(
                    &format!("{f}.status"),
                    format!("status {} is out of range 200-599", direct.status),
                ));
            }
            let body = match &direct.body {
                None => None,
                Some(b) => match (&b.string, &b.bytes) {
                    (Some(s), None) => Some(s.clone()),
                    (None, Some(encoded)) => Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .ok()
                            .and_then(|raw| String::from_utf8(raw).ok())
                            .ok_or_else(|| {
                                self.doc.error(
                                    &format!("{f}.body.bytes"),
                                    "is not base64 of UTF-8 text",
                                )
                            })?,
                    ),
                    _ => {
                        return Err(self.doc.error(
                            &format!("{f}.body"),
                            "needs exactly one of string and bytes",
                        ))
                    }
                },
            };
            CompiledAction::Fixed(HttpAction::DirectResponse {
                status: direct.status as u16,
                body,
            })
        } else {
            let rewrite = match &r.rewrite {
                None => None,
                Some(rw) => {
                    if rw.uri_regex_rewrite.is_some() {
                        return Err(self.doc.error(
                            &format!("{base}.rewrite.uriRegexRewrite"),
                            "uriRegexRewrite is not supported by outrider; use rewrite.uri",
                        ));
                    }
                    Some(Rewrite {
                        uri: rw.uri.clone(),
                        authority: rw.authority.clone(),
                    })
                }
            };
            let timeout = match &r.timeout {
                None => None,
                Some(t) => {
                    duration(t).map_err(|m| self.doc.error(&format!("{base}.timeout"), m))?
                }
            };
            CompiledAction::Route {
                destinations: self.destinations(&base, &r.route)?,
                rewrite,
                timeout,
                retries: self.retries(&format!("{base}.retries"), r.retries.as_ref(), warnings)?,
            }
        };
        if !matches!(action, CompiledAction::Route { .. })
            && (r.rewrite.is_some() || r.retries.is_some() || r.timeout.is_some())
        {
            self.warn(
                &base,
                "rewrite, timeout and retries apply to routed requests only; ignored beside a redirect or directResponse",
                warnings,
            );
        }
        Ok(Some(CompiledHttp {
            origin,
            matches,
            action,
            headers,
        }))
    }

    fn http_match(
        &self,
        f: &str,
        m: &HttpMatchSpec,
        warnings: &mut Vec<String>,
    ) -> Result<Limited<HttpMatch>, ConfigError> {
        self.warn_source(
            f,
            !m.source_labels.is_empty(),
            m.source_namespace.is_some(),
            warnings,
        );
        let one = |name: &str, s: &Option<StringMatchSpec>| {
            s.as_ref()
                .map(|s| self.string_match(&format!("{f}.{name}"), s))
                .transpose()
        };
        let map = |name: &str, entries: &BTreeMap<String, StringMatchSpec>| {
            entries
                .iter()
                .map(|(k, s)| {
                    Ok((
                        k.to_ascii_lowercase(),
                        self.string_match(&format!("{f}.{name}.{k}"), s)?,
                    ))
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let port = self.port(&format!("{f}.port"), m.port)?;
        Ok(Limited {
            condition: HttpMatch {
                uri: one("uri", &m.uri)?,
                scheme: one("scheme", &m.scheme)?,
                method: one("method", &m.method)?,
                authority: one("authority", &m.authority)?,
                headers: map("headers", &m.headers)?,
                without_headers: map("withoutHeaders", &m.without_headers)?,
                port,
                query_params: m
                    .query_params
                    .iter()
                    .map(|(k, s)| {
                        Ok((
                            k.clone(),
                            self.string_match(&format!("{f}.queryParams.{k}"), s)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()?,
                ignore_uri_case: m.ignore_uri_case,
            },
            gateways: self.gateways(&m.gateways),
            port,
        })
    }

    /// Istio's StringMatch; a regex (RE2 syntax) must match the whole value.
    fn string_match(&self, field: &str, s: &StringMatchSpec) -> Result<StringMatch, ConfigError> {
        match (&s.exact, &s.prefix, &s.regex) {
            (None, None, None) => Ok(StringMatch::Present),
            (Some(e), None, None) => Ok(StringMatch::Exact(e.clone())),
            (None, Some(p), None) => Ok(StringMatch::Prefix(p.clone())),
            (None, None, Some(r)) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| StringMatch::Regex(Arc::new(re)))
                .map_err(|e| {
                    self.doc.error(
                        &format!("{field}.regex"),
                        format!("invalid regex {r:?}: {}", last_line(&e.to_string())),
                    )
                }),
            _ => Err(self
                .doc
                .error(field, "needs exactly one of exact, prefix and regex")),
        }
    }

    fn destinations(
        &self,
        base: &str,
        route: &[RouteDestination],
    ) -> Result<Vec<CompiledDestination>, ConfigError> {
        route
            .iter()
            .enumerate()
            .map(|(j, d)| {
                let field = format!("{base}.route[{j}]");
                Ok(CompiledDestination {
                    headers: self.headers(&format!("{field}.headers"), d.headers.as_ref())?,
                    weight: destination_weight(d, route.len()),
                    spec: d.clone(),
                    field,
                })
            })
            .collect()
    }

    fn headers(&self, field: &str, h: Option<&HeadersSpec>) -> Result<HeaderEdits, ConfigError> {
        let Some(h) = h else {
            return Ok(HeaderEdits::default());
        };
        let ops =
            |name: &str, o: &Option<HeaderOperationsSpec>| -> Result<HeaderOps, ConfigError> {
                let Some(o) = o else {
                    return Ok(HeaderOps::default());
                };
                let f = format!("{field}.{name}");
                let header = |k: &str, part: &str| -> Result<String, ConfigError> {
                    let lower = k.to_ascii_lowercase();
                    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                        return Err(self.doc.error(
                            &format!("{f}.{part}"),
                            format!("{k:?} is not a header name"),
                        ));
                    }
                    Ok(lower)
                };
                let pairs = |part: &str, m: &BTreeMap<String, String>| {
                    m.iter()
                        .map(|(k, v)| {
                            if http::HeaderValue::from_str(v).is_err() {
                                return Err(self.doc.error(
                                    &format!("{f}.{part}.{k}"),
                                    format!("{v:?} is not a valid header value"),
                                ));
                            }
                            Ok((header(k, part)?, v.clone()))
                        })
                        .collect::<Result<Vec<_>, ConfigError>>()
                };
                Ok(HeaderOps {
                    set: pairs("set", &o.set)?,
                    add: pairs("add", &o.add)?,
                    remove: o
                        .remove
                        .iter()
                        .map(|k| header(k, "remove"))
                        .collect::<Result<_, _>>()?,
                })
            };
        Ok(HeaderEdits {
            request: ops("request", &h.request)?,
            response: ops("response", &h.response)?,
        })
    }

    fn retries(
        &self,
        field: &str,
        r: Option<&RetriesSpec>,
        warnings: &mut Vec<String>,
    ) -> Result<RetryPolicy, ConfigError> {
        let default_on = || DEFAULT_RETRY_ON.iter().map(|s| s.to_string()).collect();
        let Some(r) = r else {
            return Ok(RetryPolicy {
                attempts: DEFAULT_ATTEMPTS,
                per_try_timeout: None,
                retry_on: default_on(),
            });
        };
        for (set, f) in [
            (r.retry_remote_localities.is_some(), "retryRemoteLocalities"),
            (
                r.retry_ignore_previous_hosts.is_some(),
                "retryIgnorePreviousHosts",
            ),
            (r.backoff.is_some(), "backoff"),
        ] {
            if set {
                self.warn(
                    &format!("{field}.{f}"),
                    &format!("{f} is not acted on; ignored"),
                    warnings,
                );
            }
        }
        // Istio: `retries` without `attempts` (or 0) disables retries.
        let attempts = match r.attempts.unwrap_or(0) {
            n if n < 0 => {
                return Err(self
                    .doc
                    .error(&format!("{field}.attempts"), "must not be negative"))
            }
            n => u32::try_from(n).map_err(|_| {
                self.doc
                    .error(&format!("{field}.attempts"), format!("{n} is too large"))
            })?,
        };
        let per_try_timeout = match &r.per_try_timeout {
            None => None,
            Some(t) => {
                duration(t).map_err(|m| self.doc.error(&format!("{field}.perTryTimeout"), m))?
            }
        };
        let retry_on = match &r.retry_on {
            None => default_on(),
            Some(text) => {
                let mut on: Vec<String> = Vec::new();
                for c in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    let code = c.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n));
                    if !code && !RETRY_ON.contains(&c) {
                        return Err(self.doc.error(
                            &format!("{field}.retryOn"),
                            format!(
                                "unknown retry condition {c:?} (expected an HTTP status code or one of {})",
                                RETRY_ON.join(", ")
                            ),
                        ));
                    }
                    on.push(c.to_string());
                }
                // Status codes only act under `retriable-status-codes`, which Istio adds.
                if on.iter().any(|c| c.parse::<u16>().is_ok())
                    && !on.iter().any(|c| c == "retriable-status-codes")
                {
                    on.push("retriable-status-codes".to_string());
                }
                on
            }
        };
        Ok(RetryPolicy {
            attempts,
            per_try_timeout,
            retry_on,
        })
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or(s)
        .to_string()
}

/// An Istio duration: protobuf's `1.5s` or outrider's `500ms`, `1m30s`; zero means none.
pub(crate) fn duration(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if let Some(secs) = t.strip_suffix('s').filter(|s| s.contains('.')) {
        return match secs.parse::<f64>() {
            Ok(v) if (0.0..1e12).contains(&v) => {
                let d = Duration::from_secs_f64(v);
                Ok((!d.is_zero()).then_some(d))
            }
            _ => Err(format!("invalid duration {text:?}")),
        };
    }
    if t.trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .bytes()
        .all(|b| b == b'0')
        && t.starts_with('0')
    {
        return Ok(None);
    }
    crate::duration::parse(t)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The server a rule is being attached to.
pub(crate) struct Server<'a> {
    /// `(namespace, name)` of its Gateway.
    pub gateway: (&'a str, &'a str),
    pub port: u16,
    /// The VirtualService's hosts that meet the server's (the rules' `hosts`).
    pub hosts: Vec<String>,
    /// The server's own hosts (without namespace part).
    pub server_hosts: &'a [String],
}

impl Server<'_> {
    fn admits<M>(&self, m: &Limited<M>) -> bool {
        (m.gateways.is_empty()
            || m.gateways
                .iter()
                .any(|(ns, n)| ns == self.gateway.0 && n == self.gateway.1))
            && m.port.is_none_or(|p| p == self.port)
    }
}

impl MeshConfig {
    /// Where a destination of a gateway-bound VirtualService goes: a mesh service (its port as
    /// written, else its only port) or a host outside the mesh (its port, which it needs).
    pub(crate) fn gateway_target(
        &self,
        vs: &VirtualService,
        d: &CompiledDestination,
    ) -> Result<Target, ConfigError> {
        let dest = &d.spec.destination;
        let host = self.normalize_host(&dest.host, &vs.namespace);
        let port_field = format!("{}.destination.port", d.field);
        let written_port = dest
            .port
            .as_ref()
            .map(|p| {
                u16::try_from(p.number)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        vs.doc.error(
                            &format!("{port_field}.number"),
                            format!("port {} is out of range 1-65535", p.number),
                        )
                    })
            })
            .transpose()?;
        if let Some((service, namespace)) = split_fqdn(&host) {
            let members = self.service_workloads(service, namespace);
            let mut ports: Vec<u16> = members
                .iter()
                .flat_map(|w| w.ports.iter().map(|p| p.port))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            let list = || {
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !members.is_empty() {
                let port = match written_port {
                    Some(p) if ports.contains(&p) => p,
                    Some(p) => {
                        return Err(vs.doc.error(
                            &port_field,
                            format!("service {service}.{namespace} has no port {p} (ports: {})", list()),
                        ))
                    }
                    None => match ports.as_slice() {
                        [only] => *only,
                        [] => {
                            return Err(vs.doc.error(
                                &format!("{}.destination.host", d.field),
                                format!("service {service}.{namespace} declares no port"),
                            ))
                        }
                        _ => {
                            return Err(vs.doc.error(
                                &format!("{}.destination", d.field),
                                format!(
                                    "service {service}.{namespace} has several ports ({}): name one with port.number",
                                    list()
                                ),
                            ))
                        }
                    },
                };
                return Ok(Target::Mesh {
                    service: service.to_string(),
                    namespace: namespace.to_string(),
                    port: PortRef::Number(port),
                });
            }
            if self.is_namespace(namespace) || !dest.host.contains('.') {
                return Err(vs.doc.error(
                    &format!("{}.destination.host", d.field),
                    format!("unknown service {service}.{namespace}"),
                ));
            }
        }
        match written_port {
            Some(port) => Ok(Target::External { host, port }),
            None => Err(vs.doc.error(
                &format!("{}.destination", d.field),
                format!("{host} is not a service of the mesh: a destination outside the mesh needs port.number"),
            )),
        }
    }

    /// One destination planned as an outbound route from the gateway workload `w`.
    fn gateway_destination(
        &self,
        w: &Workload,
        vs: &VirtualService,
        origin: &str,
        d: &CompiledDestination,
        warnings: &mut Vec<String>,
    ) -> Result<WeightedDestination, ConfigError> {
        let target = self.gateway_target(vs, d)?;
        let (destination, _) = self.describe(&target);
        let at = vs.doc.locate(&d.field);
        let to = format!("{}:{}", d.spec.destination.host, destination.port);
        let context = format!(
            "{}:{}: gateway {} -> {to} ({origin})",
            at.file.display(),
            at.line,
            w.name
        );
        let subset = d.spec.destination.subset.as_deref();
        let route = self.route(w, &context, &target, subset, d.weight, warnings)?;
        Ok(WeightedDestination {
            weight: d.weight,
            plan: OutboundPlan {
                bind: SocketAddr::from(([0, 0, 0, 0], 0)),
                to,
                destination,
                routes: vec![route],
                decided_by: origin.to_string(),
            },
            headers: d.headers.clone(),
        })
    }
}

/// The rules of `vs` that apply on `server`, for the kind of server it is: `http[]` for
/// servers that route requests, `tls[]` for PASSTHROUGH ones, `tcp[]` for the others.
pub(crate) struct Attached {
    pub http: Vec<HttpRule>,
    pub tls: Vec<L4Rule>,
    pub tcp: Vec<L4Rule>,
}

/// What kind of rules a server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleKind {
    Http,
    Tls,
    Tcp,
}

pub(crate) fn attach(
    config: &MeshConfig,
    w: &Workload,
    vs: &VirtualService,
    routes: &GatewayRoutes,
    server: &Server<'_>,
    kind: RuleKind,
    warnings: &mut Vec<String>,
) -> Result<Attached, ConfigError> {
    let mut out = Attached {
        http: Vec::new(),
        tls: Vec::new(),
        tcp: Vec::new(),
    };
    let plan = |origin: &str, ds: &[CompiledDestination], warnings: &mut Vec<String>| {
        ds.iter()
            .map(|d| config.gateway_destination(w, vs, origin, d, warnings))
            .collect::<Result<Vec<_>, _>>()
    };
    match kind {
        RuleKind::Http => {
            for r in &routes.http {
                let matches = match &r.matches {
                    None => Vec::new(),
                    Some(ms) => {
                        let kept: Vec<HttpMatch> = ms
                            .iter()
                            .filter(|m| server.admits(m))
                            .map(|m| m.condition.clone())
                            .collect();
                        if kept.is_empty() {
                            continue;
                        }
                        kept
                    }
                };
                let action = match &r.action {
                    CompiledAction::Fixed(a) => a.clone(),
                    CompiledAction::Route {
                        destinations,
                        rewrite,
                        timeout,
                        retries,
                    } => HttpAction::Route(HttpRouteAction {
                        destinations: plan(&r.origin, destinations, warnings)?,
                        rewrite: rewrite.clone(),
                        timeout: *timeout,
                        retries: retries.clone(),
                    }),
                };
                out.http.push(HttpRule {
                    origin: r.origin.clone(),
                    hosts: server.hosts.clone(),
                    matches,
                    action,
                    headers: r.headers.clone(),
                });
            }
        }
        RuleKind::Tls | RuleKind::Tcp => {
            let rules = if kind == RuleKind::Tls {
                &routes.tls
            } else {
                &routes.tcp
            };
            for r in rules {
                // (sniHosts within the server's hosts, port) per admitted match.
                let matches: Vec<(Vec<String>, Option<u16>)> = match &r.matches {
                    None => vec![(Vec::new(), None)],
                    Some(ms) => ms
                        .iter()
                        .filter(|m| server.admits(m))
                        .filter_map(|m| {
                            if kind == RuleKind::Tcp {
                                return Some((Vec::new(), m.port));
                            }
                            let mut sni: Vec<String> = Vec::new();
                            for h in &m.condition {
                                for s in server.server_hosts {
                                    if let Some(i) = super::super::virtual_service::intersect(s, h)
                                    {
                                        if !sni.contains(&i) {
                                            sni.push(i);
                                        }
                                    }
                                }
                            }
                            (!sni.is_empty()).then_some((sni, m.port))
                        })
                        .collect(),
                };
                if matches.is_empty() {
                    continue;
                }
                let destinations = plan(&r.origin, &r.destinations, warnings)?;
                let target = if kind == RuleKind::Tls {
                    &mut out.tls
                } else {
                    &mut out.tcp
                };
                for (sni_hosts, port) in matches {
                    target.push(L4Rule {
                        origin: r.origin.clone(),
                        sni_hosts,
                        port,
                        destinations: destinations.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("10s", Ok(Some(Duration::from_secs(10)))),
            ("1.5s", Ok(Some(Duration::from_millis(1500)))),
            ("0.25s", Ok(Some(Duration::from_millis(250)))),
            ("500ms", Ok(Some(Duration::from_millis(500)))),
            ("1m30s", Ok(Some(Duration::from_secs(90)))),
            ("0s", Ok(None)),
            ("0", Ok(None)),
            ("0.0s", Ok(None)),
            ("ten", Err(())),
            ("1.x5s", Err(())),
            ("-1.5s", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(duration(text).map_err(|_| ()), want, "{text}");
        }
    }
}
