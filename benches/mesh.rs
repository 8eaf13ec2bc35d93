//! The routing mesh against a direct connection, in one run: bulk throughput of one
//! connection, requests per second and latency of connect → one answer line → close, and UDP
//! round trips.
//!
//! Three real daemons (127.0.98.1-3:2377; n1 manages). Exec tasks of a small static C server
//! (built with gcc, as the tests build it) run on n1: an answering one publishing 4100, a UDP
//! echo publishing 4101/udp, a sink publishing 4102 (it reads a connection to its end and
//! answers the byte count). Each series goes three ways:
//!
//! * `direct`: the same server started by the bench itself on 127.0.0.1 (no skep in the way);
//! * `mesh, local task`: through n1's published port (n1 runs the task);
//! * `mesh, remote task`: through n2's published port: n2 tunnels to n1 over mTLS.
//!
//! * bulk: one connection sends `SKEP_BENCH_BULK_MB` MB (default 1000) to the sink and waits
//!   for its count; GB/s, best of `SKEP_BENCH_BULK_ROUNDS` (default 3) interleaved rounds;
//! * connect-answer-close: `SKEP_BENCH_REQS` (default 2000) sequential requests;
//! * UDP: one client flow sends a datagram and waits for its echo, `REQS` times (one tunnel
//!   for the flow).
//!
//! It also prints what protects the bytes between nodes, as n2 logged it when it connected to
//! n1 (TLS version and cipher suite), and how many mTLS connections n2 opened to n1 for all
//! the tunnels of the run (one: tunnels are HTTP/2 streams of the nodes' one connection).
//!
//! Beside them, the least a relay of each shape costs here ([`ceiling`]): relays with nothing
//! of skep in them, run by the bench itself in front of the direct sink and server.
//!
//! Run: `cargo bench --bench mesh`. Needs root (exec).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "mesh/ceiling.rs"]
mod ceiling;
mod common;

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, strip_ansi, wait_for};

const REQS: usize = 2000;
/// Megabytes one bulk connection sends.
const BULK_MB: usize = 1000;
/// Bulk rounds (the best of them counts: the machine is shared).
const BULK_ROUNDS: usize = 3;
const SERVER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
int main(int argc, char **argv) {
    const char *p = getenv("PORT");
    int udp = argc > 1 && strcmp(argv[1], "udp") == 0;
    int sink = argc > 1 && strcmp(argv[1], "sink") == 0;
    int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0), one = 1, c, n;
    struct sockaddr_in a, from; socklen_t fl; char buf[2048];
    static char big[1 << 20];
    long long total; ssize_t r;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(p ? atoi(p) : 80);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (udp) {
        /* udp: echo every datagram */
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 2;
        for (;;) {
            fl = sizeof from;
            n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
            if (n >= 0 && sendto(s, buf, n, 0, (struct sockaddr *)&from, fl) < 0) { }
        }
    }
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 512) != 0) return 2;
    for (;;) {
        c = accept(s, 0, 0);
        if (c < 0) continue;
        if (sink) {
            /* read to the end, answer the count */
            total = 0;
            while ((r = read(c, big, sizeof big)) > 0) total += r;
            n = snprintf(buf, sizeof buf, "%lld\n", total);
            if (write(c, buf, n) < 0) { }
        } else if (write(c, "hello from the task\n", 20) < 0) { }
        close(c);
    }
}
"#;

fn ask(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut out = String::new();
    s.read_to_string(&mut out).is_ok() && out.starts_with("hello")
}

/// Sends `bytes` over one connection to the sink at `addr`, then waits for its count: GB/s.
fn try_bulk(addr: SocketAddr, bytes: usize) -> Result<f64, String> {
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .map_err(|e| format!("sending to {addr}: {e}"))?;
        left -= n;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("reading the count from {addr}: {e}"))?;
    if out.trim() != bytes.to_string() {
        return Err(format!(
            "the sink behind {addr} counted {out:?}, not the {bytes} bytes sent"
        ));
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1e9)
}

fn bulk(addr: SocketAddr, bytes: usize) -> f64 {
    try_bulk(addr, bytes).unwrap()
}

/// The value of `field=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()
}

/// What n2 logged of its mTLS connections to other nodes for tunnels: how many it opened,
/// and the TLS version and cipher suite of the last.
fn peer_connections(log: &str) -> (usize, String) {
    let lines: Vec<String> = strip_ansi(log)
        .lines()
        .filter(|l| l.contains("routing mesh: mTLS connection to a peer node"))
        .map(str::to_string)
        .collect();
    let what = lines.last().map_or_else(
        || "not logged by this build".to_string(),
        |l| {
            format!(
                "{}, {}",
                field(l, "tls_version").unwrap_or("?"),
                field(l, "cipher_suite").unwrap_or("?")
            )
        },
    );
    (lines.len(), what)
}

