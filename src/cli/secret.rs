//! `skep secret create|ls|inspect|rm|update|rollback|rollout`, and the same commands for
//! configs (`skep config ...`, [`super::config`]): both go through the same Control RPCs, a
//! config with `config: true`.
//!
//! A value is read once (from a file or stdin) into a zeroizing buffer and sent with
//! `SecretCreate` or `SecretUpdate`; nothing the daemon returns afterwards contains a secret's
//! value, only its digest. A config's value is not sensitive: `config inspect` shows it, as
//! Docker's does.
//!
//! ```text
//! secret update NAME FILE ─► SecretUpdate ─► "NAME: version N" and what follows it
//!                         ─► SecretRollout polled ─► progress::rollout_snapshot ─► a bar
//!                            until completed; paused, or another version current: an error
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::client::status;
use super::filter::{self, Filters};
use super::output::{self, Table, json_pretty};
use super::tasks::{human_duration, short_id};
use super::{Format, print};
use crate::api::v1::{
    RolloutInfo, SecretCreateRequest, SecretInfo, SecretLookup, SecretRolloutRequest,
    SecretUpdateRequest, SecretUpdateResponse,
};

type Api = super::client::Api;

/// Largest value read from a file or stdin (the daemon refuses more than 500 KiB).
const READ_LIMIT: u64 = 500 * 1024;

/// Which objects a command works on: secrets and configs share the commands and the RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Secret,
    Config,
}

impl Kind {
    fn config(self) -> bool {
        self == Kind::Config
    }

    /// `secret` or `config`, as the commands name them.
    fn word(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum SecretCommand {
    /// Create a secret from a file or STDIN as content.
    Create(CreateArgs),
    /// List secrets.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more secrets (never their values).
    Inspect(InspectArgs),
    /// Remove one or more secrets.
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Add a new version from a file or STDIN, and roll it out to the tasks that follow it.
    Update(UpdateArgs),
    /// Make the previous kept version current again, and roll it out.
    Rollback(RollbackArgs),
    /// Show the rollout of the current version; pause or continue it.
    Rollout(RolloutArgs),
}

#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// Return once the version is stored, without waiting for the rollout.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Name, ID or ID prefix.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// File holding the new value, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct RollbackArgs {
    /// Return once the version is current, without waiting for the rollout.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Name, ID or ID prefix.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub(super) struct RolloutArgs {
    /// Stop moving tasks to the current version (tasks that have it keep it).
    #[arg(long, conflicts_with = "resume")]
    pub pause: bool,
    /// Continue a paused rollout.
    #[arg(long = "continue")]
    pub resume: bool,
    /// Name, ID or ID prefix.
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// Labels.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// File holding the value, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct LsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter output based on conditions provided (id, label, name).
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Format output: table, json, or a Go template (`{{.Name}}`).
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// Print the information in a human friendly format.
    #[arg(long, conflicts_with = "format")]
    pub pretty: bool,
    /// Format output using a Go template (`{{.Spec.Name}}`), or json.
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// Name, ID or ID prefix.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct RmArgs {
    /// Name, ID or ID prefix.
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

/// Refuses bad arguments before connecting.
pub(super) fn check(cmd: &SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Create(a) => check_create(a, Kind::Secret),
        _ => Ok(()),
    }
}

/// The name and labels of `create`, checked before connecting.
pub(super) fn check_create(a: &CreateArgs, kind: Kind) -> anyhow::Result<()> {
    match kind {
        Kind::Secret => crate::spec::secret::validate_name(&a.name),
        Kind::Config => crate::spec::config_target::validate_name(&a.name),
    }
    .map_err(|e| anyhow::anyhow!(e))?;
    labels(&a.labels)?;
    Ok(())
}

pub(super) async fn run(api: &mut Api, cmd: SecretCommand, kind: Kind) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Create(a) => create(api, a, kind).await,
        SecretCommand::Ls(a) => ls(api, a, kind).await,
        SecretCommand::Inspect(a) => inspect(api, a, kind).await,
        SecretCommand::Rm(a) => rm(api, a, kind).await,
        SecretCommand::Update(a) => update(api, a, kind).await,
        SecretCommand::Rollback(a) => rollback(api, a, kind).await,
        SecretCommand::Rollout(a) => rollout(api, a, kind).await,
    }
}

