//! The `skep` command line: clap definitions, and handlers that turn arguments into Control
//! API calls and print tables or JSON the way Docker does.
//!
//! ```text
//!  argv ──clap──► Command ──► handler ──gRPC over unix socket──► daemon (Control API)
//!                               │
//!                               └──► stdout: tables / JSON      stderr: "Error: <message>"
//! ```
//!
//! Exit codes: 0 success, 1 error (the daemon's message alone, or what failed locally),
//! 2 usage (clap).

mod audit;
mod audit_seen;
mod backup;
pub mod client;
mod config;
mod dev;
mod docker_view;
mod events;
mod filter;
mod info;
mod logs;
mod manual;
mod node;
mod operator;
mod output;
mod policy;
mod progress;
mod prompt;
mod secret;
mod service;
mod spec;
mod stack;
mod swarm;
mod tasks;
mod template;
mod when;

use crate::spec::duration;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use self::client::Host;
use self::output::Format;
use self::service::ServiceCommand;

/// Where the CLI finds the daemon unless `--host` or `SKEP_HOST` says otherwise.
pub const DEFAULT_HOST: &str = "unix:///var/run/skep.sock";

/// skep: a container orchestrator with Docker Swarm's workflow and a zero-trust security core.
#[derive(Debug, Parser)]
#[command(name = "skep", version, propagate_version = true)]
pub struct Cli {
    /// Daemon to talk to: unix:///path/to/skep.sock (this node, as its root administrator;
    /// the default), or tcp://IP[:PORT] (a manager, with an operator certificate). Without it,
    /// the current context (`skep context use`) decides.
    #[arg(
        short = 'H',
        long,
        global = true,
        env = "SKEP_HOST",
        value_name = "URL"
    )]
    host: Option<String>,

    /// Directory with the operator certificate for a tcp:// host: ca.pem, cert.pem, key.pem.
    #[arg(long, global = true, env = "SKEP_CERT_PATH", value_name = "DIR")]
    cert_path: Option<PathBuf>,

    /// Answer from the manager's own copy of the swarm's state, without confirming with a
    /// quorum of managers that it is current: it may be out of date. For looking at a swarm
    /// that has lost its quorum (reads only; writes and audited reads still need a quorum).
    #[arg(long, global = true)]
    stale: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node daemon (every machine of a swarm runs one).
    Daemon(DaemonArgs),
    /// Manage the swarm.
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Show the command that joins a node to this swarm.
    JoinToken(JoinTokenArgs),
    /// Manage swarm nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services.
    #[command(subcommand)]
    Service(Box<ServiceCommand>),
    /// Manage secrets.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Manage configs: files given to tasks at any path, versioned as secrets are.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Manage stacks: services, networks and secrets from Compose files.
    #[command(subcommand)]
    Stack(stack::StackCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(stack::NetworkCommand),
    /// Manage the Cedar policies: secret entitlement, and operator RBAC (`--rbac`).
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Manage operators: people using the Control API from their own machines.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Manage contexts: which manager the CLI talks to, with which operator certificate.
    #[command(subcommand)]
    Context(operator::ContextCommand),
    /// Inspect this node's agent.
    #[command(subcommand)]
    Agent(policy::AgentCommand),
    /// Read and verify the hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Get real-time events from the swarm (services, nodes, secrets, configs, networks).
    Events(events::EventsArgs),
    /// Run a local test swarm of several daemons on 127.0.0.2, 127.0.0.3, ...
    Dev(DevArgs),
    /// Show the skep version information (client and daemon).
    Version(info::VersionArgs),
    /// Display system-wide information: this node and, on a manager, its swarm.
    Info(info::InfoArgs),
    /// Print the shell completion script for bash, zsh or fish.
    Completion(manual::CompletionArgs),
    /// Print skep's manual page (skep.1), or write one page per command into a directory.
    Man(manual::ManArgs),
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// Directory for the node's sealed state.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address node-to-node mTLS is served at.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:2377")]
    listen_addr: SocketAddr,
    /// Address other nodes reach this node at (default: the listen address).
    #[arg(long, value_name = "IP:PORT")]
    advertise_addr: Option<SocketAddr>,
    /// Local admin socket (mode 0600).
    #[arg(long, value_name = "PATH", default_value = "/var/run/skep.sock")]
    socket: PathBuf,
    /// Host name shown in `node ls` (default: the system host name).
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// How often agents send heartbeats (tests shorten it).
    #[arg(long, hide = true, value_name = "DURATION", default_value = "5s", value_parser = positive_duration)]
    heartbeat_period: Duration,
    /// For tests: the leader signs an audit checkpoint after this many records (default 256).
    #[arg(long, hide = true, value_name = "N", env = "SKEP_AUDIT_CHECKPOINT_RECORDS",
          default_value_t = crate::audit::checkpoint::DEFAULT_EVERY_RECORDS,
          value_parser = clap::value_parser!(u64).range(1..))]
    audit_checkpoint_records: u64,
    /// For tests: ... or when the oldest record without a checkpoint is this old (default 60s).
    #[arg(long, hide = true, value_name = "DURATION", env = "SKEP_AUDIT_CHECKPOINT_INTERVAL",
          default_value = "60s", value_parser = positive_duration)]
    audit_checkpoint_interval: Duration,
    /// For tests: build a Raft snapshot (and purge the log behind it) every N entries.
    #[arg(long, hide = true, value_name = "N", env = "SKEP_RAFT_SNAPSHOT_LOGS",
          default_value_t = crate::daemon::DEFAULT_SNAPSHOT_LOGS,
          value_parser = clap::value_parser!(u64).range(2..))]
    raft_snapshot_logs: u64,
    /// Start a manager whose Raft store is older than its anchor (a deleted, emptied or
    /// restored log): accept losing what came after. Audited as `store.rollback.forced`.
    /// Prefer removing the manager from another one and re-joining it with an empty data
    /// directory.
    #[arg(long)]
    force_rollback: bool,
    /// On SIGTERM or SIGINT, stop this node's tasks (SIGTERM, then SIGKILL after 10 s) before
    /// exiting. By default they keep running, and the daemon adopts them when it starts again
    /// (a restart or an upgrade of skep does not stop them).
    #[arg(long)]
    stop_tasks_on_exit: bool,
    /// On a manager: serve the OIDC discovery document and the JWKS of JWT-SVIDs over HTTPS
    /// at this address (with the manager's certificate; off by default).
    #[arg(long, value_name = "IP:PORT")]
    oidc_addr: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (off by default; no authentication,
    /// so keep it on loopback or behind a firewall: a wider address is warned about).
    #[arg(long, value_name = "IP:PORT")]
    metrics_addr: Option<SocketAddr>,
    /// The most process IDs (processes and threads) all exec tasks of this node may hold
    /// together: a fork bomb in one task stops there (default: half the kernel's limit, so the
    /// daemon and the host keep the rest; 0: no cap).
    #[arg(long, value_name = "N")]
    exec_pids_max: Option<u64>,
    /// The most memory all exec tasks of this node may use together (e.g. 16G): past it the
    /// kernel kills a task's process, and the daemon and the host keep the rest (default: all
    /// but a tenth of the node's memory, at least 1 GiB; 0: no cap).
    #[arg(long, value_name = "BYTES", value_parser = crate::spec::service::parse_memory)]
    exec_memory_max: Option<u64>,
    /// How log lines are written to stderr: text, or one JSON object per line.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: crate::logging::LogFormat,
    /// The least severe events logged. SKEP_LOG, when set, replaces it with its own filter
    /// (per module, e.g. info,skep::agent=debug).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: crate::logging::LogLevel,
}

