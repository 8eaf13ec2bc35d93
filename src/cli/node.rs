//! `skep node ls|inspect|ps|update`.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde_json::{Value, json};

use super::client::status;
use super::filter::{self, Filters};
use super::output::{self, Table, json_pretty};
use super::service::ps_output;
use super::tasks::{hostnames, parse_tasks};
use super::{NodeInspectArgs, NodeLsArgs, NodePsArgs, NodeUpdateArgs, print};
use crate::api::v1::{Empty, NodeInfo, NodeInspectRequest, NodeUpdateRequest};

type Api = super::client::Api;

pub(super) async fn ls(api: &mut Api, args: NodeLsArgs) -> anyhow::Result<()> {
    let mut nodes = api
        .node_list(Empty {})
        .await
        .map_err(status)?
        .into_inner()
        .nodes;
    sort(&mut nodes);
    filter::nodes(
        &Filters::parse(&args.filter, filter::NODE_KEYS)?,
        &mut nodes,
    )?;
    let text = if args.quiet {
        nodes.iter().map(|n| format!("{}\n", n.id)).collect()
    } else {
        let items: Vec<Value> = nodes.iter().map(ls_json).collect();
        output::list(&args.format, &items, || table(&nodes))?
    };
    print(&text)
}

/// Docker's order: by host name, then ID.
pub(super) fn sort(nodes: &mut [NodeInfo]) {
    nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then_with(|| a.id.cmp(&b.id)));
}

/// The `node ls` table: full IDs, the answering node marked with ` *`.
pub(super) fn table(nodes: &[NodeInfo]) -> String {
    let mut t = Table::new(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"]);
    for n in nodes {
        let id = if n.is_self {
            format!("{} *", n.id)
        } else {
            n.id.clone()
        };
        t.row(vec![
            id,
            n.hostname.clone(),
            n.status.clone(),
            n.availability.clone(),
            n.manager_status.clone(),
        ]);
    }
    t.render()
}

/// One line of `node ls --format json`: Docker's keys, plus the role and address.
fn ls_json(n: &NodeInfo) -> Value {
    json!({
        "ID": n.id,
        "Hostname": n.hostname,
        "Status": n.status,
        "Availability": n.availability,
        "ManagerStatus": n.manager_status,
        "Self": n.is_self,
        "Role": n.role,
        "Addr": n.addr,
    })
}

/// A node argument, with `self` meaning the node answering.
async fn resolve(api: &mut Api, name: &str) -> anyhow::Result<String> {
    if name != "self" {
        return Ok(name.to_string());
    }
    let info = api.info(Empty {}).await.map_err(status)?.into_inner();
    if info.node_id.is_empty() {
        anyhow::bail!("this node is not part of a swarm");
    }
    Ok(info.node_id)
}

pub(super) async fn inspect(api: &mut Api, args: NodeInspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &args.nodes {
        let node = resolve(api, name).await?;
        match api.node_inspect(NodeInspectRequest { node }).await {
            Ok(resp) => found.push(resp.into_inner()),
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    let text = if let Some(format) = &args.format {
        let items: Vec<Value> = found.iter().map(inspect_json).collect();
        output::inspect(Some(format), &items)?
    } else if args.pretty {
        found.iter().map(pretty).collect::<Vec<_>>().join("\n")
    } else {
        json_pretty(&Value::Array(found.iter().map(inspect_json).collect()))
    };
    print(&text)?;
    super::output::fail_with(errors)
}

/// `node ps`: the tasks placed on nodes, with `service ps`'s columns.
pub(super) async fn ps(api: &mut Api, args: NodePsArgs) -> anyhow::Result<()> {
    let names = if args.nodes.is_empty() {
        vec!["self".to_string()]
    } else {
        args.nodes.clone()
    };
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for name in &names {
        let node = resolve(api, name).await?;
        match api.node_tasks(NodeInspectRequest { node }).await {
            Ok(resp) => all.extend(parse_tasks(&resp.into_inner().tasks_json)?),
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    let filters = Filters::parse(&args.filter, filter::TASK_KEYS)?;
    if errors.is_empty() || !all.is_empty() {
        let hosts = hostnames(api).await;
        filter::tasks(&filters, &mut all, &hosts)?;
        print(&ps_output(
            &all,
            &hosts,
            args.quiet,
            args.no_trunc,
            &args.format,
        )?)?;
    }
    super::output::fail_with(errors)
}

/// `node update`: availability and labels; prints the node as given, as Docker does.
pub(super) async fn update(api: &mut Api, args: NodeUpdateArgs) -> anyhow::Result<()> {
    let req = update_request(&args)?;
    let node = resolve(api, &args.node).await?;
    api.node_update(NodeUpdateRequest { node, ..req })
        .await
        .map_err(status)?;
    print(&format!("{}\n", args.node))
}

/// The request `node update` sends (without the node), checked before anything is sent.
pub(super) fn update_request(args: &NodeUpdateArgs) -> anyhow::Result<NodeUpdateRequest> {
    if args.availability.is_none()
        && args.label_add.is_empty()
        && args.label_rm.is_empty()
        && args.role.is_none()
    {
        anyhow::bail!("nothing to update: give --availability, --role, --label-add or --label-rm");
    }
    for l in &args.label_add {
        let key = l.split_once('=').map_or(l.as_str(), |(k, _)| k);
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            anyhow::bail!(
                "invalid --label-add {}: expected KEY or KEY=VALUE",
                crate::util::quote(l)
            );
        }
    }
    for k in &args.label_rm {
        if k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace) {
            anyhow::bail!(
                "invalid --label-rm {}: expected a label KEY",
                crate::util::quote(k)
            );
        }
    }
    Ok(NodeUpdateRequest {
        node: String::new(),
        availability: args
            .availability
            .map(|a| a.as_str().to_string())
            .unwrap_or_default(),
        label_add: args.label_add.clone(),
        label_rm: args.label_rm.clone(),
        role: args.role.clone().unwrap_or_default(),
    })
}

/// `node promote` / `node demote`: prints what happened to each node, as Docker does.
pub(super) async fn change_role(api: &mut Api, nodes: &[String], role: &str) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for want in nodes {
        let node = resolve(api, want).await?;
        let before = match api
            .node_inspect(NodeInspectRequest { node: node.clone() })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                errors.push(status(s).to_string());
                continue;
            }
        };
        if before.role == role {
            print(&format!("Node {want} is already a {role}.\n"))?;
            continue;
        }
        let req = NodeUpdateRequest {
            node: before.id,
            role: role.to_string(),
            ..Default::default()
        };
        match api.node_update(req).await {
            Ok(_) if role == "manager" => print(&format!(
                "Node {want} promoted to a manager in the swarm.\n"
            ))?,
            Ok(_) => print(&format!("Manager {want} demoted in the swarm.\n"))?,
            Err(s) => errors.push(format!("{want}: {}", status(s))),
        }
    }
    super::output::fail_with(errors)
}

