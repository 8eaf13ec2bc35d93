//! `skep swarm init|join|leave|unlock|update` and `skep join-token`.

use std::io::IsTerminal as _;

use anyhow::{Context as _, bail};
use zeroize::{Zeroize as _, Zeroizing};

use super::client::status;
use super::{
    JoinTokenArgs, Role, SwarmInitArgs, SwarmJoinArgs, SwarmLeaveArgs, SwarmUpdateArgs, print,
};
use crate::api::v1::{
    JoinTokenRequest, SwarmInitRequest, SwarmJoinRequest, SwarmLeaveRequest, SwarmUnlockRequest,
    SwarmUpdateRequest,
};

type Api = super::client::Api;

pub(super) async fn init(api: &mut Api, args: SwarmInitArgs) -> anyhow::Result<()> {
    if args.force_new_cluster {
        return force_new_cluster(api, args).await;
    }
    let resp = api
        .swarm_init(SwarmInitRequest {
            advertise_addr: args.advertise_addr.unwrap_or_default(),
            cert_expiry_secs: args.cert_expiry.as_secs().max(1),
            autolock: args.autolock,
            trust_domain: args.trust_domain.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(status)?
        .into_inner();
    print(&init_message(
        &resp.node_id,
        &resp.worker_token,
        &resp.advertise_addr,
        &resp.unlock_key,
    ))
}

/// `swarm init --force-new-cluster`: asks once without a key; a locked manager says so, and
/// then the unlock key is read from stdin and the request made again.
async fn force_new_cluster(api: &mut Api, args: SwarmInitArgs) -> anyhow::Result<()> {
    let mut req = SwarmInitRequest {
        advertise_addr: args.advertise_addr.unwrap_or_default(),
        force_new_cluster: true,
        ..Default::default()
    };
    let resp = match api.swarm_init(req.clone()).await {
        Ok(r) => r,
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains(crate::api::LOCKED_FOR_RECOVERY) =>
        {
            req.unlock_key = read_unlock_key()?.to_string();
            let r = api.swarm_init(req.clone()).await;
            req.unlock_key.zeroize();
            r.map_err(status)?
        }
        Err(s) => return Err(status(s)),
    }
    .into_inner();
    print(&format!(
        "Swarm recovered: current node ({}) is now the only manager, at {}.
         The other managers were removed; to add managers, run 'skep join-token manager' on this          node and join new ones (a former manager must clear its data directory first).

{}",
        resp.node_id,
        resp.advertise_addr,
        join_instructions(Role::Worker, &resp.worker_token, &resp.advertise_addr)
    ))
}

/// What `swarm init` prints, worded as `docker swarm init` words it.
fn init_message(node_id: &str, worker_token: &str, addr: &str, unlock_key: &str) -> String {
    let mut text = format!(
        "Swarm initialized: current node ({node_id}) is now a manager.\n\n{}\
         To add a manager to this swarm, run 'skep join-token manager' and follow the instructions.\n\n",
        join_instructions(Role::Worker, worker_token, addr)
    );
    if !unlock_key.is_empty() {
        text.push_str(&unlock_instructions(unlock_key));
    }
    text
}

fn join_instructions(role: Role, token: &str, addr: &str) -> String {
    format!(
        "To add a {} to this swarm, run the following command:\n\n    \
         skep swarm join --token {token} {addr}\n\n",
        role.as_str()
    )
}

fn unlock_instructions(key: &str) -> String {
    format!(
        "To unlock a swarm manager after it restarts, run the `skep swarm unlock`\n\
         command and provide the following key:\n\n    {key}\n\n\
         Please remember to store this key in a password manager, since without it you\n\
         will not be able to restart the manager.\n"
    )
}

pub(super) async fn join(api: &mut Api, args: SwarmJoinArgs) -> anyhow::Result<()> {
    let resp = api
        .swarm_join(SwarmJoinRequest {
            token: args.token,
            remote_addr: args.remote_addr,
            advertise_addr: args.advertise_addr.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    print(&format!("This node joined a swarm as a {}.\n", resp.role))
}

pub(super) async fn leave(api: &mut Api, args: SwarmLeaveArgs) -> anyhow::Result<()> {
    api.swarm_leave(SwarmLeaveRequest { force: args.force })
        .await
        .map_err(status)?;
    print("Node left the swarm.\n")
}

/// `swarm update`: cluster settings.
pub(super) async fn update(api: &mut Api, args: SwarmUpdateArgs) -> anyhow::Result<()> {
    let req = update_request(&args)?;
    let resp = api.swarm_update(req).await.map_err(status)?.into_inner();
    let mut text = "Swarm updated.\n".to_string();
    if !resp.unlock_key.is_empty() {
        text.push_str(&unlock_instructions(&resp.unlock_key));
    }
    print(&text)
}

/// `swarm unlock-key [-q] [--rotate]`.
pub(super) async fn unlock_key(api: &mut Api, args: super::UnlockKeyArgs) -> anyhow::Result<()> {
    let key = api
        .unlock_key(crate::api::v1::UnlockKeyRequest {
            rotate: args.rotate,
        })
        .await
        .map_err(status)?
        .into_inner()
        .unlock_key;
    let key = Zeroizing::new(key);
    if args.quiet {
        return print(&format!("{}\n", key.as_str()));
    }
    let mut text = String::new();
    if args.rotate {
        text.push_str("Successfully rotated manager unlock key.\n\n");
    }
    text.push_str(&unlock_instructions(&key));
    print(&text)
}

/// `swarm ca [--rotate]`: prints the root CA certificate; a rotation shows its progress until
/// every node holds a certificate of the new root, then prints the join tokens, which now
/// pin it.
pub(super) async fn ca(api: &mut Api, args: super::SwarmCaArgs) -> anyhow::Result<()> {
    let read = |path: &std::path::PathBuf, what: &str| {
        std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let cert = args
        .ca_cert
        .as_ref()
        .map(|p| read(p, "--ca-cert"))
        .transpose()?;
    let key = args
        .ca_key
        .as_ref()
        .map(|p| read(p, "--ca-key"))
        .transpose()?;
    if !args.rotate && (cert.is_some() || args.cert_expiry.is_some()) {
        bail!("--ca-cert, --ca-key and --cert-expiry apply to a rotation: add --rotate");
    }
    let mut req = crate::api::v1::SwarmCaRequest {
        rotate: args.rotate,
        ca_cert_pem: cert.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        ca_key_pem: key.as_ref().map(|k| k.to_string()).unwrap_or_default(),
        cert_expiry_secs: args.cert_expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
    };
    let first = api.swarm_ca(req.clone()).await.map_err(status);
    zeroize::Zeroize::zeroize(&mut req.ca_key_pem);
    let mut resp = first?.into_inner();
    let target = resp.digest.clone();
    if args.detach || !resp.rotating {
        return print(&ca_message(&resp, args.quiet, None));
    }
    let tty = std::io::stdout().is_terminal() && !args.quiet;
    let mut drawn = false;
    let mut last = String::new();
    loop {
        let line = format!(
            "desired root digest: {target}\n  rotated TLS certificates:  {} {}/{} nodes\n",
            super::progress::bar(resp.nodes_done as usize, resp.nodes_total as usize),
            resp.nodes_done,
            resp.nodes_total
        );
        if !args.quiet && line != last {
            let mut out = String::new();
            if tty && drawn {
                out.push_str("\x1b[2A\x1b[J");
            }
            out.push_str(&line);
            print(&out)?;
            drawn = true;
            last = line;
        }
        if !resp.rotating && resp.digest == target {
            break;
        }
        if resp.digest != target {
            bail!(
                "another root CA rotation (to {}) replaced this one; follow it with `skep swarm ca`",
                resp.digest
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        resp = api
            .swarm_ca(crate::api::v1::SwarmCaRequest::default())
            .await
            .map_err(status)?
            .into_inner();
    }
    // The tokens changed digest: show them (read through the audited join-token call).
    let mut tokens = Vec::new();
    if !args.quiet {
        for role in ["worker", "manager"] {
            let t = api
                .join_token(JoinTokenRequest {
                    role: role.into(),
                    rotate: false,
                })
                .await
                .map_err(status)?
                .into_inner();
            tokens.push(Zeroizing::new(t.token));
        }
    }
    print(&ca_message(&resp, args.quiet, tokens.get(..2)))
}

/// What `swarm ca` prints once no rotation is running (or when not waiting for one).
fn ca_message(
    resp: &crate::api::v1::SwarmCaResponse,
    quiet: bool,
    tokens: Option<&[Zeroizing<String>]>,
) -> String {
    if quiet {
        return resp.root_pem.clone();
    }
    let mut out = String::new();
    if resp.rotating {
        out.push_str(&format!(
            "Root CA rotation to {} in progress: {}/{} nodes re-issued. Follow it with `skep swarm ca`.\n",
            resp.digest, resp.nodes_done, resp.nodes_total
        ));
    }
    if let Some([worker, manager]) = tokens {
        out.push_str(&format!(
            "Root CA rotated to {}. The join tokens now pin it:\n  worker:  {}\n  manager: {}\n",
            resp.digest,
            worker.as_str(),
            manager.as_str()
        ));
    }
    out.push_str(&resp.root_pem);
    out
}

/// The request `swarm update` sends, checked before anything is sent.
pub(super) fn update_request(args: &SwarmUpdateArgs) -> anyhow::Result<SwarmUpdateRequest> {
    if args.cert_expiry.is_none()
        && args.dispatcher_heartbeat.is_none()
        && args.autolock.is_none()
        && args.audit_retention.is_none()
        && args.secret_history_limit.is_none()
        && args.svid_ttl.is_none()
        && args.oidc_issuer.is_none()
    {
        bail!(
            "nothing to update: give --dispatcher-heartbeat, --cert-expiry, --autolock, --audit-retention, --secret-history-limit, --svid-ttl or --oidc-issuer"
        );
    }
    let svid_ttl_secs = match args.svid_ttl {
        Some(d)
            if !(crate::store::workload::MIN_SVID_TTL_SECS
                ..=crate::store::workload::MAX_SVID_TTL_SECS)
                .contains(&d.as_secs()) =>
        {
            bail!("--svid-ttl must be between 10s and 24h")
        }
        Some(d) => d.as_secs(),
        None => 0,
    };
    let ms = match args.dispatcher_heartbeat {
        Some(hb) => {
            let ms = u64::try_from(hb.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 {
                bail!("--dispatcher-heartbeat must be at least 1ms");
            }
            ms
        }
        None => 0,
    };
    let cert_expiry_secs = match args.cert_expiry {
        Some(d) if d.as_secs() == 0 => bail!("--cert-expiry must be at least 1s"),
        Some(d) => d.as_secs(),
        None => 0,
    };
    Ok(SwarmUpdateRequest {
        dispatcher_heartbeat_ms: ms,
        cert_expiry_secs,
        autolock: args.autolock.map(|b| b.to_string()).unwrap_or_default(),
        audit_retention: args.audit_retention,
        secret_history_limit: args.secret_history_limit,
        svid_ttl_secs,
        oidc_issuer: args.oidc_issuer.clone(),
    })
}

pub(super) async fn unlock(api: &mut Api) -> anyhow::Result<()> {
    let key = read_unlock_key()?;
    api.swarm_unlock(SwarmUnlockRequest {
        unlock_key: key.to_string(),
    })
    .await
    .map_err(status)?;
    Ok(())
}

/// Reads the key's first line from stdin, prompting only when a person is typing.
fn read_unlock_key() -> anyhow::Result<Zeroizing<String>> {
    let line = super::prompt::secret_line(
        "Enter unlock key: ",
        "the unlock key",
        "no unlock key given: type it at the prompt or pipe it on stdin",
    )?;
    Ok(Zeroizing::new(line.trim().to_string()))
}

pub(super) async fn join_token(api: &mut Api, args: JoinTokenArgs) -> anyhow::Result<()> {
    let resp = api
        .join_token(JoinTokenRequest {
            role: args.role.as_str().into(),
            rotate: args.rotate,
        })
        .await
        .map_err(status)?
        .into_inner();
    if args.quiet {
        print(&format!("{}\n", resp.token))
    } else {
        let rotated = if args.rotate {
            format!(
                "Successfully rotated {} join token.\n\n",
                args.role.as_str()
            )
        } else {
            String::new()
        };
        print(&format!(
            "{rotated}{}",
            join_instructions(args.role, &resp.token, &resp.manager_addr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_message_matches_docker() {
        let text = init_message("k3x", "SKEP-1-AAA-BBB", "127.0.0.1:2377", "");
        assert_eq!(
            text,
            "Swarm initialized: current node (k3x) is now a manager.\n\
             \n\
             To add a worker to this swarm, run the following command:\n\
             \n    skep swarm join --token SKEP-1-AAA-BBB 127.0.0.1:2377\n\
             \n\
             To add a manager to this swarm, run 'skep join-token manager' and follow the instructions.\n\
             \n"
        );
    }

    #[test]
    fn autolock_key_is_on_its_own_line() {
        let text = init_message("k3x", "T", "a:1", "SKEP-KEY-1-00ff");
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| {
                l.starts_with(
                    "To unlock a swarm manager after it restarts, run the `skep swarm unlock`",
                )
            })
            .unwrap();
        assert_eq!(lines[at + 3], "    SKEP-KEY-1-00ff");
    }

    #[test]
    fn join_token_wording() {
        assert_eq!(
            join_instructions(Role::Manager, "T", "10.0.0.1:2377"),
            "To add a manager to this swarm, run the following command:\n\n    \
             skep swarm join --token T 10.0.0.1:2377\n\n"
        );
    }
}
