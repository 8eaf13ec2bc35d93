//! Fault injection: three real manager daemons, each in its own network namespace (see
//! [`crate::netns`]), a recording client, and faults at random moments from a printed seed.
//!
//! Each test is one kind of fault, repeated for a number of rounds:
//!
//! | test | the fault of a round |
//! |---|---|
//! | `kill_and_restart` | a manager (the leader half the time) is killed with SIGKILL, then restarted |
//! | `pause_and_resume` | a manager (the leader half the time) gets SIGSTOP, later SIGCONT |
//! | `leader_isolated` | the leader's link goes down (bridge side of its veth pair), later up |
//! | `minority_partition` | a random manager is cut off by nftables drops inside its namespace, later healed |
//! | `lagging_manager_large_entries` | a follower is killed, ten 500 KiB secrets are created, it is restarted and must catch up |
//!
//! **A round**: three client threads run operations (`skep --host unix://...`, which works
//! across namespaces) while the fault happens at a random moment: two against any running
//! manager (also a paused or cut-off one, to see what it answers when it comes back), one
//! against managers no fault touches at the time (so writes go on during the fault); then
//! everything is healed, the clients stop, and the round is checked. The operations:
//! `secret create k<N> -` with a value unique to the operation, and `secret ls --format json`.
//! Each is recorded with its start and end time and its outcome: `ok` (exit 0), `failed` (an
//! error exit) or `unknown` (no answer within 12 s: the CLI is killed). A failed or unknown
//! create may or may not have taken effect, and may take effect later (the daemon retries a
//! proposal for 15 s): both are indeterminate. A read that did not succeed constrains nothing.
//!
//! A fault on a follower lasts a random 1-4 s (kill), 3-9 s (pause) or 5-10 s (partition). A
//! fault that takes out the leader (the leader is the one a majority of `node ls` names) lasts
//! until the two others agree on a new leader, then a random 0.5-3 s more, while the old one
//! may still answer the clients.
//!
//! **Checked during the fault**: 0. *Failover*: when the leader is out, the two others agree
//! on a new leader (their `node ls`) within 15 s (issue 13 asks for 2 s).
//!
//! **Checked after each round** (all checks run, and the round fails listing every check
//! that did not hold):
//! 1. *One leader*: within 30 s every manager answers `node ls`, lists the three managers
//!    Ready, exactly one of them Leader, and all name the same one (no zombie leader).
//! 2. *Convergence*: within 30 s every manager's `secret ls --format json` is the same
//!    (IDs, names, times, digests) and holds every acknowledged create. These final listings
//!    join the history as reads.
//! 3. *No acknowledged write lost*: every `ok` create is listed, with its value's digest, by
//!    every manager.
//! 4. *No value from nowhere*: every listed `k*` secret was created by an operation of the
//!    test, with that operation's digest.
//! 5. *None applied twice*: the audit chain holds exactly one `secret.create` record per
//!    listed secret, and none for a secret that is not listed.
//! 6. *The audit chain*: `skep audit verify` passes on every manager, and within 30 s all of
//!    them report the same head (record count, range and last hash).
//! 7. *Linearizability of the history* (whole test so far), for the model "a grow-only set of
//!    (name, digest)": every read that succeeded must be explained by one total order of the
//!    operations that respects real time (an operation that ended before another began comes
//!    first) in which each read returns exactly the creates ordered before it. Ok creates
//!    take effect within their interval; indeterminate ones take effect at some point after
//!    they began, or never if no read shows them. With unique names this is decided exactly
//!    and in O(n log n): the reads' results must form a chain under inclusion, which fixes the
//!    order as blocks (creates first seen at level j, then the reads of level j, ...; ok
//!    creates never read come last), and an earliest-point greedy pass over the blocks finds
//!    whether every operation fits in its interval. Stale reads (a read missing a create that
//!    was acknowledged before the read began) are also listed one by one, as they are the
//!    likeliest way to fail.
//!
//! Not checked here: entitlement of secret delivery (no workers or tasks run), full disks,
//! torn writes, deleted log files, catch-up by snapshot.
//!
//! **Seeds**: each test prints `seed N` at its start (shown when it fails); set
//! `SKEP_FAULT_SEED=N` to replay the same fault choices and delays (operation timing still
//! varies). **Rounds**: 2 per test in the normal `cargo test` (the lagging test: 1);
//! `SKEP_FAULT_ROUNDS=50` for a soak. A test stops at its first failing round, unless
//! `SKEP_FAULT_KEEP_GOING=1`: then it reports each failing round, checks the next rounds'
//! reads afresh (every create is kept, and the last converged listings), and fails at the
//! end. The tests need root, `ip` and `nft`, and fail (never skip) without them. The
//! `history_check_*` tests check the history checker itself on small made-up histories.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::harness::{Cluster, Net, Node, PORT, json_lines, skep_bin, timeout, try_wait_for};

const MANAGERS: usize = 3;
/// Clients that pick any running manager (also a paused or cut-off one: their reads show
/// what such a manager answers when it comes back) ...
const CLIENTS: usize = 2;
/// ... and clients that pick only managers no fault touches, so writes go on meanwhile.
const HEALTHY_CLIENTS: usize = 1;
/// An operation that has not answered by then is killed and recorded as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(12);
/// How long the other managers may take to agree on a new leader when the leader is out
/// (issue 13 asks for 2 s; today it takes about 5 s).
const FAILOVER: Duration = Duration::from_secs(15);
/// The largest secret value the daemon takes.
const LARGE: usize = 500 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillRestart,
    PauseResume,
    LeaderIsolated,
    MinorityPartition,
    LaggingLarge,
}

