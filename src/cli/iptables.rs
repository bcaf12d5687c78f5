//! Flags of `outrider iptables`: Istio's `istio-iptables` flags (same short and long names,
//! same defaults), plus `--dry-run`, `--cleanup` and `--iptables-bin`.

use std::net::SocketAddr;
use std::path::PathBuf;

use outrider::capture::rules::{self, CaptureRules, Cidr, InterceptionMode, Ports, Ranges};
use outrider::capture::{EchoOptions, IptablesOptions};

/// `outrider iptables [-p 15001] [-z 15006] [-u 1337] [-g 1337] [-m REDIRECT] [-b '*']
/// [-d 15090,15021,15020] [-i '*'] [-x ''] [-q ports] [-o ports] [--dry-run] [--cleanup]`.
#[derive(Debug, Clone, clap::Args)]
pub struct IptablesArgs {
    /// The port outbound connections are redirected to (the proxy's outbound capture listener).
    #[arg(
        short = 'p',
        long = "envoy-port",
        visible_alias = "proxy-port",
        env = "OUTRIDER_PROXY_PORT",
        default_value_t = 15001
    )]
    pub proxy_port: u16,
    /// The port inbound connections are redirected to (the proxy's inbound capture listener).
    #[arg(
        short = 'z',
        long,
        env = "OUTRIDER_INBOUND_CAPTURE_PORT",
        default_value_t = 15006
    )]
    pub inbound_capture_port: u16,
    /// The UID whose traffic is never captured: the sidecar's (it must run as this user).
    #[arg(short = 'u', long, env = "OUTRIDER_PROXY_UID", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// The GID whose traffic is never captured (default: the UID).
    #[arg(short = 'g', long, env = "OUTRIDER_PROXY_GID")]
    pub proxy_gid: Option<u32>,
    /// REDIRECT (nat) or TPROXY (not supported yet).
    #[arg(short = 'm', long = "istio-inbound-interception-mode", env = "OUTRIDER_INBOUND_INTERCEPTION_MODE", default_value = "REDIRECT", value_parser = mode)]
    pub mode: InterceptionMode,
    /// Destination CIDRs captured outbound, comma-separated; `*` all, empty none.
    #[arg(short = 'i', long = "istio-service-cidr", env = "OUTRIDER_SERVICE_CIDR", default_value = "*", value_parser = ranges)]
    pub outbound_ranges: Ranges,
    /// Destination CIDRs never captured outbound, comma-separated.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", env = "OUTRIDER_SERVICE_EXCLUDE_CIDR", default_value = "", value_parser = cidrs)]
    pub outbound_exclude_ranges: CidrList,
    /// Inbound ports captured, comma-separated; `*` all, empty none.
    #[arg(short = 'b', long = "istio-inbound-ports", env = "OUTRIDER_INBOUND_PORTS", default_value = "*", value_parser = ports)]
    pub inbound_ports: Ports,
    /// Inbound ports never captured when all are (`-b '*'`), comma-separated.
    #[arg(short = 'd', long = "istio-local-exclude-ports", env = "OUTRIDER_LOCAL_EXCLUDE_PORTS", default_value = "15090,15021,15020", value_parser = port_list)]
    pub inbound_exclude_ports: PortList,
    /// Outbound ports captured whatever the destination address, comma-separated.
    #[arg(short = 'q', long = "istio-outbound-ports", env = "OUTRIDER_OUTBOUND_PORTS", default_value = "", value_parser = port_list)]
    pub outbound_ports: PortList,
    /// Outbound ports never captured (TCP and UDP), comma-separated.
    #[arg(short = 'o', long = "istio-local-outbound-ports-exclude", env = "OUTRIDER_LOCAL_OUTBOUND_PORTS_EXCLUDE", default_value = "", value_parser = port_list)]
    pub outbound_exclude_ports: PortList,
    /// Print the rules (iptables-restore input) and change nothing; with --cleanup, print what
    /// would be removed.
    #[arg(short = 'n', long, env = "OUTRIDER_DRY_RUN", value_parser = super::boolish())]
    pub dry_run: bool,
    /// Remove the ISTIO_* chains and the jumps to them (safe when nothing is installed).
    #[arg(long, visible_alias = "cleanup-only", env = "OUTRIDER_CLEANUP", value_parser = super::boolish())]
    pub cleanup: bool,
    /// The iptables program: `iptables` (its -save/-restore siblings are used, also for
    /// `iptables-legacy`), or a multi-call `xtables-nft-multi` / `xtables-legacy-multi`.
    /// Default: iptables-save and iptables-restore found on PATH.
    #[arg(long, env = "OUTRIDER_IPTABLES_BIN")]
    pub iptables_bin: Option<PathBuf>,
}

/// A port list as one clap value (clap would otherwise read `Vec` as a repeated flag).
#[derive(Debug, Clone)]
pub struct PortList(Vec<u16>);

/// A CIDR list as one clap value.
#[derive(Debug, Clone)]
pub struct CidrList(Vec<Cidr>);

impl IptablesArgs {
    pub fn into_options(self) -> IptablesOptions {
        IptablesOptions {
            rules: CaptureRules {
                proxy_port: self.proxy_port,
                inbound_capture_port: self.inbound_capture_port,
                proxy_uid: self.proxy_uid,
                proxy_gid: self.proxy_gid.unwrap_or(self.proxy_uid),
                mode: self.mode,
                inbound_ports: self.inbound_ports,
                inbound_exclude_ports: self.inbound_exclude_ports.0,
                outbound_ranges: self.outbound_ranges,
                outbound_exclude_ranges: self.outbound_exclude_ranges.0,
                outbound_ports: self.outbound_ports.0,
                outbound_exclude_ports: self.outbound_exclude_ports.0,
            },
            dry_run: self.dry_run,
            cleanup: self.cleanup,
            iptables_bin: self.iptables_bin,
        }
    }
}

fn mode(s: &str) -> Result<InterceptionMode, String> {
    InterceptionMode::parse(s).map_err(|e| e.to_string())
}

fn ports(s: &str) -> Result<Ports, String> {
    rules::parse_ports(s).map_err(|e| e.to_string())
}

fn port_list(s: &str) -> Result<PortList, String> {
    rules::parse_port_list(s)
        .map(PortList)
        .map_err(|e| e.to_string())
}

fn ranges(s: &str) -> Result<Ranges, String> {
    rules::parse_ranges(s).map_err(|e| e.to_string())
}

fn cidrs(s: &str) -> Result<CidrList, String> {
    rules::parse_cidr_list(s)
        .map(CidrList)
        .map_err(|e| e.to_string())
}

/// `outrider capture-echo --listen 0.0.0.0:15001 [--listen ...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureEchoArgs {
    /// An address to listen on; repeat for several (all are bound before any is served).
    #[arg(long, required = true, value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
}

impl CaptureEchoArgs {
    pub fn into_options(self) -> EchoOptions {
        EchoOptions {
            listen: self.listen,
        }
    }
}