async fn update(api: &mut Api, a: UpdateArgs, kind: Kind) -> anyhow::Result<()> {
    let mut value = read_value(&a.file, kind)?;
    let req = SecretUpdateRequest {
        secret: a.name.clone(),
        // Moved, not copied, into the request; the zeroizing buffer is left empty.
        value: std::mem::take(&mut *value),
        config: kind.config(),
    };
    let out = api.secret_update(req).await.map_err(status)?.into_inner();
    started(api, &out, kind, a.detach, a.quiet).await
}

async fn rollback(api: &mut Api, a: RollbackArgs, kind: Kind) -> anyhow::Result<()> {
    let out = api
        .secret_rollback(SecretLookup {
            secret: a.name.clone(),
            config: kind.config(),
        })
        .await
        .map_err(status)?
        .into_inner();
    started(api, &out, kind, a.detach, a.quiet).await
}

/// After `update` or `rollback`: says which version is current and what follows it, then
/// waits for the rollout unless `detach`.
async fn started(
    api: &mut Api,
    out: &SecretUpdateResponse,
    kind: Kind,
    detach: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    print(&started_text(out))?;
    if detach {
        return Ok(());
    }
    super::progress::wait_rollout(
        api,
        kind.config(),
        kind.word(),
        &out.name,
        out.version,
        quiet,
    )
    .await
}

/// `db_password: version 2` and `rolling out to 3 services, 14 tasks (on-change per
/// attachment)`.
fn started_text(out: &SecretUpdateResponse) -> String {
    let plural = |n: u64, one: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    format!(
        "{}: version {}\nrolling out to {}, {} (on-change per attachment)\n",
        out.name,
        out.version,
        plural(out.services, "service"),
        plural(out.tasks, "task"),
    )
}

