//! The nat rules of Istio's init step (`istio-iptables`), as a pure function of the options:
//! no I/O, so the rule list is table-tested here and printed as is by `--dry-run`.
//!
//! The order and exclusions are SEMANTICS.md §10 (Istio's `tools/istio-iptables`, REDIRECT
//! mode, IPv4):
//! - `ISTIO_INBOUND`: HBONE's 15008 is never captured; with every port captured (`-b '*'`)
//!   the excluded ports return first, then everything else jumps to `ISTIO_IN_REDIRECT`;
//!   with a port list only those ports jump. `PREROUTING` jumps there for TCP (not at all
//!   when the inbound list is empty).
//! - `ISTIO_OUTPUT`, reached from `OUTPUT`: excluded outbound ports return (TCP and UDP);
//!   traffic from `127.0.0.6` (the proxy's inbound forwarding) returns; the proxy's own
//!   loopback calls to a non-loopback address (the pod's own IP, through a VIP) re-enter
//!   inbound; the app's loopback traffic returns; every other packet of the proxy's UID
//!   returns (the loop guard); the same three for the GID; `127.0.0.1` returns; excluded
//!   CIDRs return; included ports, then included CIDRs (all by default) go to
//!   `ISTIO_REDIRECT`.

use std::fmt;
use std::net::Ipv4Addr;

/// The four chains this module owns in the nat table, in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, REDIRECT, IN_REDIRECT, OUTPUT];

pub const INBOUND: &str = "ISTIO_INBOUND";
pub const REDIRECT: &str = "ISTIO_REDIRECT";
pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const OUTPUT: &str = "ISTIO_OUTPUT";

/// Istio's HBONE tunnel port: never captured in either direction.
pub const TUNNEL_PORT: u16 = 15008;

/// The source address the proxy uses to forward inbound connections to the app, so the
/// forwarded connection is told apart from the app's own loopback traffic.
pub const INBOUND_FORWARD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// At most this many ports fit one `-m multiport` match.
const MULTIPORT_MAX: usize = 15;

/// How captured inbound connections reach the proxy (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    /// nat `REDIRECT`: the app sees connections from the proxy (Istio's default).
    Redirect,
    /// mangle `TPROXY`: keeps the client's source address; not supported yet.
    Tproxy,
}

/// A port list that may also mean "every port" (`*`) or "none" (empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    List(Vec<u16>),
}

/// An address range list that may also mean "every address" (`*`) or "none" (empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    All,
    List(Vec<Cidr>),
}

/// An IPv4 range, host bits cleared (`10.1.2.3/16` is kept as `10.1.0.0/16`, as Istio does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

/// The options of `outrider iptables`, with Istio's defaults ([`CaptureRules::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// `-p`: where outbound connections are redirected (15001).
    pub proxy_port: u16,
    /// `-z`: where inbound connections are redirected (15006).
    pub inbound_capture_port: u16,
    /// `-u`: the proxy's UID, whose traffic is never captured (1337).
    pub proxy_uid: u32,
    /// `-g`: the proxy's GID, same (defaults to the UID).
    pub proxy_gid: u32,
    /// `-m`.
    pub mode: InterceptionMode,
    /// `-b`: inbound ports captured (`*`).
    pub inbound_ports: Ports,
    /// `-d`: inbound ports left alone when every port is captured (15090, 15021, 15020).
    pub inbound_exclude_ports: Vec<u16>,
    /// `-i`: destination ranges captured outbound (`*`).
    pub outbound_ranges: Ranges,
    /// `-x`: destination ranges never captured outbound.
    pub outbound_exclude_ranges: Vec<Cidr>,
    /// `-q`: outbound ports captured whatever the destination address.
    pub outbound_ports: Vec<u16>,
    /// `-o`: outbound ports never captured (TCP and UDP).
    pub outbound_exclude_ports: Vec<u16>,
}

/// One rule of the nat table: `-A <chain> <spec>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: String,
}

/// What `outrider iptables` installs: the chains it owns and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub rules: Vec<Rule>,
}

