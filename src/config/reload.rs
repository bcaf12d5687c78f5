//! Configuration reload: a task that re-reads the configuration when a file's content changes
//! (polled) or on SIGHUP, re-validates it, re-plans this sidecar's workload, and publishes the
//! new plan atomically through a `watch` channel. A configuration that fails to load keeps the
//! old plan in force, is logged with its located error, and is counted.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::plan::Plan;

/// Reload counters, read by the metrics endpoint at scrape time.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads that produced a valid configuration (published or identical).
    pub ok: AtomicU64,
    /// Reloads that failed; the previous plan stayed in force.
    pub failed: AtomicU64,
}

/// Starts the watcher on the current tokio runtime (call it from inside the runtime).
/// `initial` is the plan already in use; `poll` is how often file contents are compared. The
/// task ends when every receiver is dropped.
pub fn spawn(
    path: PathBuf,
    workload: String,
    initial: Arc<Plan>,
    poll: Duration,
) -> (watch::Receiver<Arc<Plan>>, Arc<ReloadStats>) {
    let (tx, rx) = watch::channel(initial);
    let stats = Arc::new(ReloadStats::default());
    let task_stats = stats.clone();
    // Taken now, not in the task: a change made right after `spawn` returns must be seen.
    let mut last = fingerprint(&path);
    // Registered before returning, so a SIGHUP sent right after `spawn` is a reload request,
    // never the default action (terminate).
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload on file change only");
            None
        }
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signalled = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = recv_hangup(&mut hangup) => true,
                _ = tx.closed() => return,
            };
            let now = fingerprint(&path);
            if !signalled && now == last {
                continue;
            }
            last = now;
            reload_once(&path, &workload, &tx, &task_stats, signalled);
        }
    });
    (rx, stats)
}

async fn recv_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn reload_once(
    path: &Path,
    workload: &str,
    tx: &watch::Sender<Arc<Plan>>,
    stats: &ReloadStats,
    signalled: bool,
) {
    let trigger = if signalled { "SIGHUP" } else { "file change" };
    match super::load(path).and_then(|c| c.plan(workload)) {
        Ok(plan) => {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            let changed = tx.send_if_modified(|current| {
                if same_plan(current, &plan) {
                    false
                } else {
                    *current = Arc::new(plan);
                    true
                }
            });
            if changed {
                tracing::info!(path = %path.display(), trigger, "configuration reloaded: new plan published");
            } else {
                tracing::debug!(path = %path.display(), trigger, "configuration reloaded: plan unchanged");
            }
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), trigger, error = %e, "configuration reload failed; keeping the previous plan");
        }
    }
}

/// Plans compare by their serialised form (they hold no floats, maps are ordered) and by
/// the fingerprints of a gateway's per-port policies, which that form leaves out.
fn same_plan(a: &Plan, b: &Plan) -> bool {
    let same_form = match (serde_json::to_string(a), serde_json::to_string(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    same_form && gateway_policies(a) == gateway_policies(b)
}

/// `(port, authorization fingerprint, authentication fingerprint)` of every gateway port.
fn gateway_policies(p: &Plan) -> Vec<(u16, u64, u64)> {
    p.gateway
        .iter()
        .flat_map(|g| &g.ports)
        .map(|port| {
            (
                port.port,
                port.authorization.fingerprint(),
                port.authentication.fingerprint(),
            )
        })
        .collect()
}

/// A content fingerprint of the configuration files (names and bytes); unreadable files
/// count as their error, so that a later fix is noticed.
fn fingerprint(path: &Path) -> u64 {
    let mut contents = BTreeMap::new();
    match super::source::files(path) {
        Ok(files) => {
            for f in files {
                let content = std::fs::read(&f).unwrap_or_else(|e| e.to_string().into_bytes());
                contents.insert(f, content);
            }
        }
        Err(e) => {
            contents.insert(path.to_path_buf(), e.to_string().into_bytes());
        }
    }
    let mut h = DefaultHasher::new();
    contents.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::super::MtlsMode;
    use super::*;

    const BASE: &str = "apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: { name: age, namespace: default, labels: { app: age } }
spec:
  serviceAccount: age
  address: 127.0.0.1
  ports: [{ name: http, port: 18080, targetPort: 19080, protocol: HTTP }]
";

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    /// Replaces the file atomically, so the poller never sees a half-written file.
    fn replace(file: &Path, text: &str) {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, file).unwrap();
    }

    fn strict(base: &str, mode: &str) -> String {
        format!("{base}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{ name: default, namespace: istio-system }}\nspec: {{ mtls: {{ mode: {mode} }} }}\n")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("outrider-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, BASE).unwrap();
        file
    }

    #[tokio::test]
    async fn publishes_valid_changes_and_keeps_the_plan_on_errors() {
        let file = scratch("poll");
        let initial = Arc::new(super::super::load(&file).unwrap().plan("age").unwrap());
        let (rx, stats) = spawn(
            file.clone(),
            "age".into(),
            initial,
            Duration::from_millis(20),
        );

        // `>=`, not `==`: the SIGHUP test below signals this whole test process, and a
        // SIGHUP makes every watcher in it reload once more.
        replace(&file, &strict(BASE, "STRICT"));
        wait_for(|| rx.borrow().inbound[0].mode == MtlsMode::Strict).await;
        assert!(stats.ok.load(Ordering::Relaxed) >= 1);

        replace(&file, &strict(BASE, "STRIKT"));
        wait_for(|| stats.failed.load(Ordering::Relaxed) >= 1).await;
        assert_eq!(rx.borrow().inbound[0].mode, MtlsMode::Strict);
        std::fs::remove_dir_all(file.parent().unwrap()).ok();
    }

    #[test]
    fn a_gateway_policy_change_is_a_new_plan() {
        let mesh = |paths: &str| {
            let text = format!(
                "apiVersion: outrider.dev/v1alpha1
kind: Workload
metadata: {{ name: edge, namespace: istio-system, labels: {{ istio: ingressgateway }} }}
spec: {{ role: gateway, serviceAccount: edge, address: edge }}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{ name: gw, namespace: istio-system }}
spec:
  selector: {{ istio: ingressgateway }}
  servers: [{{ port: {{ number: 8080, protocol: HTTP }}, hosts: [\"*\"] }}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: edge, namespace: istio-system }}
spec:
  selector: {{ matchLabels: {{ istio: ingressgateway }} }}
  action: DENY
  rules: [{{ to: [{{ operation: {{ paths: [{paths}] }} }}] }}]
"
            );
            super::super::load_str("mesh.yaml", &text)
                .unwrap()
                .plan("edge")
                .unwrap()
        };
        assert!(same_plan(&mesh("/admin"), &mesh("/admin")));
        assert!(!same_plan(&mesh("/admin"), &mesh("/debug")));
    }

    #[tokio::test]
    async fn sighup_reloads_without_waiting_for_the_poll() {
        let file = scratch("hup");
        let initial = Arc::new(super::super::load(&file).unwrap().plan("age").unwrap());
        let (rx, stats) = spawn(
            file.clone(),
            "age".into(),
            initial,
            Duration::from_secs(3600),
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // the first tick fires at once
        replace(&file, &strict(BASE, "DISABLE"));
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_for(|| rx.borrow().inbound[0].mode == MtlsMode::Disable).await;
        assert!(stats.ok.load(Ordering::Relaxed) >= 1);
        std::fs::remove_dir_all(file.parent().unwrap()).ok();
    }
}