async fn rollout(api: &mut Api, a: RolloutArgs, kind: Kind) -> anyhow::Result<()> {
    let action = if a.pause {
        "pause"
    } else if a.resume {
        "continue"
    } else {
        ""
    };
    let r = api
        .secret_rollout(SecretRolloutRequest {
            secret: a.name.clone(),
            config: kind.config(),
            action: action.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    print(&format!("{}\n", rollout_line(&r)))
}

/// One line about a rollout: `db: version 1 -> 2 rolling, 3/14 tasks have version 2`.
pub(super) fn rollout_line(r: &RolloutInfo) -> String {
    if r.state == "none" {
        return format!("{}: version {}, no rollout", r.name, r.to);
    }
    let mut line = format!(
        "{}: version {} -> {}{} {}, {}/{} tasks have version {}",
        r.name,
        r.from,
        r.to,
        if r.rollback { " (rollback)" } else { "" },
        r.state,
        r.done,
        r.total,
        r.to
    );
    if r.restarting > 0 {
        let _ = write!(line, " ({} being replaced)", r.restarting);
    }
    line
}

fn labels(args: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for l in args {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            anyhow::bail!(
                "invalid --label {}: the key is empty (KEY=VALUE)",
                crate::util::quote(l)
            );
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Reads the value from a file or stdin (`-`) into a zeroizing buffer, refusing more than
/// 500 KiB without reading it all.
fn read_value(file: &std::path::Path, kind: Kind) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let word = kind.word();
    let mut buf = Zeroizing::new(Vec::new());
    let what;
    if file.as_os_str() == "-" {
        what = "standard input".to_string();
        std::io::stdin()
            .lock()
            .take(READ_LIMIT + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading the {word} from standard input"))?;
    } else {
        what = file.display().to_string();
        std::fs::File::open(file)
            .and_then(|f| f.take(READ_LIMIT + 1).read_to_end(&mut buf))
            .with_context(|| format!("reading the {word} from {what}"))?;
    }
    if buf.len() as u64 > READ_LIMIT {
        anyhow::bail!("the {word} in {what} is larger than 500 KiB");
    }
    if buf.is_empty() {
        anyhow::bail!("the {word} in {what} is empty");
    }
    Ok(buf)
}

async fn create(api: &mut Api, a: CreateArgs, kind: Kind) -> anyhow::Result<()> {
    let labels = labels(&a.labels)?;
    let mut value = read_value(&a.file, kind)?;
    // Moved, not copied, into the request; the zeroizing buffer is left empty.
    let req = SecretCreateRequest {
        name: a.name.clone(),
        labels,
        value: std::mem::take(&mut *value),
        config: kind.config(),
    };
    let id = api
        .secret_create(req)
        .await
        .map_err(status)?
        .into_inner()
        .id;
    print(&format!("{id}\n"))
}

async fn ls(api: &mut Api, a: LsArgs, kind: Kind) -> anyhow::Result<()> {
    let mut secrets = api
        .secret_list(crate::api::v1::SecretListRequest {
            config: kind.config(),
        })
        .await
        .map_err(status)?
        .into_inner()
        .secrets;
    secrets.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let filters = Filters::parse(&a.filter, filter::OBJECT_KEYS)?;
    secrets.retain(|s| {
        let labels = s.labels.clone().into_iter().collect();
        filter::objects(&filters, &s.id, &s.name, &labels)
    });
    let text = if a.quiet {
        secrets.iter().map(|s| format!("{}\n", s.id)).collect()
    } else {
        let items: Vec<Value> = secrets.iter().map(ls_json).collect();
        output::list(&a.format, &items, || {
            table(&secrets, OffsetDateTime::now_utc())
        })?
    };
    print(&text)
}

/// "2 minutes ago", as Docker's CREATED and UPDATED columns.
fn ago(at: &str, now: OffsetDateTime) -> String {
    match crate::util::parse_rfc3339(at) {
        Some(t) => {
            let age = std::time::Duration::try_from((now - t).max(time::Duration::ZERO))
                .unwrap_or_default();
            format!("{} ago", human_duration(age))
        }
        None => at.to_string(),
    }
}

/// Docker's columns (ID, NAME, CREATED, UPDATED) with the current VERSION after the name.
fn table(secrets: &[SecretInfo], now: OffsetDateTime) -> String {
    let mut t = Table::new(&["ID", "NAME", "VERSION", "CREATED", "UPDATED"]);
    for s in secrets {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.version.to_string(),
            ago(&s.created_at, now),
            ago(&s.updated_at, now),
        ]);
    }
    t.render()
}

fn ls_json(s: &SecretInfo) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Version": s.version,
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Labels": labels_text(s),
        "Driver": "",
        "Digest": s.digest,
    })
}

fn labels_text(s: &SecretInfo) -> String {
    let mut l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    l.join(",")
}

/// `inspect`: Docker's layout (a config's `Spec.Data` in base64), with the current version,
/// its digest and size, every kept version with who uses it, and the last rollout.
fn inspect_json(s: &SecretInfo) -> Value {
    let labels: serde_json::Map<String, Value> = s
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut spec = json!({ "Name": s.name, "Labels": labels });
    if s.config {
        spec["Data"] = Value::String(base64::engine::general_purpose::STANDARD.encode(&s.data));
    }
    let versions: Vec<Value> = s
        .versions
        .iter()
        .map(|v| {
            json!({
                "Version": v.version,
                "Digest": v.digest,
                "Size": v.size,
                "CreatedAt": v.created_at,
                "Current": v.current,
                "Services": v.services,
                "Nodes": v.nodes,
                "Tasks": v.tasks,
            })
        })
        .collect();
    let rollout = s.rollout.as_ref().map_or(Value::Null, |r| {
        json!({
            "From": r.from,
            "To": r.to,
            "State": r.state,
            "Rollback": r.rollback,
            "StartedAt": r.started_at,
            "UpdatedAt": r.updated_at,
            "Total": r.total,
            "Done": r.done,
            "Restarting": r.restarting,
        })
    });
    json!({
        "ID": s.id,
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Spec": spec,
        "Version": s.version,
        "Digest": s.digest,
        "Size": s.size,
        "Versions": versions,
        "Rollout": rollout,
    })
}