#[derive(Debug, Subcommand)]
enum SwarmCommand {
    /// Initialize a swarm with this node as its first manager.
    Init(SwarmInitArgs),
    /// Join a swarm as a node and/or manager.
    Join(SwarmJoinArgs),
    /// Leave the swarm.
    Leave(SwarmLeaveArgs),
    /// Unlock a locked manager (the key is read from stdin).
    Unlock,
    /// Show the command that joins a node to this swarm (same as `skep join-token`).
    JoinToken(JoinTokenArgs),
    /// Update the swarm's settings.
    Update(SwarmUpdateArgs),
    /// Show (or rotate) the key that unlocks an autolocked manager.
    UnlockKey(UnlockKeyArgs),
    /// Display and rotate the root CA.
    Ca(SwarmCaArgs),
    /// Write an encrypted, signed backup of the swarm's state (on a manager).
    Backup(SwarmBackupArgs),
    /// Bring a swarm back from a backup, with this node (outside any swarm) as its manager.
    Restore(SwarmRestoreArgs),
}

#[derive(Debug, Args)]
struct SwarmBackupArgs {
    /// Where to write the backup (created with mode 0600; an existing file is not replaced).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: PathBuf,
    /// A file holding the key to encrypt with: a passphrase of at least 16 bytes, or a
    /// SKEPBKP- key printed by an earlier backup. Without it, a key is made and printed once.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SwarmRestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// A file holding the backup's key or passphrase (otherwise it is read from stdin).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// Address this manager serves at (IP:PORT). Workers reach it there only if it is an
    /// address they know: a former manager's.
    #[arg(long, value_name = "IP:PORT")]
    advertise_addr: Option<String>,
    /// Accept restoring a backup older than a checkpoint this client has verified: what
    /// happened after the backup is undone (audited as a rollback).
    #[arg(long)]
    rollback: bool,
}

