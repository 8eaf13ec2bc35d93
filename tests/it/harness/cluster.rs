//! A swarm of [`Node`]s formed through the CLI ([`Cluster`]), and reading its `node ls`
//! listing.

use serde_json::Value;

use super::*;

/// A node of a `node ls --format json` listing with this ID.
pub fn find_node<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["ID"] == id)
}

/// The ID of the node listed as Leader.
pub fn leader_id(nodes: &[Value]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n["ManagerStatus"] == "Leader")
        .and_then(|n| n["ID"].as_str())
        .map(String::from)
}

/// A one-line summary of a listing for wait messages.
pub fn summary(nodes: &[Value]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{}({}) {} {}",
                n["Hostname"].as_str().unwrap_or("?"),
                n["ID"].as_str().unwrap_or("?"),
                n["Status"].as_str().unwrap_or("?"),
                n["ManagerStatus"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A swarm of [`Node`]s: `nodes[0]` ran `swarm init`, then come the other managers, then the
/// workers. Host names are `m1`, `m2`, ... and `w1`, `w2`, ...
pub struct Cluster {
    /// Every node, managers first.
    pub nodes: Vec<Node>,
    managers: usize,
    /// What `swarm init` printed.
    pub init_output: String,
}

impl Cluster {
    /// A swarm of `managers` managers (at least 1) and `workers` workers, all Ready.
    pub fn init(managers: usize, workers: usize) -> Cluster {
        Cluster::init_with(managers, workers, &[])
    }

    /// Like [`Cluster::init`], with extra `swarm init` flags (`--autolock`, `--cert-expiry`).
    pub fn init_with(managers: usize, workers: usize, init_args: &[&str]) -> Cluster {
        Cluster::init_opts(managers, workers, init_args, &[])
    }

    /// Like [`Cluster::init_with`], with extra `skep daemon` flags for every node (kept for
    /// restarts), e.g. `--audit-checkpoint-records 4`.
    pub fn init_opts(
        managers: usize,
        workers: usize,
        init_args: &[&str],
        daemon_args: &[&str],
    ) -> Cluster {
        Cluster::init_prepared(managers, workers, init_args, daemon_args, |_| {})
    }

    /// Like [`Cluster::init_opts`], calling `prepare` on each node before its daemon starts
    /// (e.g. to mount a small tmpfs on its data directory).
    pub fn init_prepared(
        managers: usize,
        workers: usize,
        init_args: &[&str],
        daemon_args: &[&str],
        mut prepare: impl FnMut(&Node),
    ) -> Cluster {
        let nodes: Vec<Node> = (1..=managers)
            .map(|i| Node::new(&format!("m{i}"), daemon_args))
            .chain((1..=workers).map(|i| Node::new(&format!("w{i}"), daemon_args)))
            .collect();
        for n in &nodes {
            prepare(n);
        }
        Cluster::form(nodes, managers, init_args)
    }

    /// Starts `nodes` (not running yet; managers first, then workers) and forms a swarm of
    /// them: `nodes[0]` runs `swarm init` with `init_args`, the next `managers - 1` join as
    /// managers and the rest as workers; waits until all are Ready.
    pub fn form(mut nodes: Vec<Node>, managers: usize, init_args: &[&str]) -> Cluster {
        assert!(managers >= 1, "a swarm needs a manager");
        for n in &mut nodes {
            n.spawn();
        }
        for n in &mut nodes {
            n.wait_up();
        }
        let first = &nodes[0];
        let addr = first.addr();
        let mut args = vec!["swarm", "init", "--advertise-addr", &addr];
        args.extend_from_slice(init_args);
        let init_output = first.cli_ok(&args);
        let worker_token = first
            .cli_ok(&["join-token", "-q", "worker"])
            .trim()
            .to_string();
        let manager_token = first
            .cli_ok(&["join-token", "-q", "manager"])
            .trim()
            .to_string();
        for (i, n) in nodes.iter().enumerate().skip(1) {
            let token = if i < managers {
                &manager_token
            } else {
                &worker_token
            };
            let said = n.cli_ok(&["swarm", "join", "--token", token, &addr]);
            let role = if i < managers { "manager" } else { "worker" };
            assert_eq!(
                said.trim(),
                format!("This node joined a swarm as a {role}.")
            );
        }
        let mut cluster = Cluster {
            nodes,
            managers,
            init_output,
        };
        let listed = cluster.wait_all_ready(0);
        for n in &mut cluster.nodes {
            let entry = listed
                .iter()
                .find(|e| e["Hostname"] == n.name())
                .unwrap_or_else(|| panic!("{} is not listed: {}", n.name(), summary(&listed)));
            n.set_id(entry["ID"].as_str().unwrap());
        }
        cluster
    }

    /// The node that ran `swarm init`.
    pub fn first(&self) -> &Node {
        &self.nodes[0]
    }

    /// The managers.
    pub fn managers(&self) -> &[Node] {
        &self.nodes[..self.managers]
    }

    /// The workers.
    pub fn workers(&self) -> &[Node] {
        &self.nodes[self.managers..]
    }

    /// Every node's ID, in `nodes` order.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id().to_string()).collect()
    }

    /// The index in `nodes` of the node with this ID.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id() == id)
            .unwrap_or_else(|| panic!("no node of this cluster has ID {id}"))
    }

    /// Waits until `node ls` on `nodes[via]` lists every node of the cluster as Ready with one
    /// Leader; returns that listing.
    pub fn wait_all_ready(&self, via: usize) -> Vec<Value> {
        let n = self.nodes.len();
        let node = &self.nodes[via];
        wait_for(
            timeout(),
            &format!("{n} Ready nodes in `node ls` on {}", node.name()),
            || {
                let nodes = node.try_node_ls()?;
                let ready = nodes.iter().filter(|x| x["Status"] == "Ready").count();
                if nodes.len() == n && ready == n && leader_id(&nodes).is_some() {
                    Ok(nodes)
                } else {
                    Err(summary(&nodes))
                }
            },
        )
    }

    /// Kills every daemon.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every daemon again (all at once: managers need each other for a quorum) and waits
    /// until their sockets answer.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.spawn();
        }
        for n in &mut self.nodes {
            n.wait_up();
        }
    }
}

/// The unlock key in `swarm init --autolock` output: the `SKEP-KEY-` line after the
/// "To unlock a swarm manager after it restarts" paragraph.
pub fn unlock_key(init_output: &str) -> String {
    let mut lines = init_output.lines().skip_while(|l| {
        !l.starts_with("To unlock a swarm manager after it restarts, run the `skep swarm unlock`")
    });
    assert!(
        lines.next().is_some(),
        "no unlock instructions in:\n{init_output}"
    );
    lines
        .map(str::trim)
        .find(|l| l.starts_with("SKEP-KEY-"))
        .unwrap_or_else(|| panic!("no SKEP-KEY- line in:\n{init_output}"))
        .to_string()
}
