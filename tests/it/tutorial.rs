//! The seed tutorial's own session with a locally built image on the Docker Engine: the
//! tutorial's compose file deploys on three real daemons, five containers spread over the
//! nodes, each node's address answers from containers on other nodes (through the mTLS
//! mesh), the secret reaches each container on tmpfs, a re-deploy with three replicas updates
//! in place, and `stack rm` leaves no container, service, network or stack secret behind.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Cluster, ContainerGuard, image_or_skip, json_lines, running_hosts, stderr, timeout,
    unique_name, wait_until,
};

/// The tutorial's file with the test image (which answers `node=... task=...` on port 80).
fn seed(image: &str, replicas: u32) -> String {
    format!(
        r#"version: "3"
services:
  web:
    # replace username/repo:tag with your name and image details
    image: {image}
    command: ["/prog", "serve"]
    deploy:
      replicas: {replicas}
      resources:
        limits:
          cpus: "0.1"
          memory: 50M
      restart_policy:
        condition: on-failure
    ports:
      - "4000:80"
    secrets:
      - db_password
    networks:
      - webnet
networks:
  webnet:
secrets:
  db_password:
    external: true
"#
    )
}

/// IDs of the running containers of `service`.
fn containers(service: &str) -> Vec<String> {
    crate::harness::containers(service, false)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn the_seed_tutorial_with_a_local_image_on_three_nodes() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let stack = unique_name("gsl");
    let web = format!("{stack}_web");
    let _guard = ContainerGuard(web.clone());
    let c = Cluster::init(1, 2);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, seed(image, 5)).unwrap();
    let out = m.cli_stdin(&["secret", "create", "db_password", "-"], "hunter2");
    assert!(out.status.success(), "{}", stderr(&out));

    // One command; it waits for the five tasks.
    let out = m.cli_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), &stack]);
    for line in [
        format!("Creating network {stack}_webnet"),
        format!("Creating service {web}"),
    ] {
        assert!(out.contains(&line), "missing {line:?}:\n{out}");
    }
    let hosts = running_hosts(m, &web);
    assert_eq!(hosts.len(), 5, "{hosts:?}");
    let distinct: BTreeSet<&String> = hosts.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "tasks not spread over the nodes: {hosts:?}"
    );
    assert_eq!(containers(&web).len(), 5);
    // The limits reached the engine.
    let one = &containers(&web)[0];
    let limits = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
            one,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&limits.stdout).trim(),
        format!("100000000 {}", 50 * 1024 * 1024)
    );

    // The secret is bound at /run/secrets from a tmpfs on the host.
    let mounts = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Destination}}={{.Source}} {{end}}",
            one,
        ])
        .output()
        .unwrap();
    let mounts = String::from_utf8_lossy(&mounts.stdout).to_string();
    let source = mounts
        .split_whitespace()
        .find_map(|m| m.strip_prefix("/run/secrets="))
        .unwrap_or_else(|| panic!("no /run/secrets mount: {mounts}"));
    assert!(
        std::path::Path::new(source).join("db_password").exists(),
        "{source}"
    );
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T", source])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fs.stdout).trim(), "tmpfs");

    // curl http://<any node>:4000/: each node's address is answered, and by containers on
    // other nodes too.
    crate::harness::answered_from_other_nodes(&c, 4000);

    // Edit the replica count and deploy again: the same service, updated in place.
    let before: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", &web])).unwrap();
    std::fs::write(&file, seed(image, 3)).unwrap();
    let out = m.cli_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), &stack]);
    assert!(out.contains(&format!("Updating service {web}")), "{out}");
    let after: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", &web])).unwrap();
    assert_eq!(before[0]["id"], after[0]["id"]);
    wait_until(timeout(), "three tasks and three containers", || {
        running_hosts(m, &web).len() == 3 && containers(&web).len() == 3
    });

    // rm: nothing of the stack is left, on skep or on the engine; the port closes.
    m.cli_ok(&["stack", "rm", &stack]);
    wait_until(timeout(), "the stack's containers gone", || {
        containers(&web).is_empty()
    });
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");
    let nets = json_lines(&m.cli_ok(&["network", "ls", "--format", "json"]));
    assert!(
        !nets
            .iter()
            .any(|n| n["Name"].as_str().is_some_and(|s| s.starts_with(&stack))),
        "{nets:?}"
    );
    let secrets = m.cli_ok(&["secret", "ls"]);
    assert!(
        secrets.contains("db_password"),
        "the external secret went: {secrets}"
    );
    let addr: SocketAddr = format!("{}:4000", m.addr().split(':').next().unwrap())
        .parse()
        .unwrap();
    wait_until(timeout(), "the stack's port closed", || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    });
}