#[derive(Debug, Args)]
struct SwarmCaArgs {
    /// Move the swarm to a new root CA (made here, or --ca-cert/--ca-key), cross-signed by
    /// the current one; every node gets a certificate of the new root, then the old is retired.
    #[arg(long)]
    rotate: bool,
    /// The root CA certificate to rotate to (PEM file), instead of one skep makes.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PKCS#8 PEM file, ECDSA P-256).
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Validity of node certificates issued from now on (e.g. 90d).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    cert_expiry: Option<Duration>,
    /// Exit immediately instead of waiting for the rotation to finish.
    #[arg(short, long)]
    detach: bool,
    /// Print only the root CA certificate, without progress.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct UnlockKeyArgs {
    /// Only display the key.
    #[arg(short, long)]
    quiet: bool,
    /// Replace the unlock key; managers re-wrap their keys under the new one.
    #[arg(long)]
    rotate: bool,
}

#[derive(Debug, Args)]
struct SwarmUpdateArgs {
    /// Dispatcher heartbeat period (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    dispatcher_heartbeat: Option<Duration>,
    /// Keep managers' keys sealed under an unlock key the operator holds (true) or not.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    autolock: Option<bool>,
    /// Validity of node certificates issued from now on (e.g. 6h); nodes renew on their own
    /// at 50-80% of their certificate's life.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    cert_expiry: Option<Duration>,
    /// Keep at least this many audit records (0: all, the default). The leader trims older
    /// ones at a signed checkpoint; run `skep audit export` first to keep what you need.
    #[arg(long, value_name = "N")]
    audit_retention: Option<u64>,
    /// Unused old versions of each secret and config to keep (besides the current one and
    /// those tasks or services use; default 2). Older ones are pruned.
    #[arg(long, value_name = "N")]
    secret_history_limit: Option<u64>,
    /// Lifetime of the X.509-SVIDs tasks get from now on (10s to 24h; default 1h); they are
    /// renewed at half life.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    svid_ttl: Option<Duration>,
    /// The issuer (an https:// URL where the managers' --oidc-addr is reached) that JWT-SVIDs
    /// name and the OIDC discovery document gives; "" removes it.
    #[arg(long, value_name = "URL")]
    oidc_issuer: Option<String>,
}

#[derive(Debug, Args)]
struct SwarmInitArgs {
    /// Advertised address (format: IP[:PORT]).
    #[arg(long, value_name = "IP:PORT")]
    advertise_addr: Option<String>,
    /// Validity period for node certificates (e.g. 90d, 12h, 2160h0m0s).
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = positive_duration)]
    cert_expiry: Duration,
    /// Enable manager autolocking (an unlock key is needed to restart a stopped manager).
    #[arg(long)]
    autolock: bool,
    /// Make this surviving manager the only manager of its swarm, from its own state, after
    /// the other managers are lost for good (the others are removed; a locked manager's
    /// unlock key is read from stdin).
    #[arg(long, conflicts_with_all = ["autolock"])]
    force_new_cluster: bool,
    /// The SPIFFE trust domain of workload identities (default: the cluster ID), e.g.
    /// prod.example.com; tasks' IDs are spiffe://DOMAIN/ns/STACK/svc/SERVICE.
    #[arg(long, value_name = "DOMAIN")]
    trust_domain: Option<String>,
}

