//! `skep version` and `skep info`, laid out as Docker's, with `--format` templates over the
//! same field names (`{{.Server.Version}}`, `{{.Swarm.NodeID}}`, `{{.Swarm.Managers}}`).

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::client::status;
use super::output::{self, Format};
use super::print;
use super::tasks::human_duration;
use crate::api::v1::{Empty, InfoResponse, VersionResponse};

type Api = super::client::Api;

#[derive(Debug, Args)]
pub(super) struct VersionArgs {
    /// Format output: json, or a Go template (`{{.Server.Version}}`).
    #[arg(short, long, value_name = "FORMAT")]
    format: Option<Format>,
}

#[derive(Debug, Args)]
pub(super) struct InfoArgs {
    /// Format output: json, or a Go template (`{{.Swarm.NodeID}}`).
    #[arg(short, long, value_name = "FORMAT")]
    format: Option<Format>,
}

/// The client's half of `version`.
fn client_json(context: &str) -> Value {
    json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": crate::api::API_VERSION,
        "DefaultAPIVersion": crate::api::API_VERSION,
        "Os": std::env::consts::OS,
        "Arch": std::env::consts::ARCH,
        "Context": context,
        "RaftLogFormat": crate::store::wire::LOG_FORMAT,
    })
}

fn server_json(v: &VersionResponse) -> Value {
    json!({
        "Platform": { "Name": "skep" },
        "Version": v.version,
        "ApiVersion": v.api_version,
        "MinAPIVersion": v.min_api_version,
        "Os": v.os,
        "Arch": v.arch,
    })
}

/// `version` as Docker prints it: the client, then the daemon (when it answered).
pub(super) fn version_text(client: &Value, server: Option<&Value>) -> String {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    let _ = writeln!(out, "Client:");
    let _ = writeln!(out, " {:<19}{}", "Version:", s(client, "Version"));
    let _ = writeln!(out, " {:<19}{}", "API version:", s(client, "ApiVersion"));
    let _ = writeln!(
        out,
        " {:<19}{}/{}",
        "OS/Arch:",
        s(client, "Os"),
        s(client, "Arch")
    );
    let _ = writeln!(out, " {:<19}{}", "Context:", s(client, "Context"));
    let _ = writeln!(
        out,
        " {:<19}{}",
        "Raft log format:", client["RaftLogFormat"]
    );
    if let Some(server) = server {
        let _ = writeln!(out, "\nServer: skep");
        let _ = writeln!(out, " Engine:");
        let _ = writeln!(out, "  {:<18}{}", "Version:", s(server, "Version"));
        let _ = writeln!(
            out,
            "  {:<18}{} (minimum version {})",
            "API version:",
            s(server, "ApiVersion"),
            s(server, "MinAPIVersion")
        );
        let _ = writeln!(
            out,
            "  {:<18}{}/{}",
            "OS/Arch:",
            s(server, "Os"),
            s(server, "Arch")
        );
    }
    out
}

/// `skep version`: the client's part is printed even when no daemon answers (then the
/// command fails with why, as Docker's does).
pub(super) async fn version(
    host: &super::client::Host,
    mode: super::client::ReadMode,
    context: &str,
    args: VersionArgs,
) -> anyhow::Result<()> {
    let client = client_json(context);
    let server = match super::client::connect_with(host, mode).await {
        Ok(mut api) => api
            .version(Empty {})
            .await
            .map_err(status)
            .map(|r| r.into_inner()),
        Err(e) => Err(e),
    };
    let server_value = server.as_ref().ok().map(server_json);
    let text = match &args.format {
        None | Some(Format::Table) => version_text(&client, server_value.as_ref()),
        Some(f) => {
            let all = json!({ "Client": client, "Server": server_value });
            output::list(f, &[all], String::new)?
        }
    };
    print(&text)?;
    server.map(|_| ())
}

