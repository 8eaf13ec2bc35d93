//! `skep secret create|ls|inspect|rm`.
//!
//! The value is read once (from a file or stdin) into a zeroizing buffer and sent with
//! `SecretCreate`; nothing the daemon returns afterwards contains it, only its digest.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::client::status;
use super::output::{Table, json_line, json_pretty};
use super::tasks::human_duration;
use super::{Format, print};
use crate::api::v1::{SecretCreateRequest, SecretInfo, SecretLookup};

type Api = super::client::Api;

/// Largest value read from a file or stdin (the daemon refuses more than 500 KiB).
const READ_LIMIT: u64 = 500 * 1024;

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
}

#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// Return once the version is stored, without waiting for the rollout.
    #[arg(short, long)]
    detach: bool,
    /// Secret name, ID or ID prefix.
    #[arg(value_name = "SECRET")]
    name: String,
    /// File holding the new value, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// Secret labels.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Secret name.
    #[arg(value_name = "NAME")]
    name: String,
    /// File holding the value, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct LsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Output format.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// Print the information in a human friendly format.
    #[arg(long)]
    pretty: bool,
    /// Secret name, ID or ID prefix.
    #[arg(value_name = "SECRET", required = true)]
    secrets: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct RmArgs {
    /// Secret name, ID or ID prefix.
    #[arg(value_name = "SECRET", required = true)]
    secrets: Vec<String>,
}

/// Refuses bad arguments before connecting.
pub(super) fn check(cmd: &SecretCommand) -> anyhow::Result<()> {
    if let SecretCommand::Create(a) = cmd {
        crate::spec::secret::validate_name(&a.name).map_err(|e| anyhow::anyhow!(e))?;
        labels(&a.labels)?;
    }
    Ok(())
}

pub(super) async fn run(api: &mut Api, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Create(a) => create(api, a).await,
        SecretCommand::Ls(a) => ls(api, a).await,
        SecretCommand::Inspect(a) => inspect(api, a).await,
        SecretCommand::Rm(a) => rm(api, a).await,
        SecretCommand::Update(a) => update(api, a).await,
    }
}

