//! Node agents: callers that may request certificates for other workloads.
//!
//! Istio's ztunnel (in its node-wide mode) asks the CA for the certificates of the pods on its
//! node, authenticated as itself, naming the pod's identity in the request's `metadata` field
//! `ImpersonatedIdentity`. istiod allows this for the service accounts in
//! `CA_TRUSTED_NODE_ACCOUNTS` and checks with Kubernetes that the pod runs on the caller's
//! node. outrider has no Kubernetes to ask, so an optional allow-list per node account
//! ([`NodeIdentities`], `ca serve --node-identities <file>`) says which namespaces and service
//! accounts a node may ask for instead.
//!
//! [`ImpersonationPolicy::decide`] is the whole decision, a pure function (tests beside it).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::ca::segment_problem;
use crate::identity::SpiffeId;

/// The request metadata key Istio's clients use (`IstioCertificateRequest.metadata`).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Why a node account or the allow-list file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ImpersonationError {
    #[error("invalid node account {value:?}: {reason}")]
    BadAccount { value: String, reason: &'static str },
    #[error("cannot read the node identities file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path}: {account}[{index}]: invalid identity pattern {value:?}: {reason}")]
    BadPattern {
        path: PathBuf,
        account: String,
        index: usize,
        value: String,
        reason: &'static str,
    },
}

/// A service account that runs a node agent, written `<namespace>/<service-account>` (as
/// Istio's `CA_TRUSTED_NODE_ACCOUNTS`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAccount {
    pub namespace: String,
    pub service_account: String,
}

impl NodeAccount {
    /// Parses `<namespace>/<service-account>`.
    pub fn parse(value: &str) -> Result<NodeAccount, ImpersonationError> {
        let bad = |reason| ImpersonationError::BadAccount {
            value: value.to_string(),
            reason,
        };
        let (namespace, service_account) = value
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("write <namespace>/<service-account>"))?;
        for part in [namespace, service_account] {
            if let Some(reason) = segment_problem(part) {
                return Err(bad(reason));
            }
        }
        Ok(NodeAccount {
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    /// Whether `id` is this account (any trust domain: the caller was already checked).
    fn is(&self, id: &SpiffeId) -> bool {
        id.namespace() == Some(self.namespace.as_str())
            && id.service_account() == Some(self.service_account.as_str())
    }
}

impl fmt::Display for NodeAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

impl std::str::FromStr for NodeAccount {
    type Err = ImpersonationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeAccount::parse(s)
    }
}

/// One entry of a node's allow-list: a whole namespace (`<ns>/*`) or one service account.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Namespace(String),
    Exact(NodeAccount),
}

impl Pattern {
    fn parse(value: &str) -> Result<Pattern, &'static str> {
        match value.trim().split_once('/') {
            Some((namespace, "*")) => match segment_problem(namespace) {
                Some(reason) => Err(reason),
                None => Ok(Pattern::Namespace(namespace.into())),
            },
            Some(_) => NodeAccount::parse(value)
                .map(Pattern::Exact)
                .map_err(|_| "write <namespace>/<service-account> or <namespace>/*"),
            None => Err("write <namespace>/<service-account> or <namespace>/*"),
        }
    }

    fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Pattern::Namespace(namespace) => id.namespace() == Some(namespace.as_str()),
            Pattern::Exact(account) => account.is(id),
        }
    }
}

/// The identities each node account may request, from a YAML file:
///
/// ```yaml
/// istio-system/ztunnel:
///   - default/*        # every service account of namespace default
///   - payments/api     # exactly this one
/// ```
///
/// A node account the file does not name may request no other identity.
#[derive(Debug, Clone, Default)]
pub struct NodeIdentities {
    allowed: BTreeMap<NodeAccount, Vec<Pattern>>,
}