/// The object `info --format` templates run over: Docker's names where Docker has the field.
pub(super) fn info_json(i: &InfoResponse) -> Value {
    let manager = i.role == "manager" && i.state == "active";
    let mut swarm = json!({
        "NodeID": i.node_id,
        "NodeAddr": i.advertise_addr.rsplit_once(':').map_or(i.advertise_addr.as_str(), |(h, _)| h),
        "LocalNodeState": i.state,
        "ControlAvailable": manager,
        "Error": "",
        "NodeCertNotAfter": i.cert_not_after,
    });
    if let (true, Some(o)) = (manager, swarm.as_object_mut()) {
        o.insert("Nodes".into(), json!(i.nodes));
        o.insert("Managers".into(), json!(i.managers));
        o.insert(
            "RemoteManagers".into(),
            json!(
                i.manager_addrs
                    .iter()
                    .map(|a| json!({"Addr": a}))
                    .collect::<Vec<_>>()
            ),
        );
        o.insert(
            "Cluster".into(),
            json!({
                "ID": i.cluster_id,
                "CreatedAt": i.created_at,
                "Spec": {
                    "Dispatcher": { "HeartbeatPeriod": i.heartbeat_period_ms * 1_000_000 },
                    "CAConfig": { "NodeCertExpiry": i.cert_expiry_secs * 1_000_000_000 },
                    "EncryptionConfig": { "AutoLockManagers": i.autolock },
                },
                "RootRotationInProgress": i.ca_rotation_in_progress,
                "CANotAfter": i.ca_not_after,
                "TrustDomain": i.trust_domain,
            }),
        );
        o.insert(
            "Raft".into(),
            json!({
                "ID": i.raft_id,
                "Term": i.raft_term,
                "Leader": i.raft_leader,
                "LeaderAddr": i.leader_addr,
                "IsLeader": i.is_leader,
                "LastLogIndex": i.raft_last_log_index,
                "AppliedIndex": i.raft_applied_index,
            }),
        );
    }
    let mut info = json!({
        "ID": i.node_id,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Swarm": swarm,
    });
    if let (false, Some(o)) = (i.cgroup_version.is_empty(), info.as_object_mut()) {
        o.insert("CgroupVersion".into(), json!(i.cgroup_version));
        o.insert("ExecPidsLimit".into(), json!(i.exec_pids_max));
        o.insert("ExecMemoryLimit".into(), json!(i.exec_memory_max));
    }
    info
}

