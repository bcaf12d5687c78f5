//! Malformed configuration: every error names the file, the line (and column) and the field.

use std::path::PathBuf;

use outrider::config::{self, ConfigError};

use crate::common::temp_dir;

const BASE: &str = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports:
    - { name: http, port: 8081, targetPort: 9081, protocol: HTTP }
";

/// Writes `base.yaml` (a valid workload) and `policy.yaml` into a fresh directory, loads the
/// directory and returns the error (the directory is gone by then; the path stays in it).
fn load_error(policy: &str) -> (PathBuf, ConfigError) {
    let tmp = temp_dir("config-errors");
    let dir = tmp.path();
    std::fs::write(dir.join("base.yaml"), BASE).unwrap();
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    let err = config::load(dir).expect_err("configuration should be invalid");
    (dir.join("policy.yaml"), err)
}

fn assert_located(policy: &str, line: usize, column: Option<usize>, field: &str, text: &str) {
    let (file, err) = load_error(policy);
    let message = err.to_string();
    let location = err
        .location()
        .unwrap_or_else(|| panic!("no location: {message}"));
    assert_eq!(location.file, file, "{message}");
    assert_eq!(location.line, line, "{message}");
    if let Some(column) = column {
        assert_eq!(location.column, column, "{message}");
    }
    assert_eq!(location.field, field, "{message}");
    let prefix = format!("{}:{line}:", file.display());
    assert!(message.starts_with(&prefix), "{message}");
    if !field.is_empty() {
        assert!(message.contains(&format!(" {field}: ")), "{message}");
    }
    assert!(message.contains(text), "{message}");
}

#[test]
fn bad_yaml_syntax() {
    let policy = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
   namespace: default
";
    let (file, err) = load_error(policy);
    let message = err.to_string();
    let location = err.location().expect(&message);
    assert_eq!(location.file, file);
    assert!(
        (4..=5).contains(&location.line),
        "syntax error on line 4-5: {message}"
    );
}

#[test]
fn wrong_enum_value_second_document() {
    // The example: line and column are absolute in the file, not in the document.
    let policy = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: PERMISSIVE } }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec:
  mtls:
    mode: STRIKT
";
    assert_located(
        policy,
        11,
        Some(11),
        "spec.mtls.mode",
        "unknown variant \"STRIKT\", expected one of UNSET, DISABLE, PERMISSIVE, STRICT",
    );
}

#[test]
fn unknown_field_in_spec() {
    let policy = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: age, namespace: default }
spec:
  host: age
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
      sniName: age
";
    assert_located(
        policy,
        9,
        Some(7),
        "spec.trafficPolicy.tls.sniName",
        "unknown field \"sniName\"",
    );
}

#[test]
fn unknown_metadata_fields_are_fine() {
    let tmp = temp_dir("config-meta");
    let dir = tmp.path();
    let text = format!(
        "{BASE}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\n  annotations: {{ a: b }}\n  uid: 1234\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec: {{ mtls: {{ mode: STRICT }} }}\n"
    );
    std::fs::write(dir.join("mesh.yaml"), text).unwrap();
    let config = config::load(&dir.join("mesh.yaml")).unwrap();
    assert_eq!(
        config.plan("age").unwrap().inbound[0].mode,
        config::MtlsMode::Strict
    );
}

#[test]
fn missing_required_field() {
    let policy = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name-v1, labels: { app: name } }
spec:
  serviceAccount: name
  ports:
    - { name: http, port: 8082 }
";
    assert_located(policy, 5, None, "spec.address", "missing field \"address\"");
}

#[test]
fn duplicate_workload() {
    let policy = "\
# age again
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata:
  name: age
spec:
  serviceAccount: age
  address: 10.0.0.2
";
    assert_located(
        policy,
        5,
        Some(3),
        "metadata.name",
        "duplicate workload \"age\" (first declared at",
    );
}

#[test]
fn selector_matching_nothing() {
    let policy = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: agee, namespace: default }