#[derive(Debug, Args)]
struct SwarmJoinArgs {
    /// Token for entry into the swarm.
    #[arg(long, value_name = "TOKEN")]
    token: String,
    /// Address of a manager of the swarm (IP:PORT).
    #[arg(value_name = "HOST:PORT")]
    remote_addr: String,
    /// Advertised address (format: IP[:PORT]).
    #[arg(long, value_name = "IP:PORT")]
    advertise_addr: Option<String>,
}

#[derive(Debug, Args)]
struct SwarmLeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings.
    #[arg(short, long)]
    force: bool,
}

#[derive(Debug, Args)]
struct JoinTokenArgs {
    /// Only display the token.
    #[arg(short, long)]
    quiet: bool,
    /// Rotate the join token: the old one stops working at once.
    #[arg(long)]
    rotate: bool,
    /// The role the token admits.
    role: Role,
}

/// The role of a node in the swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Worker,
    Manager,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List nodes in the swarm.
    #[command(alias = "list")]
    Ls(NodeLsArgs),
    /// Display detailed information on one or more nodes.
    Inspect(NodeInspectArgs),
    /// List tasks running on one or more nodes (default: the current node).
    Ps(NodePsArgs),
    /// Update a node's availability or labels.
    Update(NodeUpdateArgs),
    /// Remove one or more nodes from the swarm, revoking their certificates at once.
    #[command(alias = "remove")]
    Rm(NodeRmArgs),
    /// Promote one or more nodes to manager in the swarm.
    Promote(NodeRoleArgs),
    /// Demote one or more nodes from manager in the swarm.
    Demote(NodeRoleArgs),
}