#[test]
fn kill_and_restart() {
    run("kill_and_restart", Fault::KillRestart, 2);
}

#[test]
fn pause_and_resume() {
    run("pause_and_resume", Fault::PauseResume, 2);
}

#[test]
fn leader_isolated() {
    run("leader_isolated", Fault::LeaderIsolated, 2);
}

#[test]
fn minority_partition() {
    run("minority_partition", Fault::MinorityPartition, 2);
}

#[test]
fn lagging_manager_large_entries() {
    run("lagging_manager_large_entries", Fault::LaggingLarge, 1);
}

// ------------------------------------------------------------------ the history

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Unknown,
}

#[derive(Clone, Debug)]
enum Op {
    /// `secret create <name>` with a value of this digest.
    Create { name: String, digest: String },
    /// `secret ls`: name → digest of the `k*` secrets listed, when it succeeded.
    Read { result: BTreeMap<String, String> },
}

#[derive(Clone, Debug)]
struct Event {
    /// Who ran it: `c1`, `c2`, `c3` (clients; `c3` avoids faulty managers), `nemesis`,
    /// `check`.
    by: String,
    /// The manager it went to (`m1`..).
    node: String,
    /// Microseconds since the test began.
    start: u64,
    end: u64,
    outcome: Outcome,
    op: Op,
    /// The error text of a failed operation.
    error: String,
}

impl Event {
    fn describe(&self) -> String {
        let what = match &self.op {
            Op::Create { name, .. } => format!("create {name}"),
            Op::Read { result } => format!("read of {} secrets", result.len()),
        };
        let error = if self.error.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.error.chars().take(160).collect::<String>())
        };
        format!(
            "{what} by {} on {} [{:.3}s..{}] {:?}{error}",
            self.by,
            self.node,
            secs(self.start),
            if self.end == u64::MAX {
                "?".to_string()
            } else {
                format!("{:.3}s", secs(self.end))
            },
            self.outcome
        )
    }
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

struct History {
    t0: Instant,
    events: Mutex<Vec<Event>>,
    next_name: AtomicUsize,
}

impl History {
    fn now(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap()
    }
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }
    fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

/// What a CLI run gave.
struct Ran {
    outcome: Outcome,
    stdout: String,
    stderr: String,
}

/// Runs `skep --host <host> <args>`, feeding `stdin`; kills it after `within` (unknown).
fn cli(host: &str, args: &[&str], stdin: Option<Vec<u8>>, within: Duration) -> Ran {
    let mut child = Command::new(skep_bin())
        .arg("--host")
        .arg(host)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the skep CLI");
    let feeder = stdin.zip(child.stdin.take()).map(|(input, mut pipe)| {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        })
    });
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let text = |h: JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap()).into_owned();
    let (stdout, stderr) = (text(out), text(err));
    let outcome = match status {
        Some(s) if s.success() => Outcome::Ok,
        Some(_) => Outcome::Failed,
        None => Outcome::Unknown,
    };
    Ran {
        outcome,
        stdout,
        stderr,
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// The test's secrets (`k*`) in a `secret ls --format json` output: name → digest.
fn parse_listing(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        let name = v["Name"].as_str().unwrap_or_default().to_string();
        if name.starts_with('k') {
            out.insert(name, v["Digest"].as_str().unwrap_or_default().to_string());
        }
    }
    Ok(out)
}

/// Creates a new secret through `host`, recorded. `size`: the value's length (at least the
/// unique prefix's).
fn create(hist: &History, by: &str, node: &str, host: &str, tag: u64, size: usize) -> Outcome {
    let n = hist.next_name.fetch_add(1, Ordering::SeqCst);
    let name = format!("k{n}");
    let mut value = format!("{name}-{tag:016x}-").into_bytes();
    if value.len() < size {
        value.resize(size, b'x');
    }
    let digest = sha256_hex(&value);
    let start = hist.now();
    let ran = cli(
        host,
        &["secret", "create", &name, "-"],
        Some(value),
        OP_TIMEOUT,
    );
    let end = hist.now();
    hist.push(Event {
        by: by.to_string(),
        node: node.to_string(),
        start,
        end,
        outcome: ran.outcome,
        op: Op::Create { name, digest },
        error: ran.stderr.trim().to_string(),
    });
    ran.outcome
}

/// Lists the secrets through `host`, recorded; the listing if it succeeded.
fn read(
    hist: &History,
    by: &str,
    node: &str,
    host: &str,
) -> Result<(BTreeMap<String, String>, String), String> {
    let start = hist.now();
    let ran = cli(
        host,
        &["secret", "ls", "--format", "json"],
        None,
        OP_TIMEOUT,
    );
    let end = hist.now();
    let parsed = match ran.outcome {
        Outcome::Ok => parse_listing(&ran.stdout),
        o => Err(format!("{o:?}: {}", ran.stderr.trim())),
    };
    let (outcome, result, error) = match &parsed {
        Ok(r) => (Outcome::Ok, r.clone(), String::new()),
        Err(e) => (
            if ran.outcome == Outcome::Unknown {
                Outcome::Unknown
            } else {
                Outcome::Failed
            },
            BTreeMap::new(),
            e.clone(),
        ),
    };
    hist.push(Event {
        by: by.to_string(),
        node: node.to_string(),
        start,
        end,
        outcome,
        op: Op::Read { result },
        error,
    });
    parsed.map(|r| (r, ran.stdout))
}