spec:
  selector:
    matchLabels: { app: agee }
  mtls: { mode: DISABLE }
";
    // A warning, not an error (Istio accepts it): a stale policy must not block every reload.
    let config = config::load_str("policy.yaml", &format!("{BASE}---\n{policy}")).unwrap();
    let warnings = config.warnings().join("\n");
    assert!(
        warnings.contains("policy.yaml:15: spec.selector.matchLabels: PeerAuthentication default/agee: selector {app=agee} matches no workload in namespace default"),
        "{warnings}"
    );
}

#[test]
fn port_out_of_range() {
    let policy = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: name-v1, labels: { app: name } }
spec:
  serviceAccount: name
  address: 127.0.0.1
  ports:
    - name: http
      port: 8082
    - name: admin
      port: 70000
";
    assert_located(
        policy,
        11,
        Some(7),
        "spec.ports[1].port",
        "port 70000 is out of range 1-65535",
    );
}

#[test]
fn port_level_mtls_without_selector() {
    let policy = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: default }
spec:
  mtls: { mode: STRICT }
  portLevelMtls:
    9081: { mode: DISABLE }
";
    assert_located(
        policy,
        6,
        Some(3),
        "spec.portLevelMtls",
        "portLevelMtls needs a selector",
    );
}

#[test]
fn unknown_service_in_outbound() {
    let policy = "\
apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: sentences, labels: { app: sentences } }
spec:
  serviceAccount: sentences
  address: 127.0.0.1
  outbound:
    - { bind: \"127.0.0.1:9181\", to: \"aeg.default:http\" }
";
    assert_located(
        policy,
        8,
        None,
        "spec.outbound[0].to",
        "unknown service aeg.default",
    );
}

#[test]
fn unknown_kind() {
    let policy = "\
apiVersion: v1
kind: Service
metadata: { name: age }
";
    assert_located(policy, 2, Some(1), "kind", "unknown kind \"Service\"");
}

#[test]
fn unknown_workload_is_named() {
    let config = config::load_str("mesh.yaml", BASE).unwrap();
    let err = config.plan("agee").unwrap_err().to_string();
    assert!(err.contains("\"agee\""), "{err}");
}

/// The lab's `require-jwt` policy as printed (selector indented under `action`), and as meant.
const REQUIRE_JWT: &str = "\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: default
spec:
  action: ALLOW
    selector:
      matchLabels:
        app: age
  rules:
  - from:
    - source:
        requestPrincipals: [\"*\"]
    to:
    - operation:
        notPaths: [\"/health_check\"]
  - to:
    - operation:
        paths: [\"/health_check\"]
";

#[test]
fn misindented_lab_policy_is_refused_and_the_intended_one_loads() {
    let (file, err) = load_error(REQUIRE_JWT);
    let message = err.to_string();
    let location = err.location().expect(&message);
    assert_eq!(location.file, file, "{message}");
    assert_eq!(
        (location.line, location.field.as_str()),
        (8, "spec.action"),
        "{message}"
    );
    assert!(
        message.starts_with(&format!("{}:8:13: spec.action: ", file.display())),
        "{message}"
    );
    assert!(
        message.contains("`selector` is indented under `action: ALLOW`, which already has a value"),
        "{message}"
    );

    let fixed = REQUIRE_JWT.replace(
        "    selector:\n      matchLabels:\n        app: age\n",
        "  selector:\n    matchLabels:\n      app: age\n",
    );
    let tmp = temp_dir("config-lab-policy");
    std::fs::write(tmp.path().join("base.yaml"), BASE).unwrap();
    std::fs::write(tmp.path().join("policy.yaml"), fixed).unwrap();
    let config = config::load(tmp.path()).unwrap();
    let plan = config.plan("age").unwrap();
    let applied = plan.inbound[0].authorization.applied();
    assert_eq!(applied.len(), 1);
    assert_eq!(&*applied[0].name, "default/require-jwt");
}