impl NodeIdentities {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<NodeIdentities, ImpersonationError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImpersonationError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        NodeIdentities::parse(&text, path)
    }

    /// Parses the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<NodeIdentities, ImpersonationError> {
        let raw: BTreeMap<String, Vec<String>> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ImpersonationError::Parse {
                path: path.to_path_buf(),
                detail: format!(
                    "{e} (expected a map of <namespace>/<service-account> to a list of identity patterns)"
                ),
            })?
        };
        let mut allowed = BTreeMap::new();
        for (account, patterns) in raw {
            let node = NodeAccount::parse(&account).map_err(|e| ImpersonationError::Parse {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
            let patterns = patterns
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    Pattern::parse(value).map_err(|reason| ImpersonationError::BadPattern {
                        path: path.to_path_buf(),
                        account: account.clone(),
                        index,
                        value: value.clone(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            allowed.insert(node, patterns);
        }
        Ok(NodeIdentities { allowed })
    }

    /// The node accounts the file names.
    pub fn accounts(&self) -> impl Iterator<Item = &NodeAccount> {
        self.allowed.keys()
    }

    fn allows(&self, node: &NodeAccount, target: &SpiffeId) -> bool {
        self.allowed
            .get(node)
            .is_some_and(|patterns| patterns.iter().any(|p| p.matches(target)))
    }
}

/// Who may impersonate whom.
#[derive(Debug, Clone, Default)]
pub struct ImpersonationPolicy {
    trusted: Vec<NodeAccount>,
    allow_list: Option<NodeIdentities>,
}

/// A refused impersonation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller is not a trusted node account.
    NotTrusted,
    /// The caller is trusted, but the allow-list does not name the target for it.
    NotAllowed(NodeAccount),
}

impl ImpersonationPolicy {
    /// `trusted`: the node accounts (`--trusted-node-account`); `allow_list`: the optional
    /// per-node restriction (`--node-identities`), without which a trusted node may request
    /// any workload identity of the trust domain.
    pub fn new(trusted: Vec<NodeAccount>, allow_list: Option<NodeIdentities>) -> Self {
        ImpersonationPolicy {
            trusted,
            allow_list,
        }
    }

    /// The trusted node accounts.
    pub fn trusted(&self) -> &[NodeAccount] {
        &self.trusted
    }

    /// The trusted node account `caller` runs as, if any.
    pub fn node_account_of(&self, caller: &SpiffeId) -> Option<&NodeAccount> {
        self.trusted.iter().find(|account| account.is(caller))
    }

    /// May `caller` obtain a certificate for `target`? `Ok(None)`: it asks for itself (no
    /// impersonation at all); `Ok(Some(node))`: as node agent `node`. The caller and the
    /// target are already known to be workload IDs of the CA's trust domain.
    pub fn decide(
        &self,
        caller: &SpiffeId,
        target: &SpiffeId,
    ) -> Result<Option<NodeAccount>, Refusal> {
        if caller == target {
            return Ok(None);
        }
        let node = self.node_account_of(caller).ok_or(Refusal::NotTrusted)?;
        match &self.allow_list {
            Some(list) if !list.allows(node, target) => Err(Refusal::NotAllowed(node.clone())),
            _ => Ok(Some(node.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).unwrap()
    }

    fn ztunnel() -> NodeAccount {
        NodeAccount::parse("istio-system/ztunnel").unwrap()
    }

    #[test]
    fn node_accounts_parse() {
        assert_eq!(ztunnel().to_string(), "istio-system/ztunnel");
        for bad in [
            "ztunnel",
            "/ztunnel",
            "istio-system/",
            "a/b/c",
            "a b/c",
            "../x",
        ] {
            assert!(NodeAccount::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let list = NodeIdentities::parse(
            "istio-system/ztunnel:\n  - default/*\n  - payments/api\n",
            Path::new("nodes.yaml"),
        )
        .unwrap();
        let open = ImpersonationPolicy::new(vec![ztunnel()], None);
        let listed = ImpersonationPolicy::new(vec![ztunnel()], Some(list));
        let nobody = ImpersonationPolicy::default();
        let node = id("istio-system", "ztunnel");
        let cases = [
            // (policy, caller, target, expected)
            (
                &nobody,
                id("default", "age"),
                id("default", "age"),
                Ok(None),
            ),
            (
                &nobody,
                node.clone(),
                id("default", "age"),
                Err(Refusal::NotTrusted),
            ),
            (
                &open,
                id("default", "age"),
                id("default", "name"),
                Err(Refusal::NotTrusted),
            ),
            (
                &open,
                node.clone(),
                id("anything", "goes"),
                Ok(Some(ztunnel())),
            ),
            (&open, node.clone(), node.clone(), Ok(None)),
            (
                &listed,
                node.clone(),
                id("default", "age"),
                Ok(Some(ztunnel())),
            ),
            (
                &listed,
                node.clone(),
                id("payments", "api"),
                Ok(Some(ztunnel())),
            ),
            (
                &listed,
                node.clone(),
                id("payments", "db"),
                Err(Refusal::NotAllowed(ztunnel())),
            ),
            (
                &listed,
                node.clone(),
                id("kube-system", "admin"),
                Err(Refusal::NotAllowed(ztunnel())),
            ),
        ];
        for (policy, caller, target, expected) in cases {
            assert_eq!(
                policy.decide(&caller, &target),
                expected,
                "{caller} → {target}"
            );
        }
    }

    #[test]
    fn a_trusted_node_missing_from_the_list_may_impersonate_nobody() {
        let list = NodeIdentities::parse("other/node: [default/*]\n", Path::new("n.yaml")).unwrap();
        let policy = ImpersonationPolicy::new(vec![ztunnel()], Some(list));
        assert_eq!(
            policy.decide(&id("istio-system", "ztunnel"), &id("default", "age")),
            Err(Refusal::NotAllowed(ztunnel()))
        );
    }

    #[test]
    fn bad_files_name_the_entry() {
        let e = NodeIdentities::parse(
            "istio-system/ztunnel: [default/*, nope]\n",
            Path::new("n.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("n.yaml") && e.contains("istio-system/ztunnel[1]") && e.contains("nope"),
            "{e}"
        );
        let e = NodeIdentities::parse("- a\n- b\n", Path::new("n.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n.yaml"), "{e}");
        let e = NodeIdentities::parse("ztunnel: [default/*]\n", Path::new("n.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ztunnel"), "{e}");
    }
}