/// `info` as Docker's Swarm section reads, with skep's Raft and certificate lines.
pub(super) fn info_text(v: &Value, context: &str) -> String {
    let sw = &v["Swarm"];
    let s = |x: &Value| match x {
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "Client:");
    let _ = writeln!(out, " Version:    {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, " Context:    {context}");
    let _ = writeln!(out, "\nServer:");
    let _ = writeln!(out, " Server Version: {}", s(&v["ServerVersion"]));
    if !v["CgroupVersion"].is_null() {
        let _ = writeln!(out, " Cgroup Version: {}", s(&v["CgroupVersion"]));
        let cap = match &v["ExecPidsLimit"] {
            Value::Number(n) if n.as_u64() != Some(0) => n.to_string(),
            _ => "none".into(),
        };
        let _ = writeln!(out, " Exec Tasks PIDs Limit: {cap}");
        let cap = match v["ExecMemoryLimit"].as_u64() {
            Some(n) if n > 0 => super::spec::bytes(n),
            _ => "none".into(),
        };
        let _ = writeln!(out, " Exec Tasks Memory Limit: {cap}");
    }
    let _ = writeln!(out, " Swarm: {}", s(&sw["LocalNodeState"]));
    if sw["LocalNodeState"] == "inactive" {
        return out;
    }
    let _ = writeln!(out, "  NodeID: {}", s(&sw["NodeID"]));
    let _ = writeln!(out, "  Is Manager: {}", sw["ControlAvailable"]);
    if sw["ControlAvailable"] == true {
        let c = &sw["Cluster"];
        let r = &sw["Raft"];
        let _ = writeln!(out, "  ClusterID: {}", s(&c["ID"]));
        let _ = writeln!(out, "  Managers: {}", sw["Managers"]);
        let _ = writeln!(out, "  Nodes: {}", sw["Nodes"]);
        let _ = writeln!(out, "  Raft:");
        let _ = writeln!(out, "   Term: {}", r["Term"]);
        let leader = match r["Leader"].as_u64() {
            Some(0) | None => "none (no quorum?)".to_string(),
            Some(id) => format!("{id} ({})", s(&r["LeaderAddr"])),
        };
        let _ = writeln!(out, "   Leader: {leader}");
        let _ = writeln!(out, "   Is Leader: {}", r["IsLeader"]);
        let _ = writeln!(out, "   Last Log Index: {}", r["LastLogIndex"]);
        let _ = writeln!(out, "   Applied Index: {}", r["AppliedIndex"]);
        let ns = |x: &Value| Duration::from_nanos(x.as_u64().unwrap_or(0));
        let _ = writeln!(out, "  Dispatcher:");
        let _ = writeln!(
            out,
            "   Heartbeat Period: {}",
            human_duration(ns(&c["Spec"]["Dispatcher"]["HeartbeatPeriod"]))
        );
        let _ = writeln!(out, "  CA Configuration:");
        let _ = writeln!(
            out,
            "   Expiry Duration: {}",
            human_duration(ns(&c["Spec"]["CAConfig"]["NodeCertExpiry"]))
        );
        let _ = writeln!(out, "   Root CA Expires: {}", s(&c["CANotAfter"]));
        let _ = writeln!(
            out,
            "  Autolock Managers: {}",
            c["Spec"]["EncryptionConfig"]["AutoLockManagers"]
        );
        let _ = writeln!(
            out,
            "  Root Rotation In Progress: {}",
            c["RootRotationInProgress"]
        );
        let _ = writeln!(out, "  Trust Domain: {}", s(&c["TrustDomain"]));
    }
    let _ = writeln!(out, "  Node Address: {}", s(&sw["NodeAddr"]));
    if !s(&sw["NodeCertNotAfter"]).is_empty() {
        let _ = writeln!(
            out,
            "  Node Certificate Expires: {}",
            s(&sw["NodeCertNotAfter"])
        );
    }
    if let Some(list) = sw["RemoteManagers"].as_array() {
        let _ = writeln!(out, "  Manager Addresses:");
        for m in list {
            let _ = writeln!(out, "   {}", s(&m["Addr"]));
        }
    }
    out
}

/// `skep info`.
pub(super) async fn info(api: &mut Api, context: &str, args: InfoArgs) -> anyhow::Result<()> {
    let i = api.info(Empty {}).await.map_err(status)?.into_inner();
    let v = info_json(&i);
    let text = match &args.format {
        None | Some(Format::Table) => info_text(&v, context),
        Some(f) => output::list(f, &[v], String::new)?,
    };
    print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::template::Compiled;

    fn manager() -> InfoResponse {
        InfoResponse {
            state: "active".into(),
            node_id: "n1".into(),
            role: "manager".into(),
            cluster_id: "c1".into(),
            advertise_addr: "127.0.0.2:2377".into(),
            is_leader: true,
            managers: 1,
            nodes: 3,
            heartbeat_period_ms: 5000,
            cert_expiry_secs: 90 * 86400,
            raft_term: 2,
            raft_leader: 7,
            raft_id: 7,
            leader_addr: "127.0.0.2:2377".into(),
            manager_addrs: vec!["127.0.0.2:2377".into()],
            ..Default::default()
        }
    }

    #[test]
    fn info_reads_as_dockers_swarm_section() {
        let v = info_json(&manager());
        let text = info_text(&v, "default");
        for line in [
            " Swarm: active\n",
            "  NodeID: n1\n",
            "  Is Manager: true\n",
            "  ClusterID: c1\n",
            "  Managers: 1\n",
            "  Nodes: 3\n",
            "   Heartbeat Period: 5 seconds\n",
            "   Expiry Duration: 3 months\n",
            "   Leader: 7 (127.0.0.2:2377)\n",
            "  Node Address: 127.0.0.2\n",
            "  Manager Addresses:\n   127.0.0.2:2377\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        let t =
            Compiled::new("{{.Swarm.NodeID}} {{.Swarm.Managers}} {{.Swarm.Cluster.ID}}").unwrap();
        assert_eq!(t.render(&v).unwrap(), "n1 1 c1");
    }

    #[test]
    fn info_shows_the_exec_tasks_isolation_as_docker_shows_its_cgroups() {
        let mut i = manager();
        let v = info_json(&i);
        assert!(!info_text(&v, "default").contains("Cgroup Version"));
        (i.cgroup_version, i.exec_pids_max, i.exec_memory_max) = ("1".into(), 16384, 7 << 30);
        let v = info_json(&i);
        let text = info_text(&v, "default");
        assert!(
            text.contains(
                " Cgroup Version: 1\n Exec Tasks PIDs Limit: 16384\n Exec Tasks Memory Limit: 7GiB\n"
            ),
            "{text}"
        );
        let t =
            Compiled::new("{{.CgroupVersion}} {{.ExecPidsLimit}} {{.ExecMemoryLimit}}").unwrap();
        assert_eq!(t.render(&v).unwrap(), "1 16384 7516192768");
        (i.exec_pids_max, i.exec_memory_max) = (0, 0);
        let text = info_text(&info_json(&i), "default");
        assert!(
            text.contains(" Exec Tasks PIDs Limit: none\n Exec Tasks Memory Limit: none\n"),
            "{text}"
        );
    }

    #[test]
    fn a_worker_has_no_cluster_section() {
        let mut w = manager();
        w.role = "worker".into();
        let v = info_json(&w);
        assert!(v["Swarm"].get("Cluster").is_none());
        let text = info_text(&v, "default");
        assert!(text.contains("  Is Manager: false\n") && !text.contains("ClusterID"));
    }

    #[test]
    fn version_reads_as_dockers() {
        let client = client_json("default");
        let server = server_json(&VersionResponse {
            version: "0.1.0".into(),
            api_version: "1.1".into(),
            min_api_version: "1.0".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        });
        let text = version_text(&client, Some(&server));
        assert!(text.starts_with("Client:\n Version:"));
        // What a manager of this build can open (see "Upgrading a node").
        assert!(
            text.contains(&format!(
                " Raft log format:   {}\n",
                crate::store::wire::LOG_FORMAT
            )),
            "{text}"
        );
        assert!(text.contains("\nServer: skep\n Engine:\n  Version:          0.1.0\n"));
        assert!(text.contains("  API version:      1.1 (minimum version 1.0)\n"));
    }
}