/// Why options do not make a rule set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("invalid port {0:?} (a number from 1 to 65535)")]
    Port(String),
    #[error("invalid address range {0:?} (an IPv4 CIDR such as 10.0.0.0/8)")]
    Cidr(String),
    #[error("IPv6 range {0:?} is not supported yet (outrider iptables installs IPv4 rules only)")]
    Ipv6Cidr(String),
    #[error("{0:?} cannot be excluded: `*` only means every range in --istio-service-cidr")]
    WildcardExclude(String),
    #[error("unknown interception mode {0:?} (REDIRECT or TPROXY)")]
    Mode(String),
    #[error(
        "interception mode TPROXY is not supported yet: use REDIRECT (the default; the app sees connections from the proxy)"
    )]
    TproxyUnsupported,
}

impl Default for CaptureRules {
    fn default() -> CaptureRules {
        CaptureRules {
            proxy_port: 15001,
            inbound_capture_port: 15006,
            proxy_uid: 1337,
            proxy_gid: 1337,
            mode: InterceptionMode::Redirect,
            inbound_ports: Ports::All,
            inbound_exclude_ports: vec![15090, 15021, 15020],
            outbound_ranges: Ranges::All,
            outbound_exclude_ranges: Vec::new(),
            outbound_ports: Vec::new(),
            outbound_exclude_ports: Vec::new(),
        }
    }
}

impl CaptureRules {
    /// The nat rules, in the order they are appended (SEMANTICS.md §10).
    pub fn ruleset(&self) -> Result<Ruleset, RuleError> {
        if self.mode == InterceptionMode::Tproxy {
            return Err(RuleError::TproxyUnsupported);
        }
        let mut rules = Vec::new();
        let mut add = |chain: &'static str, spec: String| rules.push(Rule { chain, spec });

        add(INBOUND, format!("-p tcp --dport {TUNNEL_PORT} -j RETURN"));
        add(
            REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.proxy_port),
        );
        add(
            IN_REDIRECT,
            format!(
                "-p tcp -j REDIRECT --to-ports {}",
                self.inbound_capture_port
            ),
        );

        // Inbound.
        match &self.inbound_ports {
            Ports::List(ports) if ports.is_empty() => {}
            Ports::All => {
                add("PREROUTING", format!("-p tcp -j {INBOUND}"));
                for ports in port_matches(&self.inbound_exclude_ports) {
                    add(INBOUND, format!("-p tcp {ports} -j RETURN"));
                }
                add(INBOUND, format!("-p tcp -j {IN_REDIRECT}"));
            }
            Ports::List(ports) => {
                add("PREROUTING", format!("-p tcp -j {INBOUND}"));
                for port in ports {
                    add(INBOUND, format!("-p tcp --dport {port} -j {IN_REDIRECT}"));
                }
            }
        }

        // Outbound.
        add("OUTPUT", format!("-j {OUTPUT}"));
        for ports in port_matches(&self.outbound_exclude_ports) {
            add(OUTPUT, format!("-p tcp {ports} -j RETURN"));
            add(OUTPUT, format!("-p udp {ports} -j RETURN"));
        }
        add(
            OUTPUT,
            format!("-o lo -s {INBOUND_FORWARD_SOURCE}/32 -j RETURN"),
        );
        // An included loopback range means the user wants loopback captured: then the app's
        // own loopback traffic is not let through early.
        let loopback_included = match &self.outbound_ranges {
            Ranges::All => false,
            Ranges::List(ranges) => ranges.iter().any(|r| r.addr.is_loopback()),
        };
        for owner in [
            format!("--uid-owner {}", self.proxy_uid),
            format!("--gid-owner {}", self.proxy_gid),
        ] {
            add(
                OUTPUT,
                format!(
                    "-o lo ! -d 127.0.0.1/32 -p tcp ! --dport {TUNNEL_PORT} -m owner {owner} -j {IN_REDIRECT}"
                ),
            );
            if !loopback_included {
                add(OUTPUT, format!("-o lo -m owner ! {owner} -j RETURN"));
            }
            add(OUTPUT, format!("-m owner {owner} -j RETURN"));
        }
        add(OUTPUT, "-d 127.0.0.1/32 -j RETURN".to_owned());
        for range in &self.outbound_exclude_ranges {
            add(OUTPUT, format!("-d {range} -j RETURN"));
        }
        for port in &self.outbound_ports {
            add(OUTPUT, format!("-p tcp --dport {port} -j {REDIRECT}"));
        }
        match &self.outbound_ranges {
            Ranges::All => add(OUTPUT, format!("-j {REDIRECT}")),
            Ranges::List(ranges) if ranges.is_empty() => {}
            Ranges::List(ranges) => {
                for range in ranges {
                    add(OUTPUT, format!("-d {range} -j {REDIRECT}"));
                }
                add(OUTPUT, "-j RETURN".to_owned());
            }
        }
        Ok(Ruleset { rules })
    }
}

