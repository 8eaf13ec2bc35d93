//! The Prometheus endpoint (`skep daemon --metrics-addr`), scraped over HTTP from a real swarm
//! (three managers with it, a worker without) and parsed by the Prometheus project's own
//! OpenMetrics parser (the Python `prometheus_client`, installed by `.ci/run` into
//! `/opt/skep-it/py`): the values say what the swarm is (a term, one leader, the replicas
//! running, a certificate not expired, a secret delivered, an audit chain that verifies, RPCs
//! timed), no label carries an ID, the secret's value is nowhere in it, bad requests get
//! 400/404/405/431 and the server goes on, a node without the flag opens no port for it, and
//! the example alert file parses and names only metrics a real scrape has.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::harness::{
    Cluster, Node, Runtime, cannot_run, exec_service, require, running_task_ids, timeout, wait_for,
};

/// The port the managers serve metrics on (each on its own loopback address).
const METRICS_PORT: u16 = 9477;
/// Where `.ci/run` installs the Python packages the tests use.
const PY_DIR: &str = "/opt/skep-it/py";
/// The Prometheus project's OpenMetrics parser, as Prometheus-compatible tools read a scrape;
/// prints what it parsed as JSON for the assertions.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {"families": [], "samples": []}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out["families"].append({"name": fam.name, "type": fam.type, "unit": fam.unit})
    for s in fam.samples:
        out["samples"].append({"name": s.name, "labels": s.labels, "value": s.value})
json.dump(out, sys.stdout)
"#;

/// One parsed scrape.
struct Scrape {
    text: String,
    /// Family name → type.
    families: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of the sample `name` with all of `labels`, if there is one.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.2)
    }

    /// The sum of every sample named `name`.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.0 == name)
            .map(|s| s.2)
            .sum()
    }

    fn names(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.samples.iter().map(|s| s.0.clone()).collect();
        all.extend(self.families.keys().cloned());
        all
    }
}

fn metrics_addr(n: &Node) -> SocketAddr {
    let ip = n.addr().parse::<SocketAddr>().unwrap().ip();
    SocketAddr::new(ip, METRICS_PORT)
}

/// Sends `request` as is and reads the answer until the server closes the connection.
fn http(addr: SocketAddr, request: &[u8]) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    s.write_all(request)
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Parses `text` with the real parser.
fn parse(text: &str) -> Result<Scrape, String> {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-S", "-c", PARSER])
        .env("PYTHONPATH", PY_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running python3: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the OpenMetrics parser refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let families = v["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            (
                s["name"].as_str().unwrap().to_string(),
                labels,
                s["value"].as_f64().unwrap(),
            )
        })
        .collect();
    Ok(Scrape {
        text: text.to_string(),
        families,
        samples,
    })
}

/// `GET /metrics` on `addr`, checked and parsed.
fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let answer = http(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: skep\r\nconnection: close\r\n\r\n",
    )?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("not 200: {head}"));
    }
    if !head
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text; version=1.0.0")
    {
        return Err(format!("not OpenMetrics text: {head}"));
    }
    parse(body)
}

