//! Installing and removing the capture rules in the current network namespace's nat table,
//! through the iptables binaries: `iptables-save -t nat` to read what is there,
//! `iptables-restore --noflush` to change it in one transaction.
//!
//! Why the binaries and not netfilter from Rust: the kernel interface is nf_tables netlink
//! (or the legacy `ip_tables` setsockopt blobs), and no well-kept crate speaks it without C
//! libraries (libnftnl/libmnl) and `unsafe`, which this crate forbids; the binaries are what
//! Istio's init step uses too, they pick the host's backend (nft or legacy), and
//! `iptables-restore` applies a whole rule set atomically. The cost is that the image must
//! carry them: docs/configuration.md ("Transparent capture") lists the files.
//!
//! Both operations only touch what is ours: the four `ISTIO_*` chains and the rules of other
//! chains that jump to them. Installing over an earlier install replaces it (the old jumps
//! are deleted and the chains emptied in the same transaction), so running it twice is safe;
//! cleaning up when nothing is installed changes nothing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rules::{Ruleset, CHAINS};

/// The `CAP_NET_ADMIN` bit of `CapEff` in `/proc/self/status`.
const CAP_NET_ADMIN: u32 = 12;

/// How the iptables programs are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iptables {
    save: Program,
    restore: Program,
}

/// One program to run: a path or a name looked up on `PATH`, and for a multi-call binary
/// (`xtables-nft-multi`) the applet name as first argument.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Program {
    path: PathBuf,
    applet: Option<&'static str>,
}

/// What an install or cleanup found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Our chains that were present before.
    pub chains_found: usize,
    /// Rules of other chains jumping to ours that were present before.
    pub jumps_found: usize,
}

/// Why the nat table could not be read or changed; each is one line.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error(
        "{program} not found: install iptables (iptables-save, iptables-restore) or point --iptables-bin at it"
    )]
    Missing { program: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "not permitted to change netfilter rules: needs root or CAP_NET_ADMIN in this network namespace (docker: cap_add: [NET_ADMIN]){}",
        detail_suffix(.detail)
    )]
    NotPermitted { detail: String },
    #[error("netfilter's nat table is not available here (kernel without nf_tables/ip_tables nat?): {detail}")]
    NoNetfilter { detail: String },
    #[error("{program} failed ({status}): {detail}")]
    Failed {
        program: String,
        status: String,
        detail: String,
    },
}

impl Iptables {
    /// `bin`: `None` finds `iptables-save`/`iptables-restore` on `PATH`. A multi-call binary
    /// (`xtables-nft-multi`, `xtables-legacy-multi`) is called with the applet as first
    /// argument; any other program (`/usr/sbin/iptables`, `iptables-legacy`) names its
    /// `-save`/`-restore` siblings (`iptables-legacy-save`, ...).
    pub fn new(bin: Option<&Path>) -> Iptables {
        let Some(bin) = bin else {
            return Iptables {
                save: Program::named("iptables-save"),
                restore: Program::named("iptables-restore"),
            };
        };
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("xtables-") && name.ends_with("-multi") {
            let applet = |applet| Program {
                path: bin.to_path_buf(),
                applet: Some(applet),
            };
            return Iptables {
                save: applet("iptables-save"),
                restore: applet("iptables-restore"),
            };
        }
        let sibling = |suffix: &str| Program {
            path: bin.with_file_name(format!("{name}-{suffix}")),
            applet: None,
        };
        Iptables {
            save: sibling("save"),
            restore: sibling("restore"),
        }
    }

    /// The nat table as `iptables-save -t nat` prints it.
    pub fn save_nat(&self) -> Result<String, NetfilterError> {
        self.save.run(&["-t", "nat"], None)
    }

    /// Feeds `input` to `iptables-restore --noflush` (one transaction).
    pub fn restore(&self, input: &str) -> Result<(), NetfilterError> {
        self.restore.run(&["--noflush"], Some(input)).map(drop)
    }

    /// Installs `rules`, replacing an earlier install.
    pub fn install(&self, rules: &Ruleset) -> Result<Outcome, NetfilterError> {
        check_net_admin()?;
        let saved = self.save_nat()?;
        let (script, outcome) = install_script(rules, &saved);
        self.restore(&script)?;
        Ok(outcome)
    }