/// `node inspect` JSON, shaped like Docker's (`Spec`, `Description`, `Status`, `ManagerStatus`).
fn inspect_json(n: &NodeInfo) -> Value {
    let mut v = json!({
        "ID": n.id,
        "CreatedAt": n.created_at,
        "UpdatedAt": n.updated_at,
        "Spec": {
            "Labels": n.labels,
            "Role": n.role,
            "Availability": n.availability.to_lowercase(),
        },
        "Description": {
            "Hostname": n.hostname,
            "Certificate": { "Serial": n.cert_serial, "NotAfter": n.cert_not_after },
            "Runtimes": n.runtimes,
            "Resources": { "NanoCPUs": n.nano_cpus, "MemoryBytes": n.memory_bytes },
        },
        "Status": { "State": n.status.to_lowercase(), "Addr": ip_of(&n.addr) },
    });
    if n.role == "manager" {
        v["ManagerStatus"] = json!({
            "Leader": n.manager_status == "Leader",
            "Reachability": reachability(&n.manager_status),
            "Addr": n.addr,
        });
        if !n.manager_message.is_empty() {
            v["ManagerStatus"]["Message"] = json!(n.manager_message);
        }
    }
    v
}

fn reachability(manager_status: &str) -> &'static str {
    match manager_status {
        "Leader" | "Reachable" => "reachable",
        "Unreachable" => "unreachable",
        _ => "unknown",
    }
}

fn ip_of(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

/// `node inspect --pretty`, laid out as Docker's.
fn pretty(n: &NodeInfo) -> String {
    let mut s = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(s, "{:<24}{value}", format!("{label}:"));
    };
    line("ID", &n.id);
    line("Hostname", &n.hostname);
    line("Joined at", &n.created_at);
    line("Status", "");
    line(" State", &n.status);
    line(" Availability", &n.availability);
    line(" Address", &ip_of(&n.addr));
    if n.role == "manager" {
        line("Manager Status", "");
        line(" Address", &n.addr);
        let raft = match n.manager_status.as_str() {
            "Leader" => "Reachable",
            "" => "Unknown",
            other => other,
        };
        line(" Raft Status", raft);
        if !n.manager_message.is_empty() {
            line(" Message", &n.manager_message);
        }
        line(
            " Leader",
            if n.manager_status == "Leader" {
                "Yes"
            } else {
                "No"
            },
        );
    }
    line("Certificate", "");
    line(" Serial", &n.cert_serial);
    line(" Not After", &n.cert_not_after);
    if !n.labels.is_empty() {
        line("Labels", "");
        let mut labels: Vec<_> = n.labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            let _ = writeln!(s, " - {k}={v}");
        }
    }
    s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// `node rm [--force] NODE...`: one line per node removed; every node is tried, and the
