//! Network namespaces made by a test (`ip netns`, deleted on drop) and the processes run in
//! them: the "pods" of the capture tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::{bounded_output, tool_available, BIN};

/// Root and the network tools; otherwise a printed reason (or a failure in CI).
pub fn netns_prerequisites() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !root {
        if std::env::var("OUTRIDER_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("root is required (OUTRIDER_REQUIRE_TOOLS=1): network namespaces and netfilter");
        }
        eprintln!("skipping: not root (network namespaces and netfilter need it)");
        return false;
    }
    ["ip", "iptables", "iptables-save", "iptables-restore"]
        .iter()
        .all(|tool| tool_available(tool))
}

/// A network namespace made for one test, with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "outrider-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip runs");
        assert!(status.success(), "ip netns add {name} failed");
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec <ns> <args>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(args);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec runs");
        bounded_output(child, &args.join(" "), Duration::from_secs(20))
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn outrider(&self, args: &[&str]) -> Output {
        let mut all = vec![BIN];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The nat table as `iptables-save` prints it, without its dated comment lines.
    pub fn nat(&self) -> String {
        let out = self.ok(&["iptables-save", "-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// `outrider capture-echo` in this namespace, once it listens; killed on drop.
    pub fn echo(&self, listen: &str) -> Killed {
        let mut child = self
            .command(&[BIN, "capture-echo", "--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("capture-echo starts");
        let expected = listen.split(',').count();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let guard = Killed(child);
        for _ in 0..expected {
            let line = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("capture-echo says it listens");
            assert!(line.starts_with("listening on "), "{line}");
        }
        guard
    }

    /// `outrider fetch http://<addr>/` in this namespace (behind `prefix`, e.g. setpriv):
    /// the echo's line without the peer.
    pub fn fetch(&self, prefix: &[&str], addr: &str) -> String {
        let url = format!("http://{addr}/");
        let mut args = prefix.to_vec();
        args.extend_from_slice(&[BIN, "fetch", "--timeout", "5s", &url]);
        let out = self.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fetch {url} in {} failed: {stdout}{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .trim()
            .strip_prefix("200 ")
            .unwrap_or(&stdout)
            .to_owned();
        match line.split_once(" peer=") {
            Some((head, _)) => head.to_owned(),
            None => line,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed (and reaped) on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// "Pods": namespaces joined by a bridge in a namespace of its own, pod `i` at
/// `10.<net>.0.<i+1>/24` on its `eth0`. Everything is deleted on drop.
pub struct Lan {
    pub pods: Vec<Netns>,
    net: u8,
    _switch: Netns,
}

impl Lan {
    pub fn new(net: u8, pods: usize) -> Lan {
        let switch = Netns::new();
        switch.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.ok(&["ip", "link", "set", "br0", "up"]);
        let mut made = Vec::new();
        for i in 0..pods {
            let pod = Netns::new();
            let port = format!("s{i}");
            switch.ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &pod.name,
            ]);
            switch.ok(&["ip", "link", "set", &port, "master", "br0"]);
            switch.ok(&["ip", "link", "set", &port, "up"]);
            let addr = format!("10.{net}.0.{}/24", i + 1);
            pod.ok(&["ip", "addr", "add", &addr, "dev", "eth0"]);
            pod.ok(&["ip", "link", "set", "eth0", "up"]);
            made.push(pod);
        }
        Lan {
            pods: made,
            net,
            _switch: switch,
        }
    }

    /// Pod `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.net, i + 1)
    }
}

impl Netns {
    /// A long-running process in this namespace, stderr to `log`; killed on drop.
    pub fn spawn(&self, args: &[&str], log: &std::path::Path) -> Killed {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("process starts in the namespace");
        Killed(child)
    }

    /// `curl -sS` in this namespace (behind `prefix`): (exit code, status, body, stderr).
    pub fn curl(&self, prefix: &[&str], url: &str) -> (i32, String, String, String) {
        let mut args = prefix.to_vec();
        args.extend_from_slice(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            url,
        ]);
        let out = self.run(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (
            out.status.code().unwrap_or(-1),
            status.to_owned(),
            body.to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