    /// Removes our chains and the jumps to them; nothing when none is there.
    pub fn cleanup(&self) -> Result<Outcome, NetfilterError> {
        check_net_admin()?;
        let saved = self.save_nat()?;
        let (script, outcome) = cleanup_script(&saved);
        if let Some(script) = script {
            self.restore(&script)?;
        }
        Ok(outcome)
    }
}

impl Program {
    fn named(name: &str) -> Program {
        Program {
            path: PathBuf::from(name),
            applet: None,
        }
    }

    fn display(&self) -> String {
        match self.applet {
            Some(applet) => format!("{} {applet}", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// Runs to completion, feeding `input`; the standard output on success.
    fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, NetfilterError> {
        let program = self.display();
        let mut command = Command::new(&self.path);
        command
            .args(self.applet)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NetfilterError::Missing {
                    program: program.clone(),
                }
            } else {
                NetfilterError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A write error means the program exited early; its status and stderr say why.
            let _ = stdin.write_all(input.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|source| NetfilterError::Spawn {
                program: program.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(classify(&program, &output.status.to_string(), &stderr))
    }
}

/// Turns a failed run's stderr into one line that says what is wrong.
fn classify(program: &str, status: &str, stderr: &str) -> NetfilterError {
    let detail = stderr
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no error message")
        .to_owned();
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        NetfilterError::NotPermitted { detail }
    } else if lower.contains("table does not exist")
        || lower.contains("can't initialize")
        || lower.contains("protocol not supported")
        || lower.contains("address family not supported")
    {
        NetfilterError::NoNetfilter { detail }
    } else {
        NetfilterError::Failed {
            program: program.to_owned(),
            status: status.to_owned(),
            detail,
        }
    }
}

/// Refuses early, in one clear line, when this process lacks `CAP_NET_ADMIN` (not root, or a
/// container without `cap_add: [NET_ADMIN]`). Where `/proc` cannot tell, the iptables
/// programs' own errors do.
fn check_net_admin() -> Result<(), NetfilterError> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    match effective_caps(&status) {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => Err(NetfilterError::NotPermitted {
            detail: String::new(),
        }),
        _ => Ok(()),
    }
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// What `iptables-save -t nat` shows of ours: the chains present and the rules of other
/// chains that jump (or go) to one of them, as their `-A ...` lines.
fn ours(saved: &str) -> (Vec<&'static str>, Vec<&str>) {
    let mut in_nat = false;
    let mut chains = Vec::new();
    let mut jumps = Vec::new();
    for line in saved.lines() {
        let line = line.trim_end();
        if line.starts_with('*') {
            in_nat = line == "*nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if let Some(chain) = CHAINS.iter().find(|c| **c == name) {
                chains.push(*chain);
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or("");
            let target = words
                .skip_while(|w| *w != "-j" && *w != "-g")
                .nth(1)
                .unwrap_or("");
            if !CHAINS.contains(&chain) && CHAINS.contains(&target) {
                jumps.push(line);
            }
        }
    }
    (chains, jumps)
}

/// `-D` for each jump to our chains, as `-D <same spec>` (iptables-save prints rules in the
/// syntax iptables-restore reads back).
fn delete_jumps(jumps: &[&str], out: &mut String) {
    for jump in jumps {
        if let Some(rule) = jump.strip_prefix("-A ") {
            out.push_str(&format!("-D {rule}\n"));
        }
    }
}

/// The restore input that installs `rules` over whatever of ours `saved` shows: old jumps
/// deleted, our chains declared (created, or emptied when present), the rules appended.
pub fn install_script(rules: &Ruleset, saved: &str) -> (String, Outcome) {
    let (chains, jumps) = ours(saved);
    let fresh = rules.to_restore();
    let mut out = String::from("*nat\n");
    delete_jumps(&jumps, &mut out);
    out.push_str(fresh.strip_prefix("*nat\n").unwrap_or(&fresh));
    let outcome = Outcome {
        chains_found: chains.len(),
        jumps_found: jumps.len(),
    };
    (out, outcome)
}

/// The restore input that removes what of ours `saved` shows (`None`: nothing is there):
/// the jumps first, then every chain emptied, then deleted (they refer to each other).
pub fn cleanup_script(saved: &str) -> (Option<String>, Outcome) {
    let (chains, jumps) = ours(saved);
    let outcome = Outcome {
        chains_found: chains.len(),
        jumps_found: jumps.len(),
    };
    if chains.is_empty() && jumps.is_empty() {
        return (None, outcome);
    }
    let mut out = String::from("*nat\n");
    delete_jumps(&jumps, &mut out);
    for chain in &chains {
        out.push_str(&format!("-F {chain}\n"));
    }
    for chain in &chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    (Some(out), outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::rules::CaptureRules;

    const EMPTY: &str = "# Generated by iptables-save v1.8.9 (nf_tables)\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    const INSTALLED: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n:ISTIO_REDIRECT - [0:0]\n-A PREROUTING -j DOCKER\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN\n-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n";

    #[test]
    fn cleanup_of_nothing_does_nothing() {
        let (script, outcome) = cleanup_script(EMPTY);
        assert_eq!(script, None);
        assert_eq!(
            outcome,
            Outcome {
                chains_found: 0,
                jumps_found: 0
            }
        );
    }

    #[test]
    fn cleanup_deletes_jumps_then_flushes_then_deletes_our_chains_only() {
        let (script, outcome) = cleanup_script(INSTALLED);
        assert_eq!(
            script.unwrap(),
            "*nat\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n-D OUTPUT -j ISTIO_OUTPUT\n\
             -F ISTIO_INBOUND\n-F ISTIO_IN_REDIRECT\n-F ISTIO_OUTPUT\n-F ISTIO_REDIRECT\n\
             -X ISTIO_INBOUND\n-X ISTIO_IN_REDIRECT\n-X ISTIO_OUTPUT\n-X ISTIO_REDIRECT\nCOMMIT\n"
        );
        assert_eq!(
            outcome,
            Outcome {
                chains_found: 4,
                jumps_found: 2
            }
        );
    }

    #[test]
    fn other_tables_are_not_read_as_ours() {
        let saved = "*filter\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n";
        assert_eq!(cleanup_script(saved).0, None);
    }

    #[test]
    fn install_over_an_earlier_install_replaces_it_in_one_transaction() {
        let rules = CaptureRules::default().ruleset().unwrap();
        let (fresh, _) = install_script(&rules, EMPTY);
        assert_eq!(fresh, rules.to_restore());
        let (again, outcome) = install_script(&rules, INSTALLED);
        let expected = format!(
            "*nat\n-D PREROUTING -p tcp -j ISTIO_INBOUND\n-D OUTPUT -j ISTIO_OUTPUT\n{}",
            rules.to_restore().strip_prefix("*nat\n").unwrap()
        );
        assert_eq!(again, expected);
        assert_eq!(outcome.chains_found, 4);
    }

    #[test]
    fn binaries_are_found_by_name_sibling_or_applet() {
        let default = Iptables::new(None);
        assert_eq!(default.save.display(), "iptables-save");
        assert_eq!(default.restore.display(), "iptables-restore");
        let legacy = Iptables::new(Some(Path::new("/sbin/iptables-legacy")));
        assert_eq!(legacy.restore.display(), "/sbin/iptables-legacy-restore");
        let multi = Iptables::new(Some(Path::new("/usr/sbin/xtables-nft-multi")));
        assert_eq!(
            multi.save.display(),
            "/usr/sbin/xtables-nft-multi iptables-save"
        );
    }

    #[test]
    fn failures_are_one_line_that_names_the_cause() {
        let denied = classify(
            "iptables-restore",
            "exit status: 4",
            "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n",
        );
        assert!(matches!(denied, NetfilterError::NotPermitted { .. }));
        assert!(denied.to_string().contains("CAP_NET_ADMIN"));
        let no_nat = classify(
            "iptables-save",
            "exit status: 1",
            "iptables-save v1.8.9 (legacy): can't initialize iptables table `nat': Table does not exist (do you need to insmod?)\nPerhaps iptables or your kernel needs to be upgraded.\n",
        );
        assert!(matches!(no_nat, NetfilterError::NoNetfilter { .. }));
        for err in [denied, no_nat] {
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    #[test]
    fn effective_capabilities_are_read_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }
}
