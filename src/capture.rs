//! Transparent capture, the part outside the data path: `outrider iptables`, Istio's init
//! step, and the original destination of a captured connection. The capture listeners that
//! serve what the rules redirect are [`crate::proxy::captured`].
//!
//! An app in a captured network namespace is not told about the proxy: nat rules send its
//! outbound TCP connections to the proxy's 15001 and every inbound one to 15006, except the
//! proxy's own traffic (UID/GID 1337), which is how the sidecar avoids capturing itself.
//! - [`rules`] is the rule list as a pure function of Istio's flags (SEMANTICS.md §10),
//!   table-tested and printed by `--dry-run`.
//! - [`netfilter`] installs and removes it through `iptables-save` / `iptables-restore`
//!   (why the binaries: see there).
//! - [`original_dst`] reads where a redirected connection was going (`SO_ORIGINAL_DST`), for
//!   the capture listeners; [`EchoOptions`] (`outrider capture-echo`) answers each
//!   connection with it, a probe for checking the rules.

mod echo;
pub mod netfilter;
mod original_dst;
pub mod rules;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use echo::{describe, EchoOptions};
pub use original_dst::original_dst;

use netfilter::{Iptables, NetfilterError};
use rules::{CaptureRules, RuleError};

/// One `outrider iptables` run.
#[derive(Debug, Clone)]
pub struct IptablesOptions {
    pub rules: CaptureRules,
    /// Print what would be applied (`iptables-restore` input), change nothing.
    pub dry_run: bool,
    /// Remove what an install added instead of installing.
    pub cleanup: bool,
    /// The iptables program (see [`Iptables::new`]); `None`: found on `PATH`.
    pub iptables_bin: Option<PathBuf>,
}

/// Why `outrider iptables` (or `capture-echo`) failed: bad options, netfilter refused, or a
/// port is taken.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    #[error("--capture: this process runs as UID {uid} / GID {gid}, but the nat rules exempt only UID {proxy_uid} / GID {proxy_gid}: its own connections would be captured again (a loop). Run it as {proxy_uid}:{proxy_gid} (compose `user: \"1337:1337\"`, or `setpriv --reuid {proxy_uid} --regid {proxy_gid} --clear-groups`)")]
    NotProxyIdentity {
        uid: u32,
        gid: u32,
        proxy_uid: u32,
        proxy_gid: u32,
    },
    #[error("cannot read this process's UID and GID from /proc/self/status: {0}")]
    Identity(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Checks that this process runs as the UID or GID the nat rules exempt (`-u`, `-g`): a
/// captured sidecar running as anyone else would capture its own connections.
pub fn check_proxy_identity(proxy_uid: u32, proxy_gid: u32) -> Result<(), CaptureError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| CaptureError::Identity(e.to_string()))?;
    let (uid, gid) = effective_ids(&status)
        .ok_or_else(|| CaptureError::Identity("no Uid:/Gid: lines".into()))?;
    if uid == proxy_uid || gid == proxy_gid {
        return Ok(());
    }
    Err(CaptureError::NotProxyIdentity {
        uid,
        gid,
        proxy_uid,
        proxy_gid,
    })
}

/// The effective UID and GID of a `/proc/<pid>/status` text (`Uid:` real, effective, ...).
fn effective_ids(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    Some((field("Uid:")?, field("Gid:")?))
}

impl IptablesOptions {
    /// Installs (or removes, or prints) the rules; says what it did on stdout.
    pub fn run(self) -> Result<(), CaptureError> {
        let iptables = Iptables::new(self.iptables_bin.as_deref());
        if self.cleanup {
            if self.dry_run {
                let saved = iptables.save_nat()?;
                match netfilter::cleanup_script(&saved).0 {
                    Some(script) => print!("{script}"),
                    None => println!("# nothing to remove: no ISTIO_* chain in the nat table"),
                }
                return Ok(());
            }
            let outcome = iptables.cleanup()?;
            if outcome.chains_found == 0 && outcome.jumps_found == 0 {
                println!("nothing to remove: no ISTIO_* chain in the nat table");
            } else {
                println!(
                    "removed {} ISTIO_* chains and {} jumps to them from the nat table",
                    outcome.chains_found, outcome.jumps_found
                );
            }
            return Ok(());
        }
        let ruleset = self.rules.ruleset()?;
        if self.dry_run {
            print!("{}", ruleset.to_restore());
            return Ok(());
        }
        let outcome = iptables.install(&ruleset)?;
        println!(
            "installed {} rules in the nat table (outbound to :{}, inbound to :{}, UID {} / GID {} not captured){}",
            ruleset.rules.len(),
            self.rules.proxy_port,
            self.rules.inbound_capture_port,
            self.rules.proxy_uid,
            self.rules.proxy_gid,
            if outcome.chains_found > 0 {
                "; replaced an earlier install"
            } else {
                ""
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_ids_are_the_second_column() {
        let status = "Name:\toutrider\nUid:\t0\t1337\t0\t0\nGid:\t5\t1338\t5\t5\n";
        assert_eq!(effective_ids(status), Some((1337, 1338)));
        assert_eq!(effective_ids("Name: x\n"), None);
    }

    #[test]
    fn a_process_not_running_as_the_proxy_is_refused_with_the_fix() {
        // The test runs as whoever runs cargo; an identity nobody has is refused.
        let err = check_proxy_identity(u32::MAX - 1, u32::MAX - 1).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("setpriv --reuid"), "{text}");
    }
}
