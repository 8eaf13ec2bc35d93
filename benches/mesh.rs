//! The routing mesh against a direct connection, in one run: requests per second and
//! latency of connect → one answer line → close.
//!
//! Three real daemons (127.0.98.1-3:2377; n1 manages). One exec task of a small static C
//! server (built with gcc, as the tests build it) runs on n1 and publishes 4100 → its port.
//! Each series makes `REQS` sequential requests:
//!
//! * `direct`: the same server started by the bench itself on 127.0.0.1 (no skep in the way);
//! * `mesh, local task`: through n1's published port (n1 runs the task);
//! * `mesh, remote task`: through n2's published port: n2 tunnels to n1 over mTLS.
//!
//! Then the same three for UDP: one client flow sends a datagram and waits for its echo,
//! `REQS` times (a second exec service publishing 4101/udp; one tunnel for the flow).
//!
//! Run: `cargo bench --bench mesh` (`SKEP_BENCH_REQS=N`, default 2000). Needs root (exec).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_for};

const REQS: usize = 2000;
const SERVER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
int main(int argc, char **argv) {
    const char *p = getenv("PORT");
    int s = socket(AF_INET, argc > 1 ? SOCK_DGRAM : SOCK_STREAM, 0), one = 1, c, n;
    struct sockaddr_in a, from; socklen_t fl; char buf[2048];
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(p ? atoi(p) : 80);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (argc > 1) {
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
        if (write(c, "hello from the task\n", 20) < 0) { }
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
    let n: usize = std::env::var("SKEP_BENCH_REQS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REQS);
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
    m.cli(&["swarm", "init", "--advertise-addr", &m.addr]);
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
    for addr in [direct, local, remote] {
        series(addr, 100); // warm-up
    }
    let d = series(direct, n);
    let l = series(local, n);
    let r = series(remote, n);
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