// ------------------------------------------------------------------ the test

struct Suite {
    name: &'static str,
    // Declared before `net`: the daemons die before their namespaces go.
    cluster: Cluster,
    net: Net,
    hosts: Vec<String>,
    names: Vec<String>,
    /// Whether each manager's process runs (killed ones are not picked by the clients).
    running: Arc<Vec<AtomicBool>>,
    /// Whether no fault touches each manager now.
    healthy: Arc<Vec<AtomicBool>>,
    hist: Arc<History>,
    /// When the last pass of the convergence check began.
    last_check: Mutex<u64>,
    /// Failures seen while the fault was on (no failover), checked with the round.
    pending: Mutex<Vec<String>>,
    /// Secrets already reported as applied twice (not reported again in later rounds).
    twice: Mutex<BTreeSet<String>>,
}

fn rounds(default: usize) -> usize {
    std::env::var("SKEP_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    match std::env::var("SKEP_FAULT_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SKEP_FAULT_SEED={s:?} is not a number")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (t as u64) ^ (u64::from(std::process::id()) << 32)
        }
    }
}

fn run(name: &'static str, fault: Fault, default_rounds: usize) {
    let seed = seed();
    let rounds = rounds(default_rounds);
    eprintln!("faults::{name}: seed {seed} ({rounds} rounds; replay with SKEP_FAULT_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let net = Net::new(MANAGERS);
    let nodes: Vec<Node> = (0..MANAGERS)
        .map(|i| {
            let wrapper = net.wrapper(i);
            let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
            Node::new(&format!("m{}", i + 1), &[])
                .at((net.addr(i), PORT).into())
                .wrapped(&wrapper)
        })
        .collect();
    let cluster = Cluster::form(nodes, MANAGERS, &[]);
    let hosts = cluster.managers().iter().map(Node::host).collect();
    let names = cluster
        .managers()
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    let mut suite = Suite {
        name,
        cluster,
        net,
        hosts,
        names,
        running: Arc::new((0..MANAGERS).map(|_| AtomicBool::new(true)).collect()),
        healthy: Arc::new((0..MANAGERS).map(|_| AtomicBool::new(true)).collect()),
        hist: Arc::new(History {
            t0: Instant::now(),
            events: Mutex::new(Vec::new()),
            next_name: AtomicUsize::new(0),
        }),
        last_check: Mutex::new(0),
        twice: Mutex::new(BTreeSet::new()),
        pending: Mutex::new(Vec::new()),
    };
    let keep_going = std::env::var_os("SKEP_FAULT_KEEP_GOING").is_some();
    let mut failed = Vec::new();
    for round in 1..=rounds {
        let failures = suite.round(round, fault, &mut rng);
        if failures.is_empty() {
            continue;
        }
        let report = format!(
            "faults::{name} (seed {seed}, replay with SKEP_FAULT_SEED={seed}) round {round} of {rounds}: {} check(s) failed:\n- {}",
            failures.len(),
            failures.join("\n- ")
        );
        if !keep_going {
            panic!("{report}");
        }
        eprintln!("{report}");
        failed.push(round);
        suite.forget_reads();
    }
    assert!(
        failed.is_empty(),
        "faults::{name} (seed {seed}): rounds {failed:?} of {rounds} failed (reports above)"
    );
    eprintln!("faults::{name}: seed {seed}: {rounds} rounds passed");
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

impl Suite {
    fn log(&self, what: &str) {
        eprintln!(
            "faults::{} [{:.3}s] {what}",
            self.name,
            secs(self.hist.now())
        );
    }

    /// After a failed round (with `SKEP_FAULT_KEEP_GOING`): keeps every create but only the
    /// last converged listings among the reads, so the next rounds are checked on their own
    /// reads without repeating this round's violations.
    fn forget_reads(&self) {
        let from = *self.last_check.lock().unwrap();
        self.hist
            .events
            .lock()
            .unwrap()
            .retain(|e| matches!(e.op, Op::Create { .. }) || (e.by == "check" && e.start >= from));
    }

    fn round(&mut self, round: usize, fault: Fault, rng: &mut StdRng) -> Vec<String> {
        let before = self.hist.snapshot().len();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<JoinHandle<()>> = (0..CLIENTS + HEALTHY_CLIENTS)
            .map(|c| {
                let stop = stop.clone();
                let hist = self.hist.clone();
                let running = self.running.clone();
                let healthy = self.healthy.clone();
                let picky = c >= CLIENTS;
                let hosts = self.hosts.clone();
                let names = self.names.clone();
                let mut crng = StdRng::seed_from_u64(rng.random());
                std::thread::spawn(move || {
                    let by = format!("c{}", c + 1);
                    while !stop.load(Ordering::SeqCst) {
                        let live: Vec<usize> = (0..hosts.len())
                            .filter(|&i| running[i].load(Ordering::SeqCst))
                            .filter(|&i| !picky || healthy[i].load(Ordering::SeqCst))
                            .collect();
                        if live.is_empty() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        let i = live[crng.random_range(0..live.len())];
                        if crng.random_bool(0.5) {
                            create(&hist, &by, &names[i], &hosts[i], crng.random(), 0);
                        } else {
                            let _ = read(&hist, &by, &names[i], &hosts[i]);
                        }
                    }
                })
            })
            .collect();

        // The fault, at a random moment.
        std::thread::sleep(ms(rng, 300, 1500));
        self.inject(round, fault, rng);
        std::thread::sleep(ms(rng, 500, 1500));
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("a client thread panicked");
        }
        let events = self.hist.snapshot();
        let count =
            |pred: &dyn Fn(&Event) -> bool| events[before..].iter().filter(|e| pred(e)).count();
        self.log(&format!(
            "round {round}: {} creates ({} ok, {} failed, {} unknown), {} reads ({} ok)",
            count(&|e| matches!(e.op, Op::Create { .. })),
            count(&|e| matches!(e.op, Op::Create { .. }) && e.outcome == Outcome::Ok),
            count(&|e| matches!(e.op, Op::Create { .. }) && e.outcome == Outcome::Failed),
            count(&|e| matches!(e.op, Op::Create { .. }) && e.outcome == Outcome::Unknown),
            count(&|e| matches!(e.op, Op::Read { .. })),
            count(&|e| matches!(e.op, Op::Read { .. }) && e.outcome == Outcome::Ok),
        ));
        self.check(round)
    }

    /// The leader's index, as a majority of the managers sees it.
    fn leader(&self) -> Option<usize> {
        let seen: Vec<usize> = (0..MANAGERS)
            .filter(|&i| self.running[i].load(Ordering::SeqCst))
            .filter_map(|i| self.leader_seen_by(i))
            .collect();
        (0..MANAGERS).find(|&l| seen.iter().filter(|&&s| s == l).count() * 2 > MANAGERS)
    }

    /// The leader's index, as manager `i` sees it.
    fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let ran = cli(
            &self.hosts[i],
            &["node", "ls", "--format", "json"],
            None,
            OP_TIMEOUT,
        );
        if ran.outcome != Outcome::Ok {
            return None;
        }
        let nodes = json_lines(&ran.stdout);
        let id = crate::harness::leader_id(&nodes)?;
        self.cluster.nodes.iter().position(|n| n.id() == id)
    }

    /// Logs who the managers other than `v` take for the leader (before a fault on `v` is
    /// healed: whether the majority moved on without it).
    fn log_majority_leader(&self, round: usize, v: usize) {
        let seen: Vec<String> = (0..MANAGERS)
            .filter(|&i| i != v)
            .map(|i| {
                let l = self
                    .leader_seen_by(i)
                    .map_or_else(|| "none".to_string(), |l| self.names[l].clone());
                format!("{} says {l}", self.names[i])
            })
            .collect();
        self.log(&format!(
            "round {round}: before healing, {}",
            seen.join(", ")
        ));
    }

    /// A manager chosen at random, or the leader with probability `p_leader`.
    /// Whether it is the leader (as a majority sees it; waits for one if need be).
    fn victim(&self, rng: &mut StdRng, p_leader: f64) -> (usize, bool) {
        let any = rng.random_range(0..MANAGERS);
        let leader = try_wait_for(timeout(), "a leader a majority agrees on", || {
            self.leader().ok_or_else(|| "none".to_string())
        })
        .ok();
        let v = if rng.random_bool(p_leader) {
            leader.unwrap_or(any)
        } else {
            any
        };
        (v, Some(v) == leader)
    }

    /// While manager `v`, the leader when the fault began, is out: waits until the others
    /// agree on a new leader, and records a failure if they do not within [`FAILOVER`].
    fn await_failover(&self, round: usize, v: usize, since: Instant) {
        let others: Vec<usize> = (0..MANAGERS).filter(|&i| i != v).collect();
        let what = format!(
            "the managers other than {} to agree on a new leader",
            self.names[v]
        );
        let agreed = try_wait_for(FAILOVER, &what, || {
            let seen: Vec<Option<usize>> = others.iter().map(|&i| self.leader_seen_by(i)).collect();
            match seen[0] {
                Some(l) if l != v && seen.iter().all(|s| *s == Some(l)) => Ok(l),
                _ => Err(others
                    .iter()
                    .zip(&seen)
                    .map(|(&i, l)| {
                        format!(
                            "{} says {}",
                            self.names[i],
                            l.map_or("none", |l| self.names[l].as_str())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")),
            }
        });
        match agreed {
            Ok(l) => self.log(&format!(
                "round {round}: {} leads, {:.1}s after the fault on {}",
                self.names[l],
                since.elapsed().as_secs_f64(),
                self.names[v]
            )),
            Err(e) => {
                self.log(&format!("round {round}: no failover: {e}"));
                self.pending.lock().unwrap().push(format!(
                    "failover while the leader {} was out: {e}",
                    self.names[v]
                ));
            }
        }
    }

    /// The fault's duration: with the leader out, until a new one leads and then a random
    /// while more (the old one may answer clients meanwhile); otherwise a random while.
    fn hold(&self, round: usize, rng: &mut StdRng, v: usize, was_leader: bool, short: (u64, u64)) {
        let since = Instant::now();
        if was_leader {
            std::thread::sleep(ms(rng, 500, 1500));
            self.await_failover(round, v, since);
            std::thread::sleep(ms(rng, 500, 3000));
        } else {
            std::thread::sleep(ms(rng, short.0, short.1));
        }
        self.log_majority_leader(round, v);
    }

    fn signal(&self, i: usize, sig: Signal) {
        let pid = self.cluster.nodes[i].pid().expect("the daemon runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig)
            .unwrap_or_else(|e| panic!("{sig:?} to {}: {e}", self.names[i]));
    }

    fn restart(&mut self, i: usize) {
        self.cluster.nodes[i].restart();
        self.running[i].store(true, Ordering::SeqCst);
    }

    fn set_healthy(&self, i: usize, yes: bool) {
        self.healthy[i].store(yes, Ordering::SeqCst);
    }

    fn inject(&mut self, round: usize, fault: Fault, rng: &mut StdRng) {
        match fault {
            Fault::KillRestart => {
                let (v, was_leader) = self.victim(rng, 0.5);
                self.log(&format!(
                    "round {round}: kill -9 {}{}",
                    self.names[v],
                    role(was_leader)
                ));
                self.set_healthy(v, false);
                self.running[v].store(false, Ordering::SeqCst);
                self.cluster.nodes[v].kill();
                self.hold(round, rng, v, was_leader, (1000, 4000));
                self.log(&format!("round {round}: restart {}", self.names[v]));
                self.restart(v);
                self.set_healthy(v, true);
            }
            Fault::PauseResume => {
                let (v, was_leader) = self.victim(rng, 0.5);
                self.log(&format!(
                    "round {round}: SIGSTOP {}{}",
                    self.names[v],
                    role(was_leader)
                ));
                self.set_healthy(v, false);
                self.signal(v, Signal::SIGSTOP);
                self.hold(round, rng, v, was_leader, (3000, 9000));
                self.log(&format!("round {round}: SIGCONT {}", self.names[v]));
                self.signal(v, Signal::SIGCONT);
                self.set_healthy(v, true);
            }
            Fault::LeaderIsolated => {
                let (v, was_leader) = self.victim(rng, 1.0);
                self.log(&format!(
                    "round {round}: link down {}{}",
                    self.names[v],
                    role(was_leader)
                ));
                self.set_healthy(v, false);
                self.net.link_down(v);
                self.hold(round, rng, v, was_leader, (5000, 10000));
                self.log(&format!("round {round}: link up {}", self.names[v]));
                self.net.link_up(v);
                self.set_healthy(v, true);
            }
            Fault::MinorityPartition => {
                let (v, was_leader) = self.victim(rng, 0.0);
                self.log(&format!(
                    "round {round}: nftables partition of {}{}",
                    self.names[v],
                    role(was_leader)
                ));
                self.set_healthy(v, false);
                self.net.partition(v);
                self.hold(round, rng, v, was_leader, (5000, 10000));
                self.log(&format!("round {round}: heal {}", self.names[v]));
                self.net.heal(v);
                self.set_healthy(v, true);
            }
            Fault::LaggingLarge => {
                let leader = self.leader();
                let v = (0..MANAGERS)
                    .find(|&i| Some(i) != leader)
                    .expect("a follower");
                self.log(&format!(
                    "round {round}: kill -9 {} (a follower), then ten {LARGE}-byte secrets",
                    self.names[v]
                ));
                self.set_healthy(v, false);
                self.running[v].store(false, Ordering::SeqCst);
                self.cluster.nodes[v].kill();
                let via = leader.filter(|&l| l != v).unwrap_or((v + 1) % MANAGERS);
                for _ in 0..10 {
                    create(
                        &self.hist,
                        "nemesis",
                        &self.names[via],
                        &self.hosts[via],
                        rng.random(),
                        LARGE,
                    );
                }
                self.log(&format!("round {round}: restart {}", self.names[v]));
                self.restart(v);
                self.set_healthy(v, true);
            }
        }
    }

    // -------------------------------------------------------------- checks

    fn check(&self, round: usize) -> Vec<String> {
        // 0. What went wrong during the fault.
        let mut failures: Vec<String> = self.pending.lock().unwrap().drain(..).collect();
        let within = timeout();

        // 1. One leader, the same everywhere, all managers Ready.
        let one_leader = try_wait_for(
            within,
            "every manager to list 3 Ready managers with one and the same Leader",
            || self.leaders_agree(),
        );
        if let Err(e) = one_leader {
            failures.push(format!("one leader (no zombie): {e}"));
        }

        // 2. Convergence, with every acknowledged create.
        let acked: BTreeMap<String, String> = self
            .hist
            .snapshot()
            .iter()
            .filter(|e| e.outcome == Outcome::Ok)
            .filter_map(|e| match &e.op {
                Op::Create { name, digest } => Some((name.clone(), digest.clone())),
                Op::Read { .. } => None,
            })
            .collect();
        let mut last: Vec<Option<BTreeMap<String, String>>> = vec![None; MANAGERS];
        let converged = try_wait_for(
            within,
            "every manager to list the same secrets, every acknowledged one among them",
            || {
                *self.last_check.lock().unwrap() = self.hist.now();
                let mut texts = Vec::new();
                for (i, slot) in last.iter_mut().enumerate() {
                    let (name, host) = (&self.names[i], &self.hosts[i]);
                    let (listing, text) = read(&self.hist, "check", name, host)
                        .map_err(|e| format!("secret ls on {name}: {e}"))?;
                    *slot = Some(listing);
                    texts.push(text);
                }
                let counts: Vec<String> = last
                    .iter()
                    .zip(&self.names)
                    .map(|(l, n)| format!("{n}: {}", l.as_ref().map_or(0, BTreeMap::len)))
                    .collect();
                if texts.iter().any(|t| *t != texts[0]) {
                    return Err(format!("listings differ ({})", counts.join(", ")));
                }
                let missing = acked
                    .keys()
                    .filter(|k| !last[0].as_ref().unwrap().contains_key(*k))
                    .count();
                if missing > 0 {
                    return Err(format!(
                        "{missing} acknowledged secrets missing ({})",
                        counts.join(", ")
                    ));
                }
                Ok(())
            },
        );
        if let Err(e) = converged {
            failures.push(format!("convergence: {e}"));
        }

        // 3 and 4. Nothing lost, nothing from nowhere.
        let created: HashMap<String, String> = self
            .hist
            .snapshot()
            .iter()
            .filter_map(|e| match &e.op {
                Op::Create { name, digest } => Some((name.clone(), digest.clone())),
                Op::Read { .. } => None,
            })
            .collect();
        for (i, listing) in last.iter().enumerate() {
            let Some(listing) = listing else {
                failures.push(format!("{} never listed its secrets", self.names[i]));
                continue;
            };
            let lost: Vec<&String> = acked
                .iter()
                .filter(|(k, d)| listing.get(*k) != Some(*d))
                .map(|(k, _)| k)
                .collect();
            if !lost.is_empty() {
                failures.push(format!(
                    "acknowledged writes lost on {}: {} of {} ({})",
                    self.names[i],
                    lost.len(),
                    acked.len(),
                    first_few(&lost)
                ));
            }
            let foreign: Vec<&String> = listing
                .iter()
                .filter(|(k, d)| created.get(*k) != Some(*d))
                .map(|(k, _)| k)
                .collect();
            if !foreign.is_empty() {
                failures.push(format!(
                    "{} lists secrets no operation wrote (or with another value): {}",
                    self.names[i],
                    first_few(&foreign)
                ));
            }
        }

        // 5. None applied twice, by the audit chain.
        if let Some(listing) = last.iter().flatten().next() {
            match self.creates_audited() {
                Ok(audited) => {
                    for (name, recs) in &audited {
                        if recs.len() > 1 && self.twice.lock().unwrap().insert(name.clone()) {
                            failures.push(format!(
                                "applied twice: {} secret.create records for {name}: {}",
                                recs.len(),
                                recs.join("; ")
                            ));
                        }
                        if !listing.contains_key(name) {
                            failures.push(format!(
                                "audited but not listed: a secret.create record for {name}"
                            ));
                        }
                    }
                    for name in listing.keys() {
                        if !audited.contains_key(name) {
                            failures.push(format!("listed but not audited: {name}"));
                        }
                    }
                }
                Err(e) => failures.push(format!("audit ls: {e}")),
            }
        }

        // 6. The audit chain verifies everywhere, with the same head.
        let heads = try_wait_for(
            within,
            "`audit verify` to pass on every manager with the same head",
            || {
                let mut heads = Vec::new();
                for i in 0..MANAGERS {
                    let ran = cli(&self.hosts[i], &["audit", "verify"], None, OP_TIMEOUT);
                    if ran.outcome != Outcome::Ok {
                        return Err(format!(
                            "audit verify on {}: {:?}: {}",
                            self.names[i],
                            ran.outcome,
                            ran.stderr.trim()
                        ));
                    }
                    let head = ran
                        .stdout
                        .lines()
                        .find_map(|l| l.strip_prefix("The audit chain is whole: "))
                        .ok_or_else(|| {
                            format!("audit verify on {} said: {}", self.names[i], ran.stdout)
                        })?
                        .to_string();
                    heads.push(format!("{}: {head}", self.names[i]));
                }
                let same = heads.iter().all(|h| {
                    h.split_once(": ").map(|x| x.1) == heads[0].split_once(": ").map(|x| x.1)
                });
                if same { Ok(()) } else { Err(heads.join("; ")) }
            },
        );
        if let Err(e) = heads {
            failures.push(format!("audit chain: {e}"));
        }

        // 1 again, after the checks' own traffic: still one leader. An agent whose session
        // was with the isolated leader may still be moving to the new one when the link comes
        // back (its node briefly Down), so the listings get a bounded while to settle.
        if let Err(e) = try_wait_for(within, "one leader at the end of the round", || {
            self.leaders_agree()
        }) {
            failures.push(format!("one leader at the end of the round: {e}"));
        }

        // 7. The history.
        failures.extend(check_history(&self.hist.snapshot()));
        if failures.is_empty() {
            self.log(&format!("round {round}: all checks hold"));
        }
        failures
    }

    fn leaders_agree(&self) -> Result<(), String> {
        let mut seen = Vec::new();
        for i in 0..MANAGERS {
            let ran = cli(
                &self.hosts[i],
                &["node", "ls", "--format", "json"],
                None,
                OP_TIMEOUT,
            );
            if ran.outcome != Outcome::Ok {
                return Err(format!(
                    "node ls on {}: {:?} {}",
                    self.names[i],
                    ran.outcome,
                    ran.stderr.trim()
                ));
            }
            let nodes = json_lines(&ran.stdout);
            let leaders: Vec<&str> = nodes
                .iter()
                .filter(|n| n["ManagerStatus"] == "Leader")
                .filter_map(|n| n["Hostname"].as_str())
                .collect();
            let ready = nodes.iter().filter(|n| n["Status"] == "Ready").count();
            if leaders.len() != 1 || ready != MANAGERS || nodes.len() != MANAGERS {
                return Err(format!(
                    "{} lists: {}",
                    self.names[i],
                    crate::harness::summary(&nodes)
                ));
            }
            seen.push(leaders[0].to_string());
        }
        if seen.iter().all(|l| *l == seen[0]) {
            Ok(())
        } else {
            Err(format!(
                "managers name different leaders: {}",
                self.names
                    .iter()
                    .zip(&seen)
                    .map(|(n, l)| format!("{n} says {l}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// `secret.create` records by secret name (each as `seq, time, secret_id`), from the
    /// first manager that answers.
    fn creates_audited(&self) -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut last = String::new();
        for i in 0..MANAGERS {
            let ran = cli(&self.hosts[i], &["audit", "ls", "--json"], None, OP_TIMEOUT);
            if ran.outcome != Outcome::Ok {
                last = format!("{}: {:?} {}", self.names[i], ran.outcome, ran.stderr.trim());
                continue;
            }
            let mut counts = BTreeMap::new();
            for r in json_lines(&ran.stdout) {
                if r["action"] == "secret.create" && r["outcome"] == "ok" {
                    let name = r["target"].as_str().unwrap_or_default().to_string();
                    if name.starts_with('k') {
                        counts.entry(name).or_insert_with(Vec::new).push(format!(
                            "seq {} at {} secret_id {}",
                            r["seq"],
                            r["time"].as_str().unwrap_or("?"),
                            r["details"]["secret_id"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
            return Ok(counts);
        }
        Err(last)
    }
}

fn role(leader: bool) -> &'static str {
    if leader {
        " (the leader)"
    } else {
        " (a follower)"
    }
}

fn first_few(names: &[&String]) -> String {
    let mut s: Vec<&str> = names.iter().take(10).map(|n| n.as_str()).collect();
    if names.len() > 10 {
        s.push("...");
    }
    s.join(", ")
}

// ------------------------------------------------------------------ the history check

/// Checks the history against a grow-only set (see the module comment); the violations.
fn check_history(events: &[Event]) -> Vec<String> {
    let mut failures = Vec::new();
    let creates: HashMap<&str, &Event> = events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Create { name, .. } => Some((name.as_str(), e)),
            Op::Read { .. } => None,
        })
        .collect();
    let reads: Vec<(&Event, &BTreeMap<String, String>)> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Ok)
        .filter_map(|e| match &e.op {
            Op::Read { result } => Some((e, result)),
            Op::Create { .. } => None,
        })
        .collect();
    // When an operation may have taken effect at the latest.
    let end = |e: &Event| {
        if e.outcome == Outcome::Ok {
            e.end
        } else {
            u64::MAX
        }
    };

    // Every value read was written, and had begun before the read ended.
    for (r, result) in &reads {
        for (name, digest) in *result {
            match creates.get(name.as_str()) {
                Some(c) => {
                    if matches!(&c.op, Op::Create { digest: d, .. } if d != digest) {
                        failures.push(format!(
                            "history: {} shows {name} with a value never written",
                            r.describe()
                        ));
                    }
                    if c.start > r.end {
                        failures.push(format!(
                            "history: {} shows {name}, whose create began after it: {}",
                            r.describe(),
                            c.describe()
                        ));
                    }
                }
                None => failures.push(format!(
                    "history: {} shows {name}, which no operation created",
                    r.describe()
                )),
            }
        }
    }

    // Stale reads, one by one.
    let mut stale = Vec::new();
    for (r, result) in &reads {
        let missing: Vec<&Event> = creates
            .values()
            .filter(|c| c.outcome == Outcome::Ok && c.end < r.start)
            .filter(|c| matches!(&c.op, Op::Create { name, .. } if !result.contains_key(name)))
            .copied()
            .collect();
        if let Some(newest) = missing.iter().max_by_key(|c| c.end) {
            stale.push(format!(
                "{} misses {} creates acknowledged before it began, e.g. {}",
                r.describe(),
                missing.len(),
                newest.describe()
            ));
        }
    }
    if !stale.is_empty() {
        failures.push(format!(
            "history: {} stale reads (a write acknowledged before the read began is missing); first ones:\n    {}",
            stale.len(),
            stale.iter().take(5).cloned().collect::<Vec<_>>().join("\n    ")
        ));
    }

    // The reads' results form a chain under inclusion.
    let mut by_size: Vec<&(&Event, &BTreeMap<String, String>)> = reads.iter().collect();
    by_size.sort_by_key(|(e, r)| (r.len(), e.start));
    let mut levels: Vec<BTreeSet<&str>> = Vec::new();
    let mut level_of_read: Vec<(usize, &Event)> = Vec::new();
    for (e, result) in &by_size {
        let set: BTreeSet<&str> = result.keys().map(String::as_str).collect();
        match levels.last() {
            Some(l) if *l == set => {}
            Some(l) if !l.is_subset(&set) => {
                let other = by_size
                    .iter()
                    .find(|(_, r)| r.keys().map(String::as_str).collect::<BTreeSet<_>>() == *l)
                    .map(|(e, _)| e.describe())
                    .unwrap_or_default();
                failures.push(format!(
                    "history: not linearizable: two reads saw sets neither of which contains the other ({other}; {}): e.g. {:?} only in the first",
                    e.describe(),
                    l.difference(&set).take(3).collect::<Vec<_>>()
                ));
                return failures;
            }
            _ => levels.push(set),
        }
        level_of_read.push((levels.len() - 1, e));
    }

    // Blocks: creates first seen at level j, then the reads of level j; ok creates never read
    // last. Earliest points, strictly after the previous block.
    let mut first_level: HashMap<&str, usize> = HashMap::new();
    for (j, l) in levels.iter().enumerate().rev() {
        for n in l {
            first_level.insert(n, j);
        }
    }
    let mut blocks: Vec<Vec<&Event>> = vec![Vec::new(); 2 * levels.len() + 1];
    for (name, c) in &creates {
        match first_level.get(name) {
            Some(&j) => blocks[2 * j].push(c),
            None if c.outcome == Outcome::Ok => blocks[2 * levels.len()].push(c),
            None => {} // indeterminate and never seen: it did not take effect
        }
    }
    for (j, r) in level_of_read {
        blocks[2 * j + 1].push(r);
    }
    // `cause`: the operation whose start fixes `t` (everything from here on must follow it).
    let mut t = 0u64;
    let mut cause: Option<&Event> = None;
    for block in blocks.iter().filter(|b| !b.is_empty()) {
        let (mut top, mut top_cause) = (t, cause);
        for e in block {
            if t.max(e.start) > end(e) {
                failures.push(format!(
                    "history: not linearizable: {} would have to take effect after {} began (the reads' results order them so), yet it ended before that",
                    e.describe(),
                    cause.map_or_else(|| "the test".to_string(), Event::describe)
                ));
                return failures;
            }
            if e.start > top {
                top = e.start;
                top_cause = Some(*e);
            }
        }
        t = top + 1;
        cause = top_cause;
    }
    failures
}

// ------------------------------------------------------------------ the checker itself

fn ev(start: u64, end: u64, outcome: Outcome, op: Op) -> Event {
    Event {
        by: "c1".into(),
        node: "m1".into(),
        start,
        end,
        outcome,
        op,
        error: String::new(),
    }
}

fn add(name: &str, start: u64, end: u64, outcome: Outcome) -> Event {
    let digest = format!("d-{name}");
    ev(
        start,
        end,
        outcome,
        Op::Create {
            name: name.into(),
            digest,
        },
    )
}

fn saw(names: &[&str], start: u64, end: u64) -> Event {
    let result = names
        .iter()
        .map(|n| (n.to_string(), format!("d-{n}")))
        .collect();
    ev(start, end, Outcome::Ok, Op::Read { result })
}

#[test]
fn history_check_accepts_a_linearizable_history() {
    let h = vec![
        add("k0", 0, 10, Outcome::Ok),
        saw(&[], 1, 2), // concurrent with k0: may miss it
        saw(&["k0"], 5, 6),
        add("k1", 20, 30, Outcome::Unknown), // took effect after its answer was lost
        saw(&["k0"], 31, 32),
        saw(&["k0", "k1"], 40, 41),
        add("k2", 50, 60, Outcome::Failed), // never took effect
        saw(&["k0", "k1"], 70, 71),
    ];
    assert_eq!(check_history(&h), Vec::<String>::new());
}

#[test]
fn history_check_finds_a_stale_read() {
    let h = vec![add("k0", 0, 10, Outcome::Ok), saw(&[], 11, 12)];
    let f = check_history(&h);
    assert!(f.iter().any(|m| m.contains("1 stale reads")), "{f:?}");
    assert!(f.iter().any(|m| m.contains("not linearizable")), "{f:?}");
}

#[test]
fn history_check_finds_reads_that_go_back_and_values_from_nowhere() {
    // k1 is unacknowledged, so missing it is no stale read; but once a read saw it, a later
    // read without it is not linearizable.
    let h = vec![
        add("k1", 0, 100, Outcome::Unknown),
        saw(&["k1"], 10, 11),
        saw(&[], 20, 21),
    ];
    let f = check_history(&h);
    assert!(
        f.iter().any(|m| m.contains("not linearizable")) && !f.iter().any(|m| m.contains("stale")),
        "{f:?}"
    );
    // Two reads that saw different sets, neither containing the other.
    let h = vec![
        add("a", 0, 100, Outcome::Unknown),
        add("b", 0, 100, Outcome::Unknown),
        saw(&["a"], 10, 11),
        saw(&["b"], 10, 11),
    ];
    let f = check_history(&h);
    assert!(f.iter().any(|m| m.contains("neither")), "{f:?}");
    // A value no create wrote.
    let f = check_history(&[saw(&["k9"], 1, 2)]);
    assert!(
        f.iter().any(|m| m.contains("no operation created")),
        "{f:?}"
    );
}
