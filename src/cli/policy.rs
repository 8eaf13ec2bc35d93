//! `skep policy get|set|validate` (the Cedar policies that entitle services to secrets) and
//! `skep agent secrets` (what this node's agent has received).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::client::status;
use super::output::Table;
use super::{Format, print};
use crate::api::v1::{Empty, PolicySetRequest};

type Api = super::client::Api;

/// Largest policy file read (the engine refuses more, too).
const READ_LIMIT: u64 = 1024 * 1024;

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Print the policy set in force (Cedar text).
    Get(GetArgs),
    /// Replace the policy set in force; an invalid set is refused and the old one stays.
    Set(SetArgs),
    /// Check a policy file against skep's schema, without a daemon.
    Validate(ValidateArgs),
}

#[derive(Debug, Args)]
pub(super) struct GetArgs {
    /// Print only the digest (hex SHA-256) of the policy set.
    #[arg(long)]
    digest: bool,
    /// The operator RBAC policies (`policies/rbac.cedarschema`) instead of the secret ones.
    #[arg(long)]
    rbac: bool,
}

#[derive(Debug, Args)]
pub(super) struct SetArgs {
    /// The operator RBAC policies (`policies/rbac.cedarschema`) instead of the secret ones.
    #[arg(long)]
    rbac: bool,
    /// Go back to the built-in default (a service may use the secrets it references).
    #[arg(long, conflicts_with = "file")]
    default: bool,
    /// Cedar policy file, or `-` for stdin.
    #[arg(value_name = "FILE|-", required_unless_present = "default")]
    file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct ValidateArgs {
    /// Check against the operator RBAC schema instead of the secret one.
    #[arg(long)]
    rbac: bool,
    /// Cedar policy file, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(super) enum AgentCommand {
    /// Secrets this node's agent holds and has received since it started (names, IDs and
    /// digests; never values).
    Secrets(AgentSecretsArgs),
}

#[derive(Debug, Args)]
pub(super) struct AgentSecretsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Reads a policy file (or stdin for `-`), at most 1 MiB.
fn read_policy(file: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(READ_LIMIT + 1)
            .read_to_string(&mut text)
            .context("reading the policy from stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("opening {}", file.display()))?
            .take(READ_LIMIT + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {} (a policy file is UTF-8 text)", file.display()))?;
    }
    if text.len() as u64 > READ_LIMIT {
        anyhow::bail!("{}: a policy set is at most 1 MiB", file.display());
    }
    Ok(text)
}

/// `policy validate`: parses and type-checks locally, with the schema built into this binary.
pub(super) fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let text = read_policy(&args.file)?;
    let digest = if args.rbac {
        crate::policy::rbac::RbacEngine::parse(&text).map(|e| e.digest().to_string())
    } else {
        crate::policy::PolicyEngine::parse(&text).map(|e| e.digest().to_string())
    }
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    print(&format!(
        "{}: valid (digest {digest})\n",
        args.file.display()
    ))
}

pub(super) async fn run(api: &mut Api, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Get(a) => {
            let p = api
                .policy_get(crate::api::v1::PolicyGetRequest { rbac: a.rbac })
                .await
                .map_err(status)?
                .into_inner();
            if a.digest {
                print(&format!("{}\n", p.digest))
            } else {
                let mut text = p.text;
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                print(&text)
            }
        }
        PolicyCommand::Set(a) => {
            let text = match &a.file {
                Some(f) if !a.default => read_policy(f)?,
                _ => String::new(),
            };
            let p = api
                .policy_set(PolicySetRequest {
                    text,
                    reset: a.default,
                    rbac: a.rbac,
                })
                .await
                .map_err(status)?
                .into_inner();
            let what = if p.is_default {
                "the built-in default"
            } else {
                "the new policy set"
            };
            print(&format!(
                "Policy updated: {what} is in force (digest {}).\n",
                p.digest
            ))
        }
        PolicyCommand::Validate(a) => validate(&a),
    }
}

pub(super) async fn agent(api: &mut Api, cmd: AgentCommand) -> anyhow::Result<()> {
    let AgentCommand::Secrets(a) = cmd;
    let resp = api
        .agent_secrets(Empty {})
        .await
        .map_err(status)?
        .into_inner();
    let received: Vec<crate::agent::secrets::Received> = resp
        .received_json
        .iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    match &a.format {
        f @ (Format::Json | Format::Template(_) | Format::TableTemplate(_)) => {
            let items: Vec<serde_json::Value> = received
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()?;
            print(&super::output::list(f, &items, String::new)?)
        }
        Format::Table => {
            let mut t = Table::new(&["ID", "NAME", "DIGEST", "RECEIVED", "HELD"]);
            for r in &received {
                t.row(vec![
                    r.id.clone(),
                    r.name.clone(),
                    r.digest.chars().take(12).collect(),
                    r.at.clone(),
                    if r.held { "yes" } else { "no" }.to_string(),
                ]);
            }
            print(&t.render())
        }
    }
}