impl Ruleset {
    /// The rules as `iptables-restore --noflush` input: the nat table, the chains declared
    /// (created, or emptied if present), then each rule appended.
    pub fn to_restore(&self) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in &self.rules {
            out.push_str(&format!("{rule}\n"));
        }
        out.push_str("COMMIT\n");
        out
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec)
    }
}

/// `--dport N` for one port, `-m multiport --dports A,B,...` for more (15 at most each).
fn port_matches(ports: &[u16]) -> Vec<String> {
    ports
        .chunks(MULTIPORT_MAX)
        .map(|chunk| match chunk {
            [port] => format!("--dport {port}"),
            many => {
                let list: Vec<String> = many.iter().map(u16::to_string).collect();
                format!("-m multiport --dports {}", list.join(","))
            }
        })
        .collect()
}

impl Cidr {
    /// `10.0.0.0/8`, or a bare address (`/32`).
    pub fn parse(s: &str) -> Result<Cidr, RuleError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        if addr.contains(':') {
            return Err(RuleError::Ipv6Cidr(s.to_owned()));
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| RuleError::Cidr(s.to_owned()))?;
        let prefix = match prefix {
            None => 32,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| RuleError::Cidr(s.to_owned()))?,
        };
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl InterceptionMode {
    /// `REDIRECT` or `TPROXY` (any case).
    pub fn parse(s: &str) -> Result<InterceptionMode, RuleError> {
        match s.to_ascii_uppercase().as_str() {
            "REDIRECT" => Ok(InterceptionMode::Redirect),
            "TPROXY" => Ok(InterceptionMode::Tproxy),
            _ => Err(RuleError::Mode(s.to_owned())),
        }
    }
}

/// A comma-separated port list (`15090,15021`); empty means none.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, RuleError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| RuleError::Port(p.to_owned()))
        })
        .collect()
}

/// `*` (every port) or a port list (empty: none).
pub fn parse_ports(s: &str) -> Result<Ports, RuleError> {
    if s.trim() == "*" {
        return Ok(Ports::All);
    }
    parse_port_list(s).map(Ports::List)
}

/// A comma-separated CIDR list; empty means none; `*` is refused (nothing to exclude it from).
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, RuleError> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            if r == "*" {
                Err(RuleError::WildcardExclude(r.to_owned()))
            } else {
                Cidr::parse(r)
            }
        })
        .collect()
}