/// `inspect --pretty`: the fields, a table of the kept versions (digests and who holds each,
/// never a secret's value), the rollout, and a config's data as text (as Docker shows it).
fn pretty(s: &SecretInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ID:              {}", s.id);
    let _ = writeln!(out, "Name:            {}", s.name);
    if !s.labels.is_empty() {
        let _ = writeln!(out, "Labels:");
        let mut l: Vec<_> = s.labels.iter().collect();
        l.sort();
        for (k, v) in l {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    let _ = writeln!(out, "Version:         {}", s.version);
    let _ = writeln!(out, "Digest:          sha256:{}", s.digest);
    let _ = writeln!(out, "Size:            {}", s.size);
    let _ = writeln!(out, "Created at:      {}", s.created_at);
    let _ = writeln!(out, "Updated at:      {}", s.updated_at);
    if !s.versions.is_empty() {
        let _ = writeln!(out, "Versions:");
        let mut t = Table::new(&[
            "VERSION", "DIGEST", "SIZE", "CREATED", "SERVICES", "NODES", "TASKS",
        ]);
        for v in &s.versions {
            let nodes: Vec<&str> = v.nodes.iter().map(|n| short_id(n)).collect();
            t.row(vec![
                format!("{}{}", v.version, if v.current { " *" } else { "" }),
                format!("sha256:{}", v.digest.get(..12).unwrap_or(&v.digest)),
                v.size.to_string(),
                v.created_at.clone(),
                dash(&v.services.join(",")),
                dash(&nodes.join(",")),
                v.tasks.to_string(),
            ]);
        }
        for line in t.render().lines() {
            let _ = writeln!(out, " {line}");
        }
    }
    if let Some(r) = &s.rollout {
        let _ = writeln!(out, "Rollout:         {}", rollout_line(r));
    }
    if s.config {
        let _ = writeln!(out, "Data:");
        out.push_str(&String::from_utf8_lossy(&s.data));
        if !s.data.ends_with(b"\n") {
            out.push('\n');
        }
    }
    out
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

async fn inspect(api: &mut Api, a: InspectArgs, kind: Kind) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &a.names {
        match api
            .secret_inspect(SecretLookup {
                secret: name.clone(),
                config: kind.config(),
            })
            .await
        {
            Ok(r) => {
                let mut info = r.into_inner();
                if !kind.config() {
                    // Never a secret's value, whatever a daemon sends.
                    info.data = Vec::new();
                }
                found.push(info);
            }
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    let text = if let Some(format) = &a.format {
        let items: Vec<Value> = found.iter().map(inspect_json).collect();
        output::inspect(Some(format), &items)?
    } else if a.pretty {
        found.iter().map(pretty).collect::<Vec<_>>().join("\n")
    } else {
        json_pretty(&Value::Array(found.iter().map(inspect_json).collect()))
    };
    print(&text)?;
    super::output::fail_with(errors)
}

async fn rm(api: &mut Api, a: RmArgs, kind: Kind) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for name in &a.names {
        match api
            .secret_remove(SecretLookup {
                secret: name.clone(),
                config: kind.config(),
            })
            .await
        {
            Ok(_) => print(&format!("{name}\n"))?,
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    super::output::fail_with(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v1::SecretVersionInfo;

    fn info() -> SecretInfo {
        SecretInfo {
            id: "abc".into(),
            name: "db".into(),
            labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
            digest: "00ff".into(),
            size: 3,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            version: 1,
            ..Default::default()
        }
    }

    fn versioned() -> SecretInfo {
        let mut s = info();
        s.version = 2;
        s.digest = "bbbbbbbbbbbbbbbbbbbb".into();
        s.versions = vec![
            SecretVersionInfo {
                version: 1,
                digest: "aaaaaaaaaaaaaaaaaaaa".into(),
                size: 3,
                services: vec!["pinned".into()],
                nodes: vec!["node-one-0123456789".into()],
                tasks: 1,
                ..Default::default()
            },
            SecretVersionInfo {
                version: 2,
                digest: "bbbbbbbbbbbbbbbbbbbb".into(),
                size: 4,
                current: true,
                services: vec!["web".into()],
                ..Default::default()
            },
        ];
        s.rollout = Some(RolloutInfo {
            from: 1,
            to: 2,
            state: "rolling".into(),
            total: 14,
            done: 10,
            name: "db".into(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn table_has_docker_columns_and_the_version() {
        let now = crate::util::parse_rfc3339("2026-01-01T00:02:00Z")
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let t = table(&[versioned()], now);
        assert!(t.starts_with("ID   NAME  VERSION  CREATED"), "{t}");
        assert!(t.lines().nth(1).is_some_and(|l| l.contains("  2  ")), "{t}");
        assert!(t.contains("2 minutes ago"), "{t}");
        assert_eq!(ls_json(&versioned())["Version"], 2);
    }

    #[test]
    fn inspect_shows_digest_versions_and_rollout() {
        let j = inspect_json(&info());
        assert_eq!(j["Digest"], "00ff");
        assert_eq!(j["Spec"]["Labels"]["a"], "b");
        assert!(j["Spec"].get("Data").is_none(), "{j}");
        assert!(pretty(&info()).contains("sha256:00ff"));

        let v = versioned();
        let j = inspect_json(&v);
        assert_eq!(j["Versions"][0]["Services"][0], "pinned");
        assert_eq!(j["Versions"][1]["Current"], true);
        assert_eq!(j["Rollout"]["Done"], 10);
        let p = pretty(&v);
        assert!(p.contains("2 *"), "{p}");
        assert!(p.contains("sha256:aaaaaaaaaaaa "), "{p}");
        assert!(p.contains("node-one-012 "), "{p}");
        assert!(
            p.contains("db: version 1 -> 2 rolling, 10/14 tasks have version 2"),
            "{p}"
        );
        assert!(!p.contains("Data:"), "{p}");
    }

    #[test]
    fn a_config_shows_its_data_as_docker_does() {
        let mut c = info();
        c.config = true;
        c.data = b"worker_processes 4;\n".to_vec();
        let j = inspect_json(&c);
        assert_eq!(j["Spec"]["Data"], "d29ya2VyX3Byb2Nlc3NlcyA0Owo=");
        assert!(
            pretty(&c).ends_with("Data:\nworker_processes 4;\n"),
            "{}",
            pretty(&c)
        );
    }

    #[test]
    fn update_says_what_follows() {
        let out = SecretUpdateResponse {
            version: 2,
            services: 3,
            tasks: 14,
            name: "db_password".into(),
        };
        assert_eq!(
            started_text(&out),
            "db_password: version 2\nrolling out to 3 services, 14 tasks (on-change per attachment)\n"
        );
        let one = SecretUpdateResponse {
            services: 1,
            tasks: 1,
            ..out
        };
        assert!(started_text(&one).contains("to 1 service, 1 task ("));
    }

    #[test]
    fn labels_need_a_key() {
        assert!(labels(&["=x".to_string()]).is_err());
        assert_eq!(labels(&["k=v".to_string()]).unwrap_or_default()["k"], "v");
    }
}
