//! Transparent capture, part 1: `outrider iptables`, Istio's init step, and the original
//! destination of a captured connection.
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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
