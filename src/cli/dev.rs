//! `skep dev`: a whole swarm on one machine for trying skep out. Starts N `skep daemon`
//! children on 127.0.0.2, 127.0.0.3, ... port 2377, inits the first, joins the others, prints
//! `node ls` and how to reach each node, then stops everything on Ctrl-C.
//!
//! ```text
//!  base-dir/node1/{data/, skep.sock, daemon.log}   127.0.0.2:2377   manager (init)
//!  base-dir/node2/...                               127.0.0.3:2377   manager or worker
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use super::client::{self, Host, status};
use super::output::Table;
use super::{DevArgs, node, print};
use crate::api::v1::{Empty, JoinTokenRequest, SwarmInitRequest, SwarmJoinRequest};

const PORT: u16 = 2377;
const START_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// One daemon of the dev swarm.
struct DevNode {
    name: String,
    dir: PathBuf,
    addr: SocketAddr,
    manager: bool,
    child: Option<Child>,
}

impl DevNode {
    fn socket(&self) -> PathBuf {
        self.dir.join("skep.sock")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    fn host(&self) -> Host {
        Host::Unix(self.socket())
    }
}

/// The children; stopped (SIGTERM, then SIGKILL) and reaped on drop, whatever happened.
struct Nodes(Vec<DevNode>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.0 {
            if let Some(child) = n.child.as_mut()
                && let Ok(pid) = i32::try_from(child.id())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        // The daemons stop their tasks first (`--stop-tasks-on-exit`): 10 s of grace at most.
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in &mut self.0 {
            if let Some(mut child) = n.child.take() {
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Where node `i` (from 0) listens: 127.0.0.2 upwards.
fn node_addr(i: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, i.saturating_add(2)), PORT))
}

pub(super) async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.managers > args.nodes {
        bail!(
            "--managers {} is more than --nodes {}",
            args.managers,
            args.nodes
        );
    }
    // Kept alive until the end: dropping it removes the directory.
    let (base, _temp) = match &args.base_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("skep-dev-")
                .tempdir()
                .context("creating a temporary directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    // Listen for Ctrl-C before the first child starts: an interrupt at any point must still
    // stop the children, which live in their own process group.
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut nodes = Nodes(Vec::new());
    tokio::select! {
        r = start(&args, &base, &mut nodes) => print(&r?)?,
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    if !nodes.0.is_empty() {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
    eprintln!("Stopping the swarm...");
    drop(nodes);
    Ok(())
}

/// Starts the daemons into `nodes`, forms the swarm, and returns what to print.
async fn start(args: &DevArgs, base: &Path, nodes: &mut Nodes) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding the skep executable")?;
    for i in 0..args.nodes {
        let name = format!("node{}", u16::from(i) + 1);
        let dir = base.join(&name);
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut node = DevNode {
            name,
            dir,
            addr: node_addr(i),
            manager: i < args.managers,
            child: None,
        };
        node.child = Some(spawn(&exe, &node)?);
        nodes.0.push(node);
    }
    let mut apis = Vec::new();
    for node in &mut nodes.0 {
        apis.push(wait_for_socket(node).await?);
    }
    let first = &nodes.0[0];
    let mut leader = apis.remove(0);
    let init = leader
        .swarm_init(SwarmInitRequest {
            advertise_addr: first.addr.to_string(),
            ..Default::default()
        })
        .await
        .map_err(status)
        .with_context(|| format!("swarm init on {}", first.name))?
        .into_inner();
    let token_of = |role: &str| JoinTokenRequest {
        role: role.into(),
        rotate: false,
    };
    let manager_token = leader
        .join_token(token_of("manager"))
        .await
        .map_err(status)?
        .into_inner()
        .token;
    for (node, api) in nodes.0[1..].iter().zip(apis.iter_mut()) {
        let token = if node.manager {
            &manager_token
        } else {
            &init.worker_token
        };
        api.swarm_join(SwarmJoinRequest {
            token: token.clone(),
            remote_addr: first.addr.to_string(),
            advertise_addr: node.addr.to_string(),
        })
        .await
        .map_err(status)
        .with_context(|| format!("joining {} to the swarm", node.name))?;
    }
    let mut text = wait_all_ready(&mut leader, nodes.0.len()).await?;
    text.push_str("\nTo talk to a node, give its --host (or set SKEP_HOST):\n\n");
    let mut t = Table::new(&["NODE", "ROLE", "ADDRESS", "HOST"]);
    for n in &nodes.0 {
        let role = if n.manager { "manager" } else { "worker" };
        t.row(vec![
            n.name.clone(),
            role.into(),
            n.addr.to_string(),
            format!("--host {}", n.host().url()),
        ]);
    }
    text.push_str(&t.render());
    text.push_str(&format!(
        "\nTo point the CLI at the swarm (its first manager), run:\n\n    {}\n",
        export_line(first)
    ));
    text.push_str(&format!(
        "\nData and daemon logs are in {}.\nPress Ctrl-C to stop the swarm.\n",
        base.display()
    ));
    Ok(text)
}

/// `export SKEP_HOST=unix://...`: the shell line that points the CLI at `node`.
fn export_line(node: &DevNode) -> String {
    format!("export SKEP_HOST={}", node.host().url())
}

fn spawn(exe: &Path, node: &DevNode) -> anyhow::Result<Child> {
    let log = std::fs::File::create(node.log())
        .with_context(|| format!("creating {}", node.log().display()))?;
    std::process::Command::new(exe)
        .arg("daemon")
        .arg("--data-dir")
        .arg(node.dir.join("data"))
        .arg("--listen-addr")
        .arg(node.addr.to_string())
        .arg("--socket")
        .arg(node.socket())
        .arg("--hostname")
        .arg(&node.name)
        // A developer's Ctrl-C ends the swarm, tasks included: none is left orphaned.
        .arg("--stop-tasks-on-exit")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: Ctrl-C reaches `skep dev` only, which stops the children.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting the daemon of {}", node.name))
}

async fn wait_for_socket(node: &mut DevNode) -> anyhow::Result<super::client::Api> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(child) = node.child.as_mut()
            && let Ok(Some(exit)) = child.try_wait()
        {
            bail!(
                "the daemon of {} exited ({exit}); see {}",
                node.name,
                node.log().display()
            );
        }
        if node.socket().exists()
            && let Ok(api) = client::connect(&node.host()).await
        {
            return Ok(api);
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon of {} did not open {} within {:?}; see {}",
                node.name,
                node.socket().display(),
                START_TIMEOUT,
                node.log().display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `node ls` on the first node until all `n` nodes are Ready; returns the table.
async fn wait_all_ready(api: &mut super::client::Api, n: usize) -> anyhow::Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match api.node_list(Empty {}).await {
            Ok(resp) => {
                let mut nodes = resp.into_inner().nodes;
                node::sort(&mut nodes);
                if nodes.len() == n && nodes.iter().all(|x| x.status == "Ready") {
                    return Ok(node::table(&nodes));
                }
                format!("{} of {n} nodes listed, {} Ready", nodes.len(), {
                    nodes.iter().filter(|x| x.status == "Ready").count()
                })
            }
            Err(s) => s.message().to_string(),
        };
        if Instant::now() > deadline {
            bail!("the swarm was not ready within {READY_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_line_names_the_socket() {
        let n = DevNode {
            name: "node1".into(),
            dir: PathBuf::from("/tmp/skep-dev-x/node1"),
            addr: node_addr(0),
            manager: true,
            child: None,
        };
        assert_eq!(
            export_line(&n),
            "export SKEP_HOST=unix:///tmp/skep-dev-x/node1/skep.sock"
        );
    }

    #[test]
    fn addresses_start_at_127_0_0_2() {
        assert_eq!(node_addr(0).to_string(), "127.0.0.2:2377");
        assert_eq!(node_addr(2).to_string(), "127.0.0.4:2377");
    }
}