#[derive(Debug, Args)]
struct NodeRoleArgs {
    /// Nodes (ID, ID prefix or host name; `self` is the node answering).
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
struct NodeRmArgs {
    /// Force-remove a node that is still up.
    #[arg(short, long)]
    force: bool,
    /// Nodes (ID, ID prefix or host name).
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
struct NodePsArgs {
    /// Only display task IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate output.
    #[arg(long)]
    no_trunc: bool,
    /// Filter output based on conditions provided (desired-state, id, name, node).
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Format output: table, json, or a Go template.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
    /// Node ID, ID prefix or hostname; `self` is the node answering (the default).
    #[arg(value_name = "NODE")]
    nodes: Vec<String>,
}

#[derive(Debug, Args)]
struct NodeUpdateArgs {
    /// Availability of the node.
    #[arg(long, value_name = "AVAILABILITY")]
    availability: Option<Availability>,
    /// Add or update a node label (KEY=VALUE).
    #[arg(long, value_name = "KEY=VALUE")]
    label_add: Vec<String>,
    /// Remove a node label if it exists.
    #[arg(long, value_name = "KEY")]
    label_rm: Vec<String>,
    /// Role of the node (`worker` or `manager`): as `node demote` or `node promote`.
    #[arg(long, value_name = "ROLE", value_parser = ["worker", "manager"])]
    role: Option<String>,
    /// Node ID, ID prefix or hostname; `self` is the node answering.
    #[arg(value_name = "NODE")]
    node: String,
}

/// `node update --availability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Availability {
    /// New tasks may be placed on the node.
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// Tasks are moved to other nodes.
    Drain,
}

impl Availability {
    fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

#[derive(Debug, Args)]
struct NodeLsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Filter output based on conditions provided (id, label, node.label, membership, name,
    /// role).
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Format output: table, json, or a Go template (`{{.Hostname}}`).
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
struct NodeInspectArgs {
    /// Print the information in a human friendly format.
    #[arg(long, conflicts_with = "format")]
    pretty: bool,
    /// Format output using a Go template (`{{.Description.Hostname}}`), or json.
    #[arg(short, long, value_name = "FORMAT")]
    format: Option<Format>,
    /// Node ID, ID prefix or hostname; `self` is the node answering.
    #[arg(value_name = "NODE", required = true)]
    nodes: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List the audit records, oldest first.
    #[command(alias = "list")]
    Ls(AuditLsArgs),
    /// Verify the hash chain and signed checkpoints (from the daemon, or an exported file).
    Verify(AuditVerifyArgs),
    /// Write the records for a SIEM: a header line, then one JSON record per line
    /// (docs/audit-export.md).
    Export(AuditExportArgs),
}

/// Which records to read; the manager applies them.
#[derive(Debug, Default, Args)]
struct AuditFilterArgs {
    /// Records at or after this time: Unix seconds, a duration ago (1h, 30m), or an RFC 3339
    /// time or date.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Records at or before this time: Unix seconds, a duration ago, or an RFC 3339 time or
    /// date.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// The actor's ID, or KIND:ID (local-admin:ID, node:ID, anonymous:ADDR).
    #[arg(long, value_name = "ACTOR")]
    actor: Option<String>,
    /// An action (secret.create), or a prefix ending in `.` or `*` (secret.*).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// The exact target.
    #[arg(long, value_name = "TARGET")]
    target: Option<String>,
    /// ok, denied or error.
    #[arg(long, value_name = "OUTCOME", value_parser = ["ok", "denied", "error"])]
    outcome: Option<String>,
}

#[derive(Debug, Args)]
struct AuditLsArgs {
    /// Print each record as a JSON line (the export format `audit verify --file` reads).
    #[arg(long)]
    json: bool,
    /// Keep printing new records as they are committed, until interrupted.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    filter: AuditFilterArgs,
}

#[derive(Debug, Args)]
struct AuditExportArgs {
    /// The export format.
    #[arg(long, value_name = "FORMAT", default_value = "jsonl", value_parser = ["jsonl"])]
    format: String,
    /// Write to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    filter: AuditFilterArgs,
}

#[derive(Debug, Args)]
struct AuditVerifyArgs {
    /// Verify this JSON-lines export (`skep audit export`, `skep audit ls --json`) offline;
    /// `-` is stdin.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Check checkpoints against this audit public key (hex), e.g. from `skep audit
    /// export`'s header kept somewhere safe; with the daemon, its key is used.
    #[arg(long, value_name = "HEX")]
    public_key: Option<String>,
    /// Start at this record instead of the first one kept.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=250))]
    nodes: u8,
    /// How many of them are managers (the first ones).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    managers: u8,
    /// Directory for the nodes' data, sockets and logs (default: a fresh temporary directory,
    /// removed on exit).
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

/// The `skep` entry point: parses the arguments, runs the command, maps the outcome to an
/// exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => daemon(args),
        Command::Dev(args) => runtime()?.block_on(dev::run(args)),
        // An export is verified offline: no daemon is asked, or needed.
        Command::Audit(AuditCommand::Verify(args)) if args.file.is_some() => {
            runtime()?.block_on(audit::verify(None, args))
        }
        // Validation needs only the schema built into this binary.
        Command::Policy(policy::PolicyCommand::Validate(args)) => policy::validate(&args),
        // The operator's key is made here and never sent anywhere.
        Command::Operator(operator::OperatorCommand::Csr(args)) => operator::csr(&args),
        Command::Context(cmd) => operator::context(cmd),
        Command::Completion(args) => manual::completion(&args),
        Command::Man(args) => manual::man(&args),
        command => {
            let host = operator::resolve_host(cli.host.as_deref(), cli.cert_path.as_deref())?;
            check(&command)?;
            let mode = client::ReadMode { stale: cli.stale };
            let context = operator::context_name(cli.host.as_deref());
            if let Command::Version(args) = command {
                // The client's part is printed even if no daemon answers.
                return runtime()?.block_on(info::version(&host, mode, &context, args));
            }
            runtime()?.block_on(control(host, mode, &context, command))
        }
    }
}

/// A small runtime for the client commands: one thread is plenty for a few RPCs.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Refuses bad values before connecting: nothing is sent, whatever the daemon would say.
fn check(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Service(cmd) => service::check(cmd),
        Command::Secret(cmd) => secret::check(cmd),
        Command::Config(cmd) => config::check(cmd),
        Command::Stack(cmd) => stack::check(cmd),
        Command::Swarm(SwarmCommand::Update(args)) => swarm::update_request(args).map(|_| ()),
        Command::Node(NodeCommand::Update(args)) => node::update_request(args).map(|_| ()),
        _ => Ok(()),
    }
}

async fn control(
    host: Host,
    mode: client::ReadMode,
    context: &str,
    command: Command,
) -> anyhow::Result<()> {
    let mut api = client::connect_with(&host, mode).await?;
    match command {
        Command::Swarm(SwarmCommand::Init(args)) => swarm::init(&mut api, args).await,
        Command::Swarm(SwarmCommand::Join(args)) => swarm::join(&mut api, args).await,
        Command::Swarm(SwarmCommand::Leave(args)) => swarm::leave(&mut api, args).await,
        Command::Swarm(SwarmCommand::Unlock) => swarm::unlock(&mut api).await,
        Command::Swarm(SwarmCommand::Update(args)) => swarm::update(&mut api, args).await,
        Command::Swarm(SwarmCommand::UnlockKey(args)) => swarm::unlock_key(&mut api, args).await,
        Command::Swarm(SwarmCommand::Ca(args)) => swarm::ca(&mut api, args).await,
        Command::Swarm(SwarmCommand::Backup(args)) => backup::backup(&mut api, args).await,
        Command::Swarm(SwarmCommand::Restore(args)) => backup::restore(&mut api, args).await,
        Command::Swarm(SwarmCommand::JoinToken(args)) | Command::JoinToken(args) => {
            swarm::join_token(&mut api, args).await
        }
        Command::Node(NodeCommand::Ls(args)) => node::ls(&mut api, args).await,
        Command::Node(NodeCommand::Inspect(args)) => node::inspect(&mut api, args).await,
        Command::Node(NodeCommand::Ps(args)) => node::ps(&mut api, args).await,
        Command::Node(NodeCommand::Update(args)) => node::update(&mut api, args).await,
        Command::Node(NodeCommand::Rm(args)) => node::rm(&mut api, args).await,
        Command::Node(NodeCommand::Promote(args)) => {
            node::change_role(&mut api, &args.nodes, "manager").await
        }
        Command::Node(NodeCommand::Demote(args)) => {
            node::change_role(&mut api, &args.nodes, "worker").await
        }
        Command::Service(cmd) => service::run(&mut api, *cmd).await,
        Command::Secret(cmd) => secret::run(&mut api, cmd, secret::Kind::Secret).await,
        Command::Config(cmd) => config::run(&mut api, cmd).await,
        Command::Stack(cmd) => stack::run(&mut api, cmd).await,
        Command::Network(cmd) => stack::network(&mut api, cmd).await,
        Command::Policy(cmd) => policy::run(&mut api, cmd).await,
        Command::Operator(cmd) => operator::run(&mut api, cmd).await,
        Command::Context(cmd) => operator::context(cmd),
        Command::Agent(cmd) => policy::agent(&mut api, cmd).await,
        Command::Audit(AuditCommand::Ls(args)) => audit::ls(&mut api, args).await,
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(Some(&mut api), args).await,
        Command::Audit(AuditCommand::Export(args)) => audit::export(&mut api, args).await,
        Command::Events(args) => events::run(&mut api, args).await,
        Command::Info(args) => info::info(&mut api, context, args).await,
        Command::Daemon(_)
        | Command::Dev(_)
        | Command::Version(_)
        | Command::Completion(_)
        | Command::Man(_) => unreachable_command(),
    }
}

fn unreachable_command() -> anyhow::Result<()> {
    anyhow::bail!("internal error: this command does not talk to a daemon")
}

fn daemon(args: DaemonArgs) -> anyhow::Result<()> {
    crate::logging::init(args.log_format, args.log_level)?;
    let config = crate::daemon::DaemonConfig {
        data_dir: args.data_dir,
        listen_addr: args.listen_addr,
        advertise_addr: args.advertise_addr,
        socket: args.socket,
        hostname: args.hostname,
        heartbeat_period: args.heartbeat_period,
        audit_checkpoints: crate::audit::checkpoint::CheckpointPolicy {
            every_records: args.audit_checkpoint_records,
            every_secs: args.audit_checkpoint_interval.as_secs().max(1),
        },
        raft_snapshot_logs: args.raft_snapshot_logs,
        force_rollback: args.force_rollback,
        stop_tasks_on_exit: args.stop_tasks_on_exit,
        oidc_addr: args.oidc_addr,
        metrics_addr: args.metrics_addr,
        exec_pids_max: args.exec_pids_max,
        exec_memory_max: args.exec_memory_max,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(crate::daemon::run(config))?;
    Ok(())
}

/// Writes to stdout; a closed pipe (`skep audit ls | head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("skep").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_defaults() {
        let cli = parse(&["daemon", "--data-dir", "/tmp/x"]).unwrap();
        let Command::Daemon(d) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(d.listen_addr, "0.0.0.0:2377".parse().unwrap());
        assert_eq!(d.socket, PathBuf::from("/var/run/skep.sock"));
        assert_eq!(d.heartbeat_period, Duration::from_secs(5));
        assert_eq!(d.advertise_addr, None);
        // A restart or upgrade keeps the node's tasks unless asked otherwise.
        assert!(!d.stop_tasks_on_exit);
        // The exec tasks' cap on process IDs is the kernel's half unless given.
        assert_eq!(d.exec_pids_max, None);
        let cli = parse(&["daemon", "--data-dir", "/tmp/x", "--exec-pids-max", "64"]).unwrap();
        let Command::Daemon(d) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(d.exec_pids_max, Some(64));
        // The exec tasks' cap on memory likewise: all but the host's reserve unless given.
        assert_eq!(d.exec_memory_max, None);
        let cli = parse(&["daemon", "--data-dir", "/tmp/x", "--exec-memory-max", "2G"]).unwrap();
        let Command::Daemon(d) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(d.exec_memory_max, Some(2 << 30));
        let e = parse(&["daemon", "--data-dir", "d", "--exec-memory-max", "lots"]).unwrap_err();
        assert!(e.to_string().contains("--exec-memory-max"), "{e}");
    }

