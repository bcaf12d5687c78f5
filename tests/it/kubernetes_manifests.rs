//! `deploy/kubernetes/` checked offline: every file parses as YAML, the sidecars' flags and
//! `OUTRIDER_*` variables are ones `outrider run` accepts, their ports and probes are the ones
//! the binary serves, the mesh configuration they mount passes `outrider check` (PERMISSIVE and
//! STRICT), and each workload's Certificate carries the SPIFFE ID of its service account.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::common::BIN;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of every `*.yaml` under `deploy/kubernetes/` (recursively), with its file.
fn documents() -> Vec<(PathBuf, Value)> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).expect("read deploy/kubernetes") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&dir(), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir().display());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.clone(), v));
            }
        }
    }
    docs
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn run_help() -> String {
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("run outrider run --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The value following `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn deployments(docs: &[(PathBuf, Value)]) -> Vec<&Value> {
    let d: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| kind(v) == "Deployment")
        .collect();
    assert_eq!(d.len(), 4, "sentences, age, name-v1, name-v2");
    d
}

/// The native sidecar of a pod template: the initContainer with `restartPolicy: Always`.
fn sidecar(deployment: &Value) -> &Value {
    let spec = &deployment["spec"]["template"]["spec"];
    let inits = spec["initContainers"]
        .as_sequence()
        .expect("initContainers");
    let s: Vec<&Value> = inits
        .iter()
        .filter(|c| c["restartPolicy"].as_str() == Some("Always"))
        .collect();
    assert_eq!(s.len(), 1, "{}: one native sidecar", name(deployment));
    s[0]
}

/// The mesh folder the sidecars mount, rebuilt from the ConfigMaps (policy from `policy_file`).
fn mesh_folder(docs: &[(PathBuf, Value)], policy_file: Option<&str>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut maps: BTreeMap<String, &Value> = BTreeMap::new();
    for (f, v) in docs {
        if kind(v) != "ConfigMap" {
            continue;
        }
        let from_policies = f.parent().is_some_and(|p| p.ends_with("policies"));
        let wanted = match policy_file {
            Some(p) => !from_policies || f.file_name().is_some_and(|n| n == p),
            None => !from_policies,
        };
        if wanted {
            maps.insert(name(v).to_string(), v);
        }
    }
    assert!(
        maps.contains_key("outrider-mesh") && maps.contains_key("outrider-peer-authentication")
    );
    for v in maps.values() {
        for (k, text) in v["data"].as_mapping().expect("data") {
            let k = k.as_str().expect("key");
            std::fs::write(tmp.path().join(k), text.as_str().expect("text")).expect("write");
        }
    }
    tmp
}

fn check(folder: &Path, workload: &str) -> String {
    let out = Command::new(BIN)
        .args(["check", "--workload", workload, "--config"])
        .arg(folder)
        .output()
        .expect("run outrider check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check {workload} failed: {text}");
    text
}

#[test]
fn sidecar_flags_and_env_are_ones_the_binary_accepts() {
    let help = run_help();
    let docs = documents();
    for d in deployments(&docs) {
        let s = sidecar(d);
        let args = strs(&s["args"]);
        assert_eq!(args.first().map(String::as_str), Some("run"), "{}", name(d));
        for a in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(&format!("{a} <")) || help.contains(&format!("{a}\n")),
                "{}: `outrider run` has no flag {a}:\n{help}",
                name(d)
            );
        }
        assert_eq!(flag(&args, "--workload"), Some(name(d)), "workload name");
        for e in s["env"].as_sequence().into_iter().flatten() {
            let var = e["name"].as_str().expect("env name");
            assert!(
                help.contains(&format!("[env: {var}=")),
                "{}: `outrider run` reads no {var}",
                name(d)
            );
        }
        // The mounted paths are the ones the flags point at.
        let mounts: Vec<&str> = s["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .map(|m| m["mountPath"].as_str().expect("mountPath"))
            .collect();
        for f in ["--config", "--cert-dir"] {
            let path = flag(&args, f).unwrap_or_else(|| panic!("{}: no {f}", name(d)));
            assert!(
                mounts.contains(&path),
                "{}: {f} {path} is not mounted",
                name(d)
            );
        }
    }
}