/// A UDP client flow to `addr`.
fn udp_flow(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// One datagram and its echo (a lost one is sent again, up to 5 times).
fn echo(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        if s.send(b"ping").is_err() {
            return false;
        }
        if let Ok(n) = s.recv(&mut buf) {
            return &buf[..n] == b"ping";
        }
    }
    false
}

/// (datagrams per second, mean round trip in µs) of `n` sequential echoes on one flow.
fn udp_series(s: &UdpSocket, n: usize) -> (f64, f64) {
    let start = Instant::now();
    for _ in 0..n {
        assert!(echo(s), "an echo was lost five times");
    }
    let t = start.elapsed().as_secs_f64();
    (n as f64 / t, t / n as f64 * 1e6)
}

/// (requests per second, mean latency in µs) of `n` sequential requests.
fn series(addr: SocketAddr, n: usize) -> (f64, f64) {
    let start = Instant::now();
    for _ in 0..n {
        assert!(ask(addr), "a request through {addr} failed");
    }
    let t = start.elapsed().as_secs_f64();
    (n as f64 / t, t / n as f64 * 1e6)
}

fn main() {
    let env = |name: &str, default: usize| -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = env("SKEP_BENCH_REQS", REQS);
    let bulk_bytes = env("SKEP_BENCH_BULK_MB", BULK_MB) * 1_000_000;
    let rounds = env("SKEP_BENCH_BULK_ROUNDS", BULK_ROUNDS).max(1);
    let root = tempfile::tempdir().unwrap();
    let prog = root.path().join("server");
    std::fs::write(root.path().join("server.c"), SERVER).unwrap();
    let ok = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&prog)
        .arg(root.path().join("server.c"))
        .status()
        .unwrap();
    assert!(ok.success(), "gcc failed");
    let daemons: Vec<Daemon> = (1..=3)
        .map(|i| Daemon::start(root.path(), &format!("n{i}"), &format!("127.0.98.{i}:2377")))
        .collect();
    let c = Cluster { daemons, root };
    let m = c.manager();
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "worker"]).trim().to_string();
    for d in &c.daemons[1..] {
        d.cli(&["swarm", "join", "--token", &token, &m.addr]);
    }
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "bench",
        "--constraint",
        "node.hostname==n1",
        "--publish",
        "4100:80",
        "--",
        prog.to_str().unwrap(),
    ]);
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "bench-udp",
        "--constraint",
        "node.hostname==n1",
        "--publish",
        "4101:81/udp",
        "--",
        prog.to_str().unwrap(),
        "udp",
    ]);
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "bench-sink",
        "--constraint",
        "node.hostname==n1",
        "--publish",
        "4102:82",
        "--",
        prog.to_str().unwrap(),
        "sink",
    ]);
    let local: SocketAddr = "127.0.98.1:4100".parse().unwrap();
    let remote: SocketAddr = "127.0.98.2:4100".parse().unwrap();
    wait_for(
        Duration::from_secs(60),
        "the mesh to answer on n1 and n2",
        || {
            if ask(local) && ask(remote) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    // The baseline: the same server, run directly.
    let mut direct_server = Command::new(&prog).env("PORT", "4199").spawn().unwrap();
    let direct: SocketAddr = "127.0.0.1:4199".parse().unwrap();
    wait_for(Duration::from_secs(10), "the direct server", || {
        if ask(direct) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    // Bulk: the sink, direct and through the mesh.
    let mut direct_sink = Command::new(&prog)
        .arg("sink")
        .env("PORT", "4197")
        .spawn()
        .unwrap();
    let direct_sink_addr: SocketAddr = "127.0.0.1:4197".parse().unwrap();
    // The least a relay costs, beside them (the same sink and server, this process's relays).
    let relays = ceiling::start(direct_sink_addr, direct);
    let sinks: [SocketAddr; 6] = [
        direct_sink_addr,
        "127.0.98.1:4102".parse().unwrap(),
        "127.0.98.2:4102".parse().unwrap(),
        relays.one_splice,
        relays.two_splices,
        relays.tls_pair,
    ];
    for s in sinks {
        wait_for(Duration::from_secs(60), "a sink to count", || {
            try_bulk(s, 1000).map(|_| ())
        });
        bulk(s, bulk_bytes.min(64_000_000)); // warm-up
    }
    let mut best = [0f64; 6];
    for _ in 0..rounds {
        for (b, s) in best.iter_mut().zip(sinks) {
            *b = b.max(bulk(s, bulk_bytes));
        }
    }
    let _ = direct_sink.kill();
    let _ = direct_sink.wait();

    for addr in [
        direct,
        local,
        remote,
        relays.one_splice_answer,
        relays.two_splices_answer,
    ] {
        series(addr, 100); // warm-up
    }
    let d = series(direct, n);
    let l = series(local, n);
    let r = series(remote, n);
    let s1 = series(relays.one_splice_answer, n);
    let s2 = series(relays.two_splices_answer, n);
    let _ = direct_server.kill();
    let _ = direct_server.wait();

    let mut direct_udp = Command::new(&prog)
        .arg("udp")
        .env("PORT", "4198")
        .spawn()
        .unwrap();
    let flows: Vec<UdpSocket> = ["127.0.0.1:4198", "127.0.98.1:4101", "127.0.98.2:4101"]
        .iter()
        .map(|a| udp_flow(a.parse().unwrap()))
        .collect();
    for f in &flows {
        wait_for(Duration::from_secs(60), "a UDP echo", || {
            if echo(f) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        });
        udp_series(f, 100); // warm-up
    }
    let ud = udp_series(&flows[0], n);
    let ul = udp_series(&flows[1], n);
    let ur = udp_series(&flows[2], n);
    let _ = direct_udp.kill();
    let _ = direct_udp.wait();
    let (connections, tls) =
        peer_connections(&std::fs::read_to_string(c.daemons[1].log_path()).unwrap_or_default());
    println!(
        "between nodes: mTLS (both nodes' certificates of the swarm CA checked, the peer's node ID pinned), {tls}"
    );
    println!(
        "  mTLS connections n2 opened to other nodes for all tunnels of the run: {connections}"
    );
    println!(
        "routing mesh, bulk: one connection sends {} MB to a sink, best of {rounds}",
        bulk_bytes / 1_000_000
    );
    println!("  direct to the task      {:>8.2} GB/s", best[0]);
    println!(
        "  mesh, local task        {:>8.2} GB/s   ({:.2} of direct)",
        best[1],
        best[1] / best[0]
    );
    println!(
        "  mesh, remote task (mTLS) {:>7.2} GB/s   ({:.2} of direct)",
        best[2],
        best[2] / best[0]
    );
    println!("  the least a relay costs: relays with nothing of skep in them, in this process");
    for (what, gbs) in [
        ("one splice relay (same node's shape)", best[3]),
        ("two splice relays (three TCP connections)", best[4]),
        ("TCP, mutual TLS 1.3, TCP (other node's shape)", best[5]),
    ] {
        println!(
            "    {what:<50} {gbs:>6.2} GB/s   ({:.2} of direct)",
            gbs / best[0]
        );
    }
    println!(
        "    (between the bare entry and exit: {})",
        ceiling::NEGOTIATED
            .get()
            .map_or("no connection", String::as_str)
    );
    println!("routing mesh, {n} sequential connect-answer-close requests per series");
    println!(
        "  direct to the task      {:>8.0} req/s   {:>7.1} us",
        d.0, d.1
    );
    println!(
        "  mesh, local task        {:>8.0} req/s   {:>7.1} us   ({:.2} of direct, +{:.1} us)",
        l.0,
        l.1,
        l.0 / d.0,
        l.1 - d.1
    );
    println!(
        "  mesh, remote task (mTLS) {:>7.0} req/s   {:>7.1} us   ({:.2} of direct, +{:.1} us)",
        r.0,
        r.1,
        r.0 / d.0,
        r.1 - d.1
    );
    println!("  the least a relay costs: relays with nothing of skep in them, in this process");
    for (what, (rps, us)) in [
        ("one splice relay (same node's shape)", s1),
        ("two splice relays, no TLS (≈ other node's shape)", s2),
    ] {
        println!(
            "    {what:<50} {rps:>6.0} req/s {us:>7.1} us   ({:.2} of direct, +{:.1} us)",
            rps / d.0,
            us - d.1
        );
    }
    println!("UDP, {n} sequential datagram-echo round trips on one flow per series");
    println!(
        "  direct to the task      {:>8.0} rt/s    {:>7.1} us",
        ud.0, ud.1
    );
    println!(
        "  mesh, local task        {:>8.0} rt/s    {:>7.1} us   ({:.2} of direct, +{:.1} us)",
        ul.0,
        ul.1,
        ul.0 / ud.0,
        ul.1 - ud.1
    );
    println!(
        "  mesh, remote task (mTLS) {:>7.0} rt/s    {:>7.1} us   ({:.2} of direct, +{:.1} us)",
        ur.0,
        ur.1,
        ur.0 / ud.0,
        ur.1 - ud.1
    );
}