async fn update(api: &mut Api, a: UpdateArgs) -> anyhow::Result<()> {
    let mut value = read_value(&a.file)?;
    let req = crate::api::v1::SecretUpdateRequest {
        secret: a.name.clone(),
        value: std::mem::take(&mut *value),
        config: false,
    };
    let out = api.secret_update(req).await.map_err(status)?.into_inner();
    print(&format!(
        "{}: version {}\nrolling out to {} services, {} tasks (on-change per attachment)\n",
        out.name, out.version, out.services, out.tasks
    ))?;
    if a.detach {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let r = api
            .secret_rollout(crate::api::v1::SecretRolloutRequest {
                secret: out.name.clone(),
                config: false,
                action: String::new(),
            })
            .await
            .map_err(status)?
            .into_inner();
        if r.to != out.version {
            anyhow::bail!(
                "{} moved on to version {} (another update or a rollback) before version {} was rolled out",
                out.name,
                r.to,
                out.version
            );
        }
        eprint!(
            "\r  {}/{} tasks have version {} ({})   ",
            r.done, r.total, r.to, r.state
        );
        if r.state == "completed" {
            eprintln!();
            return Ok(());
        }
        if r.state == "paused" {
            eprintln!();
            anyhow::bail!(
                "the rollout is paused (`skep secret rollout {} --continue`)",
                out.name
            );
        }
        if std::time::Instant::now() > deadline {
            eprintln!();
            anyhow::bail!(
                "the rollout has not completed after 10 minutes; it goes on (`skep secret inspect {}`)",
                out.name
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
fn read_value(file: &std::path::Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    let what;
    if file.as_os_str() == "-" {
        what = "standard input".to_string();
        std::io::stdin()
            .lock()
            .take(READ_LIMIT + 1)
            .read_to_end(&mut buf)
            .context("reading the secret from standard input")?;
    } else {
        what = file.display().to_string();
        std::fs::File::open(file)
            .and_then(|f| f.take(READ_LIMIT + 1).read_to_end(&mut buf))
            .with_context(|| format!("reading the secret from {what}"))?;
    }
    if buf.len() as u64 > READ_LIMIT {
        anyhow::bail!("the secret in {what} is larger than 500 KiB");
    }
    if buf.is_empty() {
        anyhow::bail!("the secret in {what} is empty");
    }
    Ok(buf)
}

async fn create(api: &mut Api, a: CreateArgs) -> anyhow::Result<()> {
    let labels = labels(&a.labels)?;
    let value = read_value(&a.file)?;
    let mut value = value;
    // Moved, not copied, into the request; the zeroizing buffer is left empty.
    let req = SecretCreateRequest {
        name: a.name.clone(),
        labels,
        value: std::mem::take(&mut *value),
        config: false,
    };
    let id = api
        .secret_create(req)
        .await
        .map_err(status)?
        .into_inner()
        .id;
    print(&format!("{id}\n"))
}

async fn ls(api: &mut Api, a: LsArgs) -> anyhow::Result<()> {
    let mut secrets = api
        .secret_list(crate::api::v1::SecretListRequest::default())
        .await
        .map_err(status)?
        .into_inner()
        .secrets;
    secrets.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let text = if a.quiet {
        secrets.iter().map(|s| format!("{}\n", s.id)).collect()
    } else {
        match a.format {
            Format::Table => table(&secrets, OffsetDateTime::now_utc()),
            Format::Json => secrets.iter().map(|s| json_line(&ls_json(s))).collect(),
        }
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

fn table(secrets: &[SecretInfo], now: OffsetDateTime) -> String {
    let mut t = Table::new(&["ID", "NAME", "CREATED", "UPDATED"]);
    for s in secrets {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
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
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Labels": labels_text(s),
        "Digest": s.digest,
    })
}

fn labels_text(s: &SecretInfo) -> String {
    let mut l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    l.join(",")
}

/// `secret inspect`: Docker's layout, with the digest and size instead of a driver.
fn inspect_json(s: &SecretInfo) -> Value {
    let labels: serde_json::Map<String, Value> = s
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "ID": s.id,
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Spec": { "Name": s.name, "Labels": labels },
        "Digest": s.digest,
        "Size": s.size,
    })
}

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
    let _ = writeln!(out, "Digest:          sha256:{}", s.digest);
    let _ = writeln!(out, "Size:            {}", s.size);
    let _ = writeln!(out, "Created at:      {}", s.created_at);
    let _ = writeln!(out, "Updated at:      {}", s.updated_at);
    out
}

async fn inspect(api: &mut Api, a: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &a.secrets {
        match api
            .secret_inspect(SecretLookup {
                secret: name.clone(),
                config: false,
            })
            .await
        {
            Ok(r) => found.push(r.into_inner()),
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    let text = if a.pretty {
        found.iter().map(pretty).collect::<Vec<_>>().join("\n")
    } else {
        json_pretty(&Value::Array(found.iter().map(inspect_json).collect()))
    };
    print(&text)?;
    super::output::fail_with(errors)
}

async fn rm(api: &mut Api, a: RmArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for name in &a.secrets {
        match api
            .secret_remove(SecretLookup {
                secret: name.clone(),
                config: false,
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

    #[test]
    fn table_has_docker_columns() {
        let now = crate::util::parse_rfc3339("2026-01-01T00:02:00Z")
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let t = table(&[info()], now);
        assert!(t.starts_with("ID   NAME  CREATED"), "{t}");
        assert!(t.contains("2 minutes ago"), "{t}");
    }

    #[test]
    fn inspect_shows_digest() {
        let j = inspect_json(&info());
        assert_eq!(j["Digest"], "00ff");
        assert_eq!(j["Spec"]["Labels"]["a"], "b");
        assert!(pretty(&info()).contains("sha256:00ff"));
    }

    #[test]
    fn labels_need_a_key() {
        assert!(labels(&["=x".to_string()]).is_err());
        assert_eq!(labels(&["k=v".to_string()]).unwrap_or_default()["k"], "v");
    }
}
