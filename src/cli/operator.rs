//! `skep operator csr|sign|ls|revoke` (operator identities) and `skep context
//! create|use|ls|rm` (where the CLI connects, with which certificate).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::client::{Host, status};
use super::output::Table;
use super::{Format, print};

type Api = super::client::Api;

#[derive(Debug, Subcommand)]
pub(super) enum OperatorCommand {
    /// Make a key and a certificate signing request on this machine (the key never leaves it).
    Csr(CsrArgs),
    /// Sign an operator's CSR with a role (on a manager); prints the certificate (PEM).
    Sign(SignArgs),
    /// List operators.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Revoke an operator's certificate: its connections are cut at once.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub(super) struct CsrArgs {
    /// The operator's name.
    #[arg(long)]
    name: String,
    /// Directory for `key.pem` (mode 0600) and `NAME.csr`; created if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct SignArgs {
    /// Role: admin, deployer, auditor, or a role the RBAC policy names.
    #[arg(long)]
    role: String,
    /// Validity of the certificate (default 12h, at most 30d).
    #[arg(long, value_name = "DURATION", value_parser = super::positive_duration)]
    expiry: Option<Duration>,
    /// The operator's name (default: the CSR file's name without `.csr`).
    #[arg(long)]
    name: Option<String>,
    /// The CSR file (PEM or DER), as `operator csr` wrote it.
    #[arg(value_name = "CSR")]
    csr: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct LsArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
pub(super) struct RevokeArgs {
    /// Operator names.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum ContextCommand {
    /// Save a manager address and an operator certificate directory under a name.
    Create(ContextCreateArgs),
    /// Use a context from now on (`default`: this machine's local socket).
    Use(ContextUseArgs),
    /// List contexts.
    #[command(alias = "list")]
    Ls,
    /// Remove contexts.
    Rm(ContextUseArgs),
}

#[derive(Debug, Args)]
pub(super) struct ContextCreateArgs {
    /// The context's name.
    name: String,
    /// The manager: tcp://IP[:PORT].
    #[arg(long, value_name = "URL")]
    host: String,
    /// Directory with ca.pem, cert.pem and key.pem.
    #[arg(long, value_name = "DIR")]
    cert_dir: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct ContextUseArgs {
    /// The context's name.
    name: String,
}

/// `operator csr`: runs without a daemon.
pub(super) fn csr(args: &CsrArgs) -> anyhow::Result<()> {
    if !skep_pki::is_valid_operator_name(&args.name) {
        bail!("{}", skep_pki::PkiError::InvalidOperatorName);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let key_path = args.out.join("key.pem");
    if key_path.exists() {
        bail!(
            "{} exists: refusing to overwrite a key; pick another --out",
            key_path.display()
        );
    }
    let key = skep_pki::NodeKey::generate()?;
    let csr = key.csr_der()?;
    write_private(&key_path, key.pkcs8_pem().as_bytes())?;
    let csr_path = args.out.join(format!("{}.csr", args.name));
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr));
    std::fs::write(&csr_path, pem).with_context(|| format!("writing {}", csr_path.display()))?;
    print(&format!(
        "Key written to {} (keep it here). Have a manager sign {}:\n  skep operator sign --role ROLE {}\nthen put the certificate in {} and the swarm's root CA (`skep swarm ca -q`) in {}.\n",
        key_path.display(),
        csr_path.display(),
        csr_path.display(),
        args.out.join("cert.pem").display(),
        args.out.join("ca.pem").display(),
    ))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub(super) async fn run(api: &mut Api, cmd: OperatorCommand) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::Csr(a) => csr(&a),
        OperatorCommand::Sign(a) => {
            let bytes =
                std::fs::read(&a.csr).with_context(|| format!("reading {}", a.csr.display()))?;
            let der = match pem::parse(&bytes) {
                Ok(p) if p.tag() == "CERTIFICATE REQUEST" => p.into_contents(),
                Ok(p) => bail!("{}: a PEM {} is not a CSR", a.csr.display(), p.tag()),
                Err(_) => bytes,
            };
            let name = match &a.name {
                Some(n) => n.clone(),
                None => a
                    .csr
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string(),
            };
            let r = api
                .operator_sign(crate::api::v1::OperatorSignRequest {
                    csr_der: der,
                    name,
                    role: a.role,
                    expiry_secs: a.expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&r.cert_pem)
        }
        OperatorCommand::Ls(a) => {
            let r = api
                .operator_list(crate::api::v1::Empty {})
                .await
                .map_err(status)?
                .into_inner();
            if a.format != Format::Table {
                let items: Vec<serde_json::Value> = r
                    .operators_json
                    .iter()
                    .map(|l| serde_json::from_str(l).context("the daemon's operator record"))
                    .collect::<anyhow::Result<_>>()?;
                return print(&super::output::list(&a.format, &items, String::new)?);
            }
            let mut t = Table::new(&["NAME", "ROLE", "EXPIRES", "SERIAL", "SIGNED BY"]);
            for line in &r.operators_json {
                let op: crate::store::model::Operator =
                    serde_json::from_str(line).context("the daemon's operator record")?;
                t.row(vec![
                    op.name,
                    op.role,
                    op.not_after,
                    op.serial,
                    op.created_by,
                ]);
            }
            print(&t.render())
        }
        OperatorCommand::Revoke(a) => {
            let mut errors = Vec::new();
            for name in &a.names {
                match api
                    .operator_revoke(crate::api::v1::OperatorRevokeRequest { name: name.clone() })
                    .await
                {
                    Ok(_) => print(&format!("Operator {name} revoked.\n"))?,
                    Err(s) => errors.push(format!("{name}: {}", status(s))),
                }
            }
            super::output::fail_with(errors)
        }
    }
}

/// Where the CLI keeps its contexts: `SKEP_CONFIG`, else `~/.skep`.
pub(super) fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SKEP_CONFIG") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: set SKEP_CONFIG")?;
    Ok(PathBuf::from(home).join(".skep"))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Contexts {
    /// The context in use; empty: the local socket.
    #[serde(default)]
    current: String,
    #[serde(default)]
    contexts: BTreeMap<String, SavedContext>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedContext {
    host: String,
    cert_dir: PathBuf,
}

fn load() -> anyhow::Result<Contexts> {
    let path = config_dir()?.join("contexts.json");
    match std::fs::read(&path) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contexts::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(c: &Contexts) -> anyhow::Result<()> {
    let dir = config_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("contexts.json");
    std::fs::write(&path, serde_json::to_vec_pretty(c)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The host the CLI talks to: `--host`/`SKEP_HOST` (with `--cert-path`/`SKEP_CERT_PATH`
/// for tcp), else the current context, else the local socket.
pub(super) fn resolve_host(host: Option<&str>, cert_path: Option<&Path>) -> anyhow::Result<Host> {
    let with_certs = |mut h: Host, dir: Option<PathBuf>| {
        if let Host::Tcp { cert_dir, .. } = &mut h {
            *cert_dir = dir;
        }
        h
    };
    if let Some(text) = host {
        return Ok(with_certs(
            Host::parse(text)?,
            cert_path.map(Path::to_path_buf),
        ));
    }
    let c = load()?;
    if !c.current.is_empty() {
        let ctx = c.contexts.get(&c.current).with_context(|| {
            format!(
                "the current context {:?} does not exist: `skep context use default` or create it",
                c.current
            )
        })?;
        let dir = cert_path
            .map(Path::to_path_buf)
            .unwrap_or(ctx.cert_dir.clone());
        return Ok(with_certs(Host::parse(&ctx.host)?, Some(dir)));
    }
    Host::parse(super::DEFAULT_HOST)
}

/// The name of the context the CLI uses: `default` when `--host` (or `SKEP_HOST`) is given
/// or no context is current, as Docker's `Context:` line reads.
pub(super) fn context_name(host: Option<&str>) -> String {
    match (host, load()) {
        (None, Ok(c)) if !c.current.is_empty() => c.current,
        _ => "default".to_string(),
    }
}

/// `context ...`: local files only.
pub(super) fn context(cmd: ContextCommand) -> anyhow::Result<()> {
    let mut c = load()?;
    match cmd {
        ContextCommand::Create(a) => {
            if a.name == "default" || !skep_pki::is_valid_operator_name(&a.name) {
                bail!(
                    "invalid context name {:?}: lower-case letters, digits, '.', '_', '-' (not \"default\")",
                    a.name
                );
            }
            if !matches!(Host::parse(&a.host)?, Host::Tcp { .. }) {
                bail!("--host must be tcp://IP[:PORT] (the local socket is the `default` context)");
            }
            super::client::operator_credentials(&a.cert_dir).with_context(|| {
                format!(
                    "--cert-dir {} must hold ca.pem, cert.pem and key.pem",
                    a.cert_dir.display()
                )
            })?;
            let dir = std::fs::canonicalize(&a.cert_dir)?;
            c.contexts.insert(
                a.name.clone(),
                SavedContext {
                    host: a.host,
                    cert_dir: dir,
                },
            );
            save(&c)?;
            print(&format!("{}\n", a.name))
        }
        ContextCommand::Use(a) => {
            if a.name == "default" {
                c.current.clear();
            } else if c.contexts.contains_key(&a.name) {
                c.current = a.name.clone();
            } else {
                bail!("context {:?} not found (`skep context ls`)", a.name);
            }
            save(&c)?;
            print(&format!("Current context is now {:?}\n", a.name))
        }
        ContextCommand::Ls => {
            let mut t = Table::new(&["NAME", "HOST", "CERT DIR"]);
            let mark = |n: &str| {
                if n == c.current || (n == "default" && c.current.is_empty()) {
                    format!("{n} *")
                } else {
                    n.to_string()
                }
            };
            t.row(vec![
                mark("default"),
                super::DEFAULT_HOST.into(),
                String::new(),
            ]);
            for (name, ctx) in &c.contexts {
                t.row(vec![
                    mark(name),
                    ctx.host.clone(),
                    ctx.cert_dir.display().to_string(),
                ]);
            }
            print(&t.render())
        }
        ContextCommand::Rm(a) => {
            if c.contexts.remove(&a.name).is_none() {
                bail!("context {:?} not found", a.name);
            }
            if c.current == a.name {
                c.current.clear();
            }
            save(&c)?;
            print(&format!("{}\n", a.name))
        }
    }
}