/// The TCP ports process `pid` listens on (its sockets, found in the netns's tables).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT, st 0A is LISTEN, the inode is field 9.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(default, rename = "for")]
    _for: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// The `skep_...` metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("skep_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn managers_serve_metrics_a_real_parser_reads_and_the_values_fit_the_swarm() {
    if !require(Runtime::Exec) {
        return;
    }
    if !std::path::Path::new(PY_DIR)
        .join("prometheus_client/openmetrics/parser.py")
        .exists()
    {
        cannot_run(format!(
            "the Python prometheus_client is not installed in {PY_DIR} (.ci/run installs it)"
        ));
        return;
    }
    let mut nodes: Vec<Node> = (1..=3).map(|i| Node::new(&format!("m{i}"), &[])).collect();
    for n in &mut nodes {
        let addr = metrics_addr(n).to_string();
        n.set_extra_args(&["--metrics-addr", &addr]);
    }
    nodes.push(Node::new("w1", &[]));
    let c = Cluster::form(nodes, 3, &[]);
    let m = c.first();
    let secret = "metrics-secret-value-q7w2e9r4";
    let out = m.cli_stdin(&["secret", "create", "mdb", "-"], secret);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    exec_service(
        m,
        "ticker",
        &["--replicas", "2", "--secret", "mdb"],
        "test -s /run/secrets/mdb && exec sleep 1000",
    );
    wait_for(timeout(), "2 tasks of ticker running", || {
        let ids = running_task_ids(m, "ticker");
        if ids.len() == 2 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    });
    let task_ids = running_task_ids(m, "ticker");
    let managers = c.managers();

    // The values settle as followers apply and the leader confirms its peers.
    let scrapes = wait_for(timeout(), "metrics that fit the swarm", || {
        let scrapes: Vec<Scrape> = managers
            .iter()
            .map(|n| scrape(metrics_addr(n)))
            .collect::<Result<_, _>>()?;
        let leaders: f64 = scrapes
            .iter()
            .map(|s| s.get("skep_raft_is_leader", &[]).unwrap_or(0.0))
            .sum();
        if leaders != 1.0 {
            return Err(format!("{leaders} leaders"));
        }
        for (n, s) in managers.iter().zip(&scrapes) {
            let v = |name: &str, labels: &[(&str, &str)]| {
                s.get(name, labels)
                    .ok_or_else(|| format!("{}: no {name}{labels:?}\n{}", n.name(), s.text))
            };
            let checks = [
                ("term ≥ 1", v("skep_raft_term", &[])? >= 1.0),
                ("a leader known", v("skep_raft_has_leader", &[])? == 1.0),
                ("3 voters", v("skep_raft_voters", &[])? == 3.0),
                (
                    "3 reachable voters",
                    v("skep_raft_reachable_voters", &[])? == 3.0,
                ),
                ("a log", v("skep_raft_log_entries", &[])? >= 1.0),
                (
                    "2 running",
                    v("skep_tasks", &[("state", "running")])? == 2.0,
                ),
                ("no failed", v("skep_tasks", &[("state", "failed")])? == 0.0),
                (
                    "a certificate not expired",
                    v("skep_node_certificate_expiry_seconds", &[])? > 0.0,
                ),
                ("audit records", v("skep_audit_records", &[])? >= 1.0),
                (
                    "a verified chain",
                    v("skep_audit_chain_verified", &[])? == 1.0,
                ),
                (
                    "no revocations",
                    v("skep_revoked_certificates", &[])? == 0.0,
                ),
                (
                    "applied entries timed",
                    v("skep_raft_apply_duration_seconds_count", &[])? >= 1.0,
                ),
                (
                    "RPCs timed",
                    s.sum("skep_rpc_duration_seconds_count") >= 1.0,
                ),
            ];
            if let Some((what, _)) = checks.iter().find(|c| !c.1) {
                return Err(format!("{}: not {what}", n.name()));
            }
        }
        let delivered: f64 = scrapes
            .iter()
            .map(|s| s.get("skep_secret_deliveries_total", &[]).unwrap_or(0.0))
            .sum();
        if delivered < 1.0 {
            return Err("no secret delivery counted".into());
        }
        let commits: f64 = scrapes
            .iter()
            .map(|s| s.sum("skep_raft_commit_duration_seconds_count"))
            .sum();
        if commits < 1.0 {
            return Err("no proposal timed".into());
        }
        Ok(scrapes)
    });

    let leader = scrapes
        .iter()
        .find(|s| s.get("skep_raft_is_leader", &[]) == Some(1.0))
        .unwrap();
    // The leader serves heartbeats: timed under their method's name.
    assert!(
        leader
            .get(
                "skep_rpc_duration_seconds_count",
                &[("method", "skep.v1.Dispatcher/Heartbeat")]
            )
            .is_some_and(|n| n >= 1.0),
        "{}",
        leader.text
    );
    // Types as Prometheus reads them.
    for (family, kind) in [
        ("skep_rpc_duration_seconds", "histogram"),
        ("skep_raft_commit_duration_seconds", "histogram"),
        ("skep_refusals", "counter"),
        ("skep_secret_deliveries", "counter"),
        ("skep_mesh_bytes", "counter"),
        ("skep_tasks", "gauge"),
        ("skep_node_certificate_expiry_seconds", "gauge"),
    ] {
        assert_eq!(
            leader.families.get(family).map(String::as_str),
            Some(kind),
            "{family}: {:?}",
            leader.families
        );
    }
    // No secret value, and no ID in any label: only fixed sets of values.
    let ids: Vec<String> = c.ids().into_iter().chain(task_ids).collect();
    for s in &scrapes {
        assert!(
            !s.text.contains(secret),
            "the secret's value is in a scrape"
        );
        for (name, labels, _) in &s.samples {
            for v in labels.values() {
                assert!(
                    !ids.iter().any(|id| v.contains(id.as_str())),
                    "{name} has an ID in a label: {v}"
                );
            }
        }
    }

    // Bad requests: answered, and the server goes on.
    let addr = metrics_addr(m);
    for (request, status) in [
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(), "400"),
        (b"POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc".to_vec(), "405"),
        (b"GET /../../etc/passwd HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(), "404"),
        (format!("GET /metrics HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(64 << 10)).into_bytes(), "431"),
    ] {
        let answer = http(addr, &request).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "expected {status}: {answer:?}"
        );
    }
    scrape(addr).expect("the endpoint still serves after bad requests");

    // A daemon without --metrics-addr listens on its node port only; one with it, on both.
    let worker = &c.workers()[0];
    let node_port = crate::harness::PORT;
    assert_eq!(
        listening_ports(worker.pid().unwrap()),
        BTreeSet::from([node_port]),
        "the worker (no --metrics-addr) listens on more than its node port"
    );
    assert_eq!(
        listening_ports(m.pid().unwrap()),
        BTreeSet::from([node_port, METRICS_PORT])
    );

    // The example alert file: Prometheus's rule-file shape, the alerts the docs promise, and
    // only metric names a real scrape has.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus/skep-alerts.yml"),
    )
    .unwrap();
    let rules: RuleFile = serde_saphyr::from_str(&text).expect("the alert file parses");
    let mut have: BTreeSet<String> = BTreeSet::new();
    for s in &scrapes {
        have.extend(s.names());
    }
    let mut alerts = Vec::new();
    for g in &rules.groups {
        assert!(!g.name.is_empty());
        for r in &g.rules {
            assert!(!r.expr.trim().is_empty(), "{}: no expression", r.alert);
            assert!(
                r.labels.contains_key("severity"),
                "{}: no severity",
                r.alert
            );
            assert!(
                r.annotations.contains_key("summary"),
                "{}: no summary",
                r.alert
            );
            let used = metric_names(&r.expr);
            assert!(!used.is_empty(), "{}: uses no skep metric", r.alert);
            for name in used {
                assert!(
                    have.contains(&name),
                    "{}: {name} is not in a scrape",
                    r.alert
                );
            }
            alerts.push(r.alert.clone());
        }
    }
    for needed in [
        "SkepNodeCertificateNearExpiry",
        "SkepNoRaftLeader",
        "SkepQuorumAtRisk",
        "SkepAuditChainUnverified",
    ] {
        assert!(
            alerts.iter().any(|a| a == needed),
            "no {needed} in {alerts:?}"
        );
    }
}

#[test]
fn a_metrics_address_beyond_loopback_is_warned_about() {
    // Port 0: any free port on every address, which is the exposure warned about.
    let n = Node::start_with("open", &["--metrics-addr", "0.0.0.0:0"]);
    let log = n.log();
    assert!(
        log.contains("serving metrics without authentication on a non-loopback address"),
        "{log}"
    );
}
