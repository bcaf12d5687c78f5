//! Transparent capture, part 1: `outrider iptables` in real network namespaces made by the
//! test (`ip netns`, deleted on drop), and `outrider capture-echo` as the listener that reports
//! each captured connection's original destination.
//!
//! Root (and `ip`, `iptables-save`, `iptables-restore`, `setpriv`) are needed for the tests
//! that touch netfilter; without them those tests skip with a printed reason, unless
//! `OUTRIDER_REQUIRE_TOOLS=1` (CI), where they fail. `--dry-run` and the argument errors need
//! nothing and always run.

use std::process::Output;

use crate::common::netns::{netns_prerequisites, Netns};
use crate::common::{outrider, outrider_ok, tool_available, BIN};

/// `outrider iptables --dry-run` with Istio's defaults: SEMANTICS.md §10's rules, in order.
const DEFAULT_RULES: &str = "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

#[test]
fn dry_run_prints_istios_default_rules_in_order() {
    let out = outrider_ok(&["iptables", "--dry-run"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), DEFAULT_RULES);
    // Istio's own spelling of the defaults gives the same rules.
    let out = outrider_ok(&[
        "iptables",
        "-n",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-g",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), DEFAULT_RULES);
}

#[test]
fn dry_run_with_port_flags_places_each_rule_where_istio_does() {
    let out = outrider_ok(&[
        "iptables",
        "--dry-run",
        "--istio-local-outbound-ports-exclude",
        "22,5432",
        "--istio-outbound-ports",
        "3306",
        "--istio-local-exclude-ports",
        "9090",
        "--istio-service-cidr",
        "",
        "--proxy-uid",
        "1000",
    ]);
    let expected = "\
*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 9090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,5432 -j RETURN
-A ISTIO_OUTPUT -p udp -m multiport --dports 22,5432 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1000 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1000 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1000 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1000 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1000 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -p tcp --dport 3306 -j ISTIO_REDIRECT
COMMIT
";
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn help_says_what_it_installs_and_what_it_needs() {
    let out = outrider_ok(&["iptables", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "ISTIO_OUTPUT",
        "1337",
        "CAP_NET_ADMIN",
        "--dry-run",
        "--cleanup",
        "--istio-inbound-ports",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

#[test]
fn bad_values_and_tproxy_are_one_clear_line_and_a_failure() {
    let out = outrider(&["iptables", "-m", "TPROXY"]);
    assert_one_line_failure(&out, "TPROXY is not supported yet");
    let out = outrider(&["iptables", "--dry-run", "-d", "15090,http"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid port \"http\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reading the table with a program that is not there (changes nothing anywhere).
    let out = outrider(&[
        "iptables",
        "--cleanup",
        "--dry-run",
        "--iptables-bin",
        "/nonexistent/iptables",
    ]);
    assert_one_line_failure(&out, "/nonexistent/iptables-save not found");
}

#[test]
fn without_net_admin_it_refuses_in_one_line() {
    if !netns_prerequisites() || !tool_available("setpriv") {
        return;
    }
    let ns = Netns::new();
    let before = ns.nat();
    // UID 1337 without capabilities (setpriv drops them with the UID change).
    let out = ns.run(&[
        "setpriv",
        "--reuid",
        "1337",
        "--regid",
        "1337",
        "--clear-groups",
        BIN,
        "iptables",
    ]);
    assert_one_line_failure(&out, "needs root or CAP_NET_ADMIN");
    assert_eq!(ns.nat(), before);
}

#[test]
fn install_shows_the_chains_and_cleanup_leaves_the_table_as_before() {
    if !netns_prerequisites() {
        return;
    }
    let ns = Netns::new();
    // Someone else's rules, which neither install nor cleanup may touch.
    ns.ok(&["iptables", "-t", "nat", "-N", "APP_RULES"]);
    ns.ok(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "APP_RULES",
        "-p",
        "tcp",
        "--dport",
        "9",
        "-j",
        "RETURN",
    ]);
    ns.ok(&["iptables", "-t", "nat", "-A", "OUTPUT", "-j", "APP_RULES"]);
    let before = ns.nat();

    let out = ns.outrider(&["iptables"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = ns.nat();
    for chain in [
        "ISTIO_INBOUND",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
        "ISTIO_REDIRECT",
    ] {
        assert!(
            installed.contains(&format!(":{chain} - [0:0]")),
            "{installed}"
        );
    }
    for rule in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -j APP_RULES",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_INBOUND -p tcp -m multiport --dports 15090,15021,15020 -j RETURN",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            installed.contains(rule),
            "{rule} missing from:\n{installed}"
        );
    }
    let ours = |nat: &str| nat.lines().filter(|l| l.contains("ISTIO_")).count();
    // 4 chain declarations + 16 rules.
    assert_eq!(ours(&installed), 20, "{installed}");

    // A second install replaces the first (no duplicated rules).
    let out = ns.outrider(&["iptables"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ns.nat(), installed);

    let out = ns.outrider(&["iptables", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ns.nat(), before);
    let out = ns.outrider(&["iptables", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
    assert_eq!(ns.nat(), before);
}

#[test]
fn captured_connections_reach_the_capture_ports_with_their_original_destination() {
    if !netns_prerequisites() || !tool_available("setpriv") {
        return;
    }
    // Two "pods" joined by a veth pair: A (10.77.0.1, captured) and B (10.77.0.2).
    let a = Netns::new();
    let b = Netns::new();
    a.ok(&[
        "ip", "link", "add", "ca0", "type", "veth", "peer", "name", "cb0", "netns", &b.name,
    ]);
    a.ok(&["ip", "addr", "add", "10.77.0.1/24", "dev", "ca0"]);
    a.ok(&["ip", "link", "set", "ca0", "up"]);
    b.ok(&["ip", "addr", "add", "10.77.0.2/24", "dev", "cb0"]);
    b.ok(&["ip", "link", "set", "cb0", "up"]);
    let out = a.outrider(&["iptables"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The capture listeners in A (run as root: not the proxy's UID), an excluded port, and
    // the real server in B.
    let _a_echo = a.echo("0.0.0.0:15001,0.0.0.0:15006,0.0.0.0:15021,0.0.0.0:9000");
    let _b_echo = b.echo("0.0.0.0:8080");

    // The app's outbound connection lands on 15001; the original destination is B.
    assert_eq!(
        a.fetch(&[], "10.77.0.2:8080"),
        "local=127.0.0.1:15001 original=10.77.0.2:8080"
    );
    // The proxy's own connection (UID/GID 1337) is not captured: it reaches B.
    let as_proxy = [
        "setpriv",
        "--reuid",
        "1337",
        "--regid",
        "1337",
        "--clear-groups",
    ];
    assert!(
        a.fetch(&as_proxy, "10.77.0.2:8080")
            .starts_with("local=10.77.0.2:8080 "),
        "the proxy's UID was captured"
    );
    // Inbound from B to any port of A lands on 15006, with the port B dialled.
    assert_eq!(
        b.fetch(&[], "10.77.0.1:9000"),
        "local=10.77.0.1:15006 original=10.77.0.1:9000"
    );
    // Excluded inbound ports (15021 by default) are not captured.
    assert!(b
        .fetch(&[], "10.77.0.1:15021")
        .starts_with("local=10.77.0.1:15021 "));
    // The app's loopback traffic is not captured.
    assert!(a
        .fetch(&[], "127.0.0.1:15021")
        .starts_with("local=127.0.0.1:15021 "));
    // The app calling its own pod IP is not captured either (it goes out on lo).
    assert!(a
        .fetch(&[], "10.77.0.1:9000")
        .starts_with("local=10.77.0.1:9000 "));
    // The proxy calling its own pod IP (a service VIP that resolved to itself) re-enters
    // inbound capture (REDIRECT from OUTPUT lands on 127.0.0.1); to 127.0.0.1 it does not.
    assert_eq!(
        a.fetch(&as_proxy, "10.77.0.1:9000"),
        "local=127.0.0.1:15006 original=10.77.0.1:9000"
    );
    assert!(a
        .fetch(&as_proxy, "127.0.0.1:9000")
        .starts_with("local=127.0.0.1:9000 "));
    // The proxy forwarding inbound traffic to the app from 127.0.0.6 reaches the app.
    if tool_available("curl") {
        let out = a.run(&[
            "setpriv",
            "--reuid",
            "1337",
            "--regid",
            "1337",
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--interface",
            "127.0.0.6",
            "http://10.77.0.1:9000/",
        ]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.starts_with("local=10.77.0.1:9000 ") && body.contains("peer=127.0.0.6:"),
            "{body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // After cleanup nothing is captured any more.
    let out = a.outrider(&["iptables", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(a
        .fetch(&[], "10.77.0.2:8080")
        .starts_with("local=10.77.0.2:8080 "));
}

#[test]
fn original_dst_reads_ipv6_and_ipv4_on_a_dual_stack_listener() {
    if !netns_prerequisites() || !tool_available("ip6tables") {
        return;
    }
    // One REDIRECT rule per family (outrider iptables installs IPv4 rules only; the lookup
    // itself serves both), to a listener on [::]:15001.
    let a = Netns::new();
    let b = Netns::new();
    a.ok(&[
        "ip", "link", "add", "ca0", "type", "veth", "peer", "name", "cb0", "netns", &b.name,
    ]);
    a.ok(&["ip", "addr", "add", "10.78.0.1/24", "dev", "ca0"]);
    a.ok(&["ip", "addr", "add", "fd00:78::1/64", "dev", "ca0", "nodad"]);
    a.ok(&["ip", "link", "set", "ca0", "up"]);
    b.ok(&["ip", "link", "set", "cb0", "up"]);
    for (program, dst) in [("iptables", "10.78.0.2"), ("ip6tables", "fd00:78::2")] {
        a.ok(&[
            program,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            dst,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ]);
    }
    let _echo = a.echo("[::]:15001");
    assert_eq!(
        a.fetch(&[], "[fd00:78::2]:8080"),
        "local=[::1]:15001 original=[fd00:78::2]:8080"
    );
    assert_eq!(
        a.fetch(&[], "10.78.0.2:8080"),
        "local=[::ffff:127.0.0.1]:15001 original=10.78.0.2:8080"
    );
}

fn assert_one_line_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}