#[test]
fn ports_and_probes_match_what_the_sidecar_serves() {
    let help = run_help();
    let docs = documents();
    let default_of = |var: &str| -> u16 {
        let at = help
            .find(&format!("[env: {var}="))
            .unwrap_or_else(|| panic!("no {var} in help"));
        let tail = &help[at..];
        let d = tail.find("[default: ").expect("a default") + "[default: ".len();
        port_of(&tail[d..d + tail[d..].find(']').expect("]")])
    };
    let (metrics, ready) = (
        default_of("OUTRIDER_METRICS_ADDR"),
        default_of("OUTRIDER_READY_ADDR"),
    );
    let services: Vec<&Value> = docs
        .iter()
        .map(|(_, v)| v)
        .filter(|v| kind(v) == "Service")
        .collect();
    let folder = mesh_folder(&docs, None);
    for d in deployments(&docs) {
        let s = sidecar(d);
        let env: BTreeMap<&str, &str> = s["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        let metrics = env
            .get("OUTRIDER_METRICS_ADDR")
            .map_or(metrics, |a| port_of(a));
        let ready = env.get("OUTRIDER_READY_ADDR").map_or(ready, |a| port_of(a));
        let ports: Vec<u64> = s["ports"]
            .as_sequence()
            .expect("ports")
            .iter()
            .map(|p| p["containerPort"].as_u64().expect("containerPort"))
            .collect();
        assert!(
            ports.contains(&u64::from(metrics)),
            "{}: metrics port",
            name(d)
        );
        assert!(ports.contains(&u64::from(ready)), "{}: ready port", name(d));
        for probe in ["startupProbe", "readinessProbe"] {
            let get = &s[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some("/healthz/ready"), "{}", name(d));
            assert_eq!(get["port"].as_u64(), Some(u64::from(ready)), "{}", name(d));
        }
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(metrics.to_string().as_str())
        );
        assert_eq!(
            annotations["prometheus.io/path"].as_str(),
            Some("/stats/prometheus")
        );

        // The workload's mesh port is a sidecar containerPort and the Service's targetPort;
        // its targetPort is where the app container listens.
        let plan = check(folder.path(), name(d));
        let (mesh_port, app_port) = plan
            .lines()
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let p = cols.first()?.parse::<u16>().ok()?;
                let t = cols.get(2)?.parse::<u16>().ok()?; // PORT NAME APP-PORT ...
                Some((p, t))
            })
            .unwrap_or_else(|| panic!("no port row for {} in:\n{plan}", name(d)));
        assert!(
            ports.contains(&u64::from(mesh_port)),
            "{}: port {mesh_port}",
            name(d)
        );
        let app = &d["spec"]["template"]["spec"]["containers"][0];
        let listen = flag(&strs(&app["args"]), "--listen").map(port_of);
        assert_eq!(
            listen,
            Some(app_port),
            "{}: app --listen vs targetPort",
            name(d)
        );
        let svc = services
            .iter()
            .find(|s| name(s) == name(d))
            .unwrap_or_else(|| panic!("no Service {}", name(d)));
        assert_eq!(
            svc["spec"]["ports"][0]["targetPort"].as_u64(),
            Some(u64::from(mesh_port)),
            "Service {} must send traffic to the sidecar",
            name(d)
        );
    }
}

#[test]
fn mounted_mesh_config_passes_check_permissive_and_strict() {
    let docs = documents();
    for (policy, mode) in [
        (None, "PERMISSIVE"),
        (Some("strict.yaml"), "STRICT"),
        (Some("permissive.yaml"), "PERMISSIVE"),
    ] {
        let folder = mesh_folder(&docs, policy);
        for w in ["sentences", "age", "name-v1", "name-v2"] {
            let out = check(folder.path(), w);
            assert!(
                out.contains(mode),
                "{w} with {policy:?} is not {mode}:\n{out}"
            );
        }
    }
}

#[test]
fn each_workload_certificate_is_its_service_accounts_spiffe_id() {
    let docs = documents();
    for d in deployments(&docs) {
        let spec = &d["spec"]["template"]["spec"];
        let sa = spec["serviceAccountName"]
            .as_str()
            .expect("serviceAccountName");
        let secret = spec["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find_map(|v| v["secret"]["secretName"].as_str())
            .expect("an identity Secret volume");
        let cert = docs
            .iter()
            .map(|(_, v)| v)
            .find(|v| kind(v) == "Certificate" && v["spec"]["secretName"].as_str() == Some(secret))
            .unwrap_or_else(|| panic!("no Certificate writes {secret}"));
        assert_eq!(
            strs(&cert["spec"]["uris"]),
            vec![format!("spiffe://cluster.local/ns/default/sa/{sa}")],
            "{}",
            name(d)
        );
    }
}

/// The kubelet mounts a ConfigMap as `..<timestamp>/<key>` files, a `..data` symlink to that
/// directory and one `<key>` symlink per key into `..data/`: the sidecar must read the keys
/// through their symlinks and ignore the dot-directories.
#[cfg(unix)]
#[test]
fn configmap_volume_layout_is_read_through_symlinks() {
    let docs = documents();
    let plain = mesh_folder(&docs, Some("strict.yaml"));
    let mounted = tempfile::tempdir().expect("tempdir");
    let stamp = mounted.path().join("..2026_01_01_00_00_00.000000000");
    std::fs::create_dir(&stamp).expect("mkdir");
    for e in std::fs::read_dir(plain.path()).expect("read") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), stamp.join(e.file_name())).expect("copy");
        std::os::unix::fs::symlink(
            Path::new("..data").join(e.file_name()),
            mounted.path().join(e.file_name()),
        )
        .expect("symlink key");
    }
    std::os::unix::fs::symlink(
        stamp.file_name().expect("name"),
        mounted.path().join("..data"),
    )
    .expect("symlink ..data");
    let out = check(mounted.path(), "age");
    assert!(out.contains("STRICT"), "{out}");
}