/// `*` (every address) or a CIDR list (empty: none).
pub fn parse_ranges(s: &str) -> Result<Ranges, RuleError> {
    if s.trim() == "*" {
        return Ok(Ranges::All);
    }
    parse_cidr_list(s).map(Ranges::List)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Istio's default rules (`-p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -x ''
    /// -b '*' -d 15090,15021,15020`), in order.
    const DEFAULTS: &[&str] = &[
        "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ];

    fn lines(rules: &CaptureRules) -> Vec<String> {
        let set = rules.ruleset().unwrap();
        set.rules.iter().map(Rule::to_string).collect()
    }

    /// The defaults with some lines replaced: `(index in DEFAULTS, how many removed, added)`.
    fn defaults_with(edits: &[(usize, usize, &[&str])]) -> Vec<String> {
        let mut out: Vec<String> = DEFAULTS.iter().map(|s| s.to_string()).collect();
        // Applied from the last edit backwards, so indexes refer to DEFAULTS.
        for (at, remove, add) in edits.iter().rev() {
            out.splice(*at..at + remove, add.iter().map(|s| s.to_string()));
        }
        out
    }

    #[test]
    fn defaults_are_istios_rules_in_order() {
        assert_eq!(lines(&CaptureRules::default()), DEFAULTS);
    }

    #[test]
    fn each_flag_changes_its_rules_only() {
        let cases: Vec<(&str, CaptureRules, Vec<String>)> = vec![
            (
                "-p 16001 -z 16006",
                CaptureRules {
                    proxy_port: 16001,
                    inbound_capture_port: 16006,
                    ..CaptureRules::default()
                },
                defaults_with(&[
                    (1, 1, &["-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"]),
                    (2, 1, &["-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"]),
                ]),
            ),
            (
                "-u 1000 -g 2000",
                CaptureRules {
                    proxy_uid: 1000,
                    proxy_gid: 2000,
                    ..CaptureRules::default()
                },
                defaults_with(&[(
                    8,
                    6,
                    &[
                        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1000 -j ISTIO_IN_REDIRECT",
                        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1000 -j RETURN",
                        "-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN",
                        "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 2000 -j ISTIO_IN_REDIRECT",
                        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2000 -j RETURN",
                        "-A ISTIO_OUTPUT -m owner --gid-owner 2000 -j RETURN",
                    ],
                )]),
            ),
            (
                "-d 9090 (one excluded port)",
                CaptureRules {
                    inbound_exclude_ports: vec![9090],
                    ..CaptureRules::default()
                },
                defaults_with(&[(4, 1, &["-A ISTIO_INBOUND -p tcp --dport 9090 -j RETURN"])]),
            ),
            (
                "-d '' (nothing excluded)",
                CaptureRules {
                    inbound_exclude_ports: vec![],
                    ..CaptureRules::default()
                },
                defaults_with(&[(4, 1, &[])]),
            ),
            (
                "-b 8080,9000 (only these; -d ignored)",
                CaptureRules {
                    inbound_ports: Ports::List(vec![8080, 9000]),
                    ..CaptureRules::default()
                },
                defaults_with(&[(
                    4,
                    2,
                    &[
                        "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
                        "-A ISTIO_INBOUND -p tcp --dport 9000 -j ISTIO_IN_REDIRECT",
                    ],
                )]),
            ),
            (
                "-b '' (no inbound capture)",
                CaptureRules {
                    inbound_ports: Ports::List(vec![]),
                    ..CaptureRules::default()
                },
                defaults_with(&[(3, 3, &[])]),
            ),
            (
                "-o 22,5432",
                CaptureRules {
                    outbound_exclude_ports: vec![22, 5432],
                    ..CaptureRules::default()
                },
                defaults_with(&[(
                    7,
                    0,
                    &[
                        "-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,5432 -j RETURN",
                        "-A ISTIO_OUTPUT -p udp -m multiport --dports 22,5432 -j RETURN",
                    ],
                )]),
            ),
            (
                "-q 3306 -i '' (this port only)",
                CaptureRules {
                    outbound_ports: vec![3306],
                    outbound_ranges: Ranges::List(vec![]),
                    ..CaptureRules::default()
                },
                defaults_with(&[(15, 1, &["-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT"])]),
            ),
            (
                "-i 10.0.0.0/8,172.16.0.0/12 -x 10.1.2.3/16",
                CaptureRules {
                    outbound_ranges: parse_ranges("10.0.0.0/8, 172.16.0.0/12").unwrap(),
                    outbound_exclude_ranges: parse_cidr_list("10.1.2.3/16").unwrap(),
                    ..CaptureRules::default()
                },
                defaults_with(&[(
                    15,
                    1,
                    &[
                        "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN",
                        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                        "-A ISTIO_OUTPUT -d 172.16.0.0/12 -j ISTIO_REDIRECT",
                        "-A ISTIO_OUTPUT -j RETURN",
                    ],
                )]),
            ),
            (
                "-i 127.0.0.1/32 (loopback capture keeps the app's loopback traffic)",
                CaptureRules {
                    outbound_ranges: parse_ranges("127.0.0.1/32").unwrap(),
                    ..CaptureRules::default()
                },
                defaults_with(&[
                    (9, 1, &[]),
                    (12, 1, &[]),
                    (
                        15,
                        1,
                        &[
                            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j ISTIO_REDIRECT",
                            "-A ISTIO_OUTPUT -j RETURN",
                        ],
                    ),
                ]),
            ),
        ];
        for (flags, rules, want) in cases {
            assert_eq!(lines(&rules), want, "{flags}");
        }
    }

    #[test]
    fn more_than_fifteen_excluded_ports_take_several_multiport_rules() {
        let rules = CaptureRules {
            inbound_exclude_ports: (1..=16).collect(),
            ..CaptureRules::default()
        };
        let got = lines(&rules);
        assert_eq!(
            got[4],
            "-A ISTIO_INBOUND -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j RETURN"
        );
        assert_eq!(got[5], "-A ISTIO_INBOUND -p tcp --dport 16 -j RETURN");
    }

    #[test]
    fn tproxy_is_refused_with_a_clear_reason() {
        let rules = CaptureRules {
            mode: InterceptionMode::Tproxy,
            ..CaptureRules::default()
        };
        let err = rules.ruleset().unwrap_err();
        assert_eq!(err, RuleError::TproxyUnsupported);
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }

    #[test]
    fn restore_input_declares_the_chains_then_appends_in_order() {
        let text = CaptureRules::default().ruleset().unwrap().to_restore();
        let mut want = String::from(
            "*nat\n:ISTIO_INBOUND - [0:0]\n:ISTIO_REDIRECT - [0:0]\n:ISTIO_IN_REDIRECT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n",
        );
        for line in DEFAULTS {
            want.push_str(line);
            want.push('\n');
        }
        want.push_str("COMMIT\n");
        assert_eq!(text, want);
    }

    #[test]
    fn flag_values_parse_like_istios() {
        assert_eq!(parse_ports("*"), Ok(Ports::All));
        assert_eq!(parse_ports(""), Ok(Ports::List(vec![])));
        assert_eq!(parse_ports("80, 443"), Ok(Ports::List(vec![80, 443])));
        assert_eq!(parse_port_list("0"), Err(RuleError::Port("0".into())));
        assert_eq!(
            parse_port_list("70000"),
            Err(RuleError::Port("70000".into()))
        );
        assert_eq!(parse_port_list("http"), Err(RuleError::Port("http".into())));
        assert_eq!(parse_ranges("*"), Ok(Ranges::All));
        assert_eq!(parse_ranges(""), Ok(Ranges::List(vec![])));
        assert_eq!(Cidr::parse("10.9.8.7").unwrap().to_string(), "10.9.8.7/32");
        assert_eq!(Cidr::parse("10.9.8.7/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(
            Cidr::parse("10.9.8.7/33"),
            Err(RuleError::Cidr("10.9.8.7/33".into()))
        );
        assert_eq!(Cidr::parse("nope/8"), Err(RuleError::Cidr("nope/8".into())));
        assert_eq!(
            Cidr::parse("fd00::/8"),
            Err(RuleError::Ipv6Cidr("fd00::/8".into()))
        );
        assert_eq!(
            parse_cidr_list("*"),
            Err(RuleError::WildcardExclude("*".into()))
        );
        assert_eq!(
            InterceptionMode::parse("redirect"),
            Ok(InterceptionMode::Redirect)
        );
        assert_eq!(
            InterceptionMode::parse("TPROXY"),
            Ok(InterceptionMode::Tproxy)
        );
        assert_eq!(
            InterceptionMode::parse("NAT"),
            Err(RuleError::Mode("NAT".into()))
        );
    }
}