    #[test]
    fn daemon_log_flags() {
        use crate::logging::{LogFormat, LogLevel};
        let cli = parse(&["daemon", "--data-dir", "d"]).unwrap();
        let Command::Daemon(d) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(
            (d.log_format, d.log_level),
            (LogFormat::Text, LogLevel::Info)
        );
        let cli = parse(&[
            "daemon",
            "--data-dir",
            "d",
            "--log-format",
            "json",
            "--log-level",
            "trace",
        ])
        .unwrap();
        let Command::Daemon(d) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(
            (d.log_format, d.log_level),
            (LogFormat::Json, LogLevel::Trace)
        );
        for bad in [["--log-format", "xml"], ["--log-level", "verbose"]] {
            let mut args = vec!["daemon", "--data-dir", "d"];
            args.extend(bad);
            assert_eq!(parse(&args).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn daemon_heartbeat_is_hidden_but_accepted() {
        let cli = parse(&["daemon", "--data-dir", "d", "--heartbeat-period", "300ms"]).unwrap();
        let Command::Daemon(d) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(d.heartbeat_period, Duration::from_millis(300));
        let help = Cli::command()
            .find_subcommand_mut("daemon")
            .unwrap()
            .render_help()
            .to_string();
        assert!(!help.contains("heartbeat"), "{help}");
    }

    #[test]
    fn init_cert_expiry_forms() {
        for (text, secs) in [
            ("2160h0m0s", 7_776_000),
            ("90s", 90),
            ("5m", 300),
            ("90d", 7_776_000),
        ] {
            let cli = parse(&["swarm", "init", "--cert-expiry", text]).unwrap();
            let Command::Swarm(SwarmCommand::Init(a)) = cli.command else {
                panic!("not init")
            };
            assert_eq!(a.cert_expiry, Duration::from_secs(secs), "{text}");
        }
        let cli = parse(&["swarm", "init"]).unwrap();
        let Command::Swarm(SwarmCommand::Init(a)) = cli.command else {
            panic!("not init")
        };
        assert_eq!(a.cert_expiry, Duration::from_secs(90 * 86_400));
        assert!(!a.autolock);
    }

    #[test]
    fn bad_durations_are_usage_errors() {
        for bad in ["0s", "90", "soon", ""] {
            let e = parse(&["swarm", "init", "--cert-expiry", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn join_token_roles() {
        let cli = parse(&["join-token", "-q", "manager"]).unwrap();
        let Command::JoinToken(a) = cli.command else {
            panic!("not join-token")
        };
        assert!(a.quiet);
        assert_eq!(a.role, Role::Manager);
        assert_eq!(parse(&["join-token", "admin"]).unwrap_err().exit_code(), 2);
        assert!(parse(&["swarm", "join-token", "worker"]).is_ok());
    }

    #[test]
    fn host_flag_is_global() {
        let cli = parse(&["node", "ls", "--host", "unix:///tmp/s.sock"]).unwrap();
        assert_eq!(cli.host.as_deref(), Some("unix:///tmp/s.sock"));
        let cli = parse(&["-H", "unix:///tmp/t.sock", "audit", "ls", "--json"]).unwrap();
        assert_eq!(cli.host.as_deref(), Some("unix:///tmp/t.sock"));
    }

    #[test]
    fn node_ls_formats() {
        let cli = parse(&["node", "ls", "--format", "json"]).unwrap();
        let Command::Node(NodeCommand::Ls(a)) = cli.command else {
            panic!("not node ls")
        };
        assert_eq!(a.format, Format::Json);
        let cli = parse(&["node", "ls", "--format", "{{.ID}}"]).unwrap();
        let Command::Node(NodeCommand::Ls(a)) = cli.command else {
            panic!("not node ls")
        };
        assert_eq!(a.format, Format::Template("{{.ID}}".into()));
        // A template that does not parse is a usage error, before any daemon is asked.
        assert_eq!(
            parse(&["node", "ls", "--format", "{{.ID"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn swarm_join_needs_token_and_address() {
        assert!(parse(&["swarm", "join", "--token", "T", "10.0.0.1:2377"]).is_ok());
        assert_eq!(
            parse(&["swarm", "join", "10.0.0.1:2377"])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            parse(&["swarm", "join", "--token", "T"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn node_ps_and_update() {
        let cli = parse(&["node", "ps"]).unwrap();
        let Command::Node(NodeCommand::Ps(a)) = cli.command else {
            panic!("not node ps")
        };
        assert!(a.nodes.is_empty());
        let cli = parse(&[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "a=b",
            "w1",
        ])
        .unwrap();
        let Command::Node(NodeCommand::Update(a)) = cli.command else {
            panic!("not node update")
        };
        assert_eq!(a.availability, Some(Availability::Drain));
        assert_eq!(a.node, "w1");
        let e = parse(&["node", "update", "--availability", "gone", "w1"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--availability"), "{e}");
        let cli = parse(&["node", "update", "w1"]).unwrap();
        let e = check(&cli.command).unwrap_err().to_string();
        assert!(e.starts_with("nothing to update"), "{e}");
    }

    #[test]
    fn swarm_update_flags() {
        let cli = parse(&["swarm", "update", "--dispatcher-heartbeat", "10s"]).unwrap();
        check(&cli.command).unwrap();
        let Command::Swarm(SwarmCommand::Update(a)) = &cli.command else {
            panic!("not swarm update")
        };
        assert_eq!(
            swarm::update_request(a).unwrap().dispatcher_heartbeat_ms,
            10_000
        );
        let cli = parse(&["swarm", "update", "--cert-expiry", "30d"]).unwrap();
        let Command::Swarm(SwarmCommand::Update(a)) = &cli.command else {
            panic!("not swarm update")
        };
        assert_eq!(
            swarm::update_request(a).unwrap().cert_expiry_secs,
            30 * 86400
        );
        let cli = parse(&["swarm", "update"]).unwrap();
        assert!(check(&cli.command).is_err());
        assert_eq!(
            parse(&["swarm", "update", "--dispatcher-heartbeat", "0s"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn dev_defaults() {
        let cli = parse(&["dev"]).unwrap();
        let Command::Dev(a) = cli.command else {
            panic!("not dev")
        };
        assert_eq!((a.nodes, a.managers, a.base_dir), (3, 1, None));
        assert_eq!(parse(&["dev", "--nodes", "0"]).unwrap_err().exit_code(), 2);
    }
}