/// command fails at the end if any could not be removed.
pub(super) async fn rm(api: &mut Api, args: super::NodeRmArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for want in &args.nodes {
        let resp = api
            .node_remove(crate::api::v1::NodeRemoveRequest {
                node: want.clone(),
                force: args.force,
            })
            .await;
        match resp {
            Ok(r) => {
                let r = r.into_inner();
                let mut text =
                    format!("Node {} removed and its certificate revoked.\n", r.hostname);
                if !r.secrets_delivered.is_empty() {
                    text.push_str(&format!(
                        "Secrets that were delivered to {} and should be rotated: {}\n",
                        r.hostname,
                        r.secrets_delivered.join(", ")
                    ));
                }
                print(&text)?;
            }
            Err(s) => errors.push(format!("{want}: {}", s.message())),
        }
    }
    super::output::fail_with(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, role: &str, ms: &str, me: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            hostname: host.into(),
            role: role.into(),
            status: "Ready".into(),
            availability: "Active".into(),
            manager_status: ms.into(),
            addr: "127.0.0.2:2377".into(),
            is_self: me,
            ..Default::default()
        }
    }

    #[test]
    fn table_marks_self_and_leaves_workers_blank() {
        let mut nodes = vec![
            node("bbbbbbbbbbbbbbbbbbbbbbbbb", "n2", "worker", "", false),
            node("aaaaaaaaaaaaaaaaaaaaaaaaa", "n1", "manager", "Leader", true),
        ];
        sort(&mut nodes);
        assert_eq!(
            table(&nodes),
            "ID                           HOSTNAME  STATUS  AVAILABILITY  MANAGER STATUS\n\
             aaaaaaaaaaaaaaaaaaaaaaaaa *  n1        Ready   Active        Leader\n\
             bbbbbbbbbbbbbbbbbbbbbbbbb    n2        Ready   Active\n"
        );
    }

    #[test]
    fn ls_json_has_docker_keys() {
        let v = ls_json(&node("a", "n1", "manager", "Leader", true));
        assert_eq!(v["ID"], "a");
        assert_eq!(v["ManagerStatus"], "Leader");
        assert_eq!(v["Self"], true);
        assert_eq!(v["Status"], "Ready");
    }

    #[test]
    fn inspect_json_manager_status_only_for_managers() {
        let m = inspect_json(&node("a", "n1", "manager", "Leader", true));
        assert_eq!(m["ManagerStatus"]["Leader"], true);
        assert_eq!(m["ManagerStatus"]["Reachability"], "reachable");
        assert_eq!(m["Status"]["Addr"], "127.0.0.2");
        assert_eq!(m["Status"]["State"], "ready");
        let w = inspect_json(&node("b", "n2", "worker", "", false));
        assert!(w.get("ManagerStatus").is_none());
    }

    #[test]
    fn update_requests() {
        use super::super::{Availability, NodeUpdateArgs};
        let args = |availability, add: &[&str], rm: &[&str]| NodeUpdateArgs {
            availability,
            label_add: add.iter().map(|s| s.to_string()).collect(),
            label_rm: rm.iter().map(|s| s.to_string()).collect(),
            role: None,
            node: "w1".into(),
        };
        let r = update_request(&args(
            Some(Availability::Drain),
            &["zone=a", "ssd"],
            &["old"],
        ))
        .unwrap();
        assert_eq!(r.availability, "drain");
        assert_eq!(r.label_add, ["zone=a", "ssd"]);
        assert_eq!(r.label_rm, ["old"]);
        assert!(update_request(&args(None, &[], &[])).is_err());
        assert!(update_request(&args(None, &["=x"], &[])).is_err());
        assert!(update_request(&args(None, &[], &["a=b"])).is_err());
    }

    #[test]
    fn pretty_has_no_trailing_blanks() {
        let text = pretty(&node("a", "n1", "manager", "Unreachable", false));
        assert!(text.contains("Hostname:               n1\n"), "{text}");
        assert!(
            text.contains(" Raft Status:           Unreachable\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| l == l.trim_end()));
    }
}
