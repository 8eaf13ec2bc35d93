//! A private network for a test: one network namespace per node, all joined by veth pairs to a
//! bridge that lives in a namespace of its own, so nothing of it is visible from the host or
//! from another test.
//!
//! ```text
//!  <prefix>-br:   br0 ── v1 ── v2 ── v3            (bridge side of each veth pair)
//!                        │     │     │
//!  <prefix>-n1:        eth0  (10.A.B.1/24, lo up)   a daemon runs here: `ip netns exec`
//!  <prefix>-n2:              eth0  (10.A.B.2/24)
//!  <prefix>-n3:                    eth0  (10.A.B.3/24)
//! ```
//!
//! The prefix holds the test process's ID and a counter, and the subnet `10.A.B.0/24` is
//! chosen from them too, so tests running at the same time never share a name or a subnet.
//! Faults: [`Net::link_down`] (the bridge side of a node's veth pair goes down: the node is
//! cut off at layer 2) and [`Net::partition`] (nftables rules inside the node's namespace
//! drop every packet to and from the other nodes). Dropping the [`Net`] deletes every
//! namespace, which takes the bridge, the veth pairs and the rules with it, also when the test
//! panicked. The unix socket of a daemon is a file, so the CLI reaches it from the host's
//! namespace.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// The nftables table a partition adds in a node's namespace.
const TABLE: &str = "skepfault";

/// A bridge and `n` node namespaces.
pub struct Net {
    prefix: String,
    subnet: [u8; 2],
    nodes: usize,
    namespaces: Vec<String>,
}

impl Net {
    /// Makes the namespaces, the bridge and a veth pair per node, with addresses, all up.
    /// Fails (never skips) when the test cannot: not root, or no `ip`/`nft`.
    pub fn new(nodes: usize) -> Net {
        require_tools();
        let pid = std::process::id();
        let k = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("skft-{pid}-{k}");
        let subnet = [
            u8::try_from(16 + pid % 200).unwrap(),
            u8::try_from((pid / 200 + k * 7) % 250).unwrap(),
        ];
        let mut net = Net {
            prefix,
            subnet,
            nodes,
            namespaces: Vec::new(),
        };
        let br = net.bridge_ns();
        net.add_ns(&br);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..nodes {
            let ns = net.ns(i);
            net.add_ns(&ns);
            let v = veth(i);
            ip(&[
                "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["-n", &br, "link", "set", &v, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &v, "up"]);
            let cidr = format!("{}/24", net.addr(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// The namespace of node `i` (0-based).
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{}", self.prefix, i + 1)
    }

    /// The address of node `i`: `10.A.B.(i+1)`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            self.subnet[0],
            self.subnet[1],
            u8::try_from(i + 1).unwrap(),
        )
    }

    /// The command that runs a program inside node `i`'s namespace (`ip netns exec` execs it,
    /// so the process ID is the program's).
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    /// Takes the bridge side of node `i`'s veth pair down: no packet reaches or leaves it.
    pub fn link_down(&self, i: usize) {
        ip(&["-n", &self.bridge_ns(), "link", "set", &veth(i), "down"]);
    }

    /// Brings node `i`'s link back up.
    pub fn link_up(&self, i: usize) {
        ip(&["-n", &self.bridge_ns(), "link", "set", &veth(i), "up"]);
    }

    /// Drops, inside node `i`'s namespace, every packet from or to the other nodes (nftables).
    pub fn partition(&self, i: usize) {
        let others: Vec<String> = (0..self.nodes)
            .filter(|&j| j != i)
            .map(|j| self.addr(j).to_string())
            .collect();
        let set = format!("{{ {} }}", others.join(", "));
        let ns = self.ns(i);
        nft(&ns, &format!("add table inet {TABLE}"));
        for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
            nft(
                &ns,
                &format!(
                    "add chain inet {TABLE} {chain} {{ type filter hook {hook} priority 0; policy accept; }}"
                ),
            );
            nft(
                &ns,
                &format!("add rule inet {TABLE} {chain} ip {dir} {set} drop"),
            );
        }
    }

    /// Removes node `i`'s partition rules.
    pub fn heal(&self, i: usize) {
        nft(&self.ns(i), &format!("delete table inet {TABLE}"));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("could not delete network namespace {ns}: {out:?}");
            }
        }
    }
}

fn veth(i: usize) -> String {
    format!("v{}", i + 1)
}

/// Panics with what is missing unless this process is root and has `ip` and `nft`.
fn require_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the fault-injection tests need root (network namespaces, veth pairs, nftables): run them as root"
    );
    for (tool, probe) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(probe)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "the fault-injection tests need `{tool}` (iproute2 / nftables) on PATH; it is missing or fails"
        );
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft(ns: &str, rule: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", rule])
        .output()
        .unwrap_or_else(|e| panic!("cannot run nft in {ns}: {e}"));
    assert!(
        out.status.success(),
        "`nft {rule}` in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
