//! Volumes on real daemons and the real Docker Engine: the seed tutorial's next step (redis
//! with `--appendonly yes` and a named data volume, deployed as a stack, keeps its data across a
//! task restart), `stack rm` keeping the volume and `stack rm --volumes` removing it; bind,
//! tmpfs and read-only mounts as the container sees them; and the RBAC rule that bind mounts are
//! for admins (and the host paths a policy allows) while deployers get volumes and tmpfs.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::harness::{
    Cluster, ContainerGuard, as_operator, assert_error, docker, enrol, on, redis_or_fail,
    running_task_ids, stdout, timeout, unique_name, wait_for, wait_until,
};

/// The tutorial's redis stack, with the locally built image.
fn redis_stack(image: &str) -> String {
    format!(
        r#"version: "3"
services:
  redis:
    image: {image}
    command: redis-server --appendonly yes
    ports:
      - "6379:6379"
    volumes:
      - data:/data
volumes:
  data:
"#
    )
}

/// One RESP command over TCP (`*N\r\n$len\r\narg\r\n...`); the reply's first line.
fn resp(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    if text.is_empty() {
        return Err("no answer".into());
    }
    Ok(text)
}

/// Names of the engine's volumes with this name prefix.
fn volumes(prefix: &str) -> Vec<String> {
    let out = docker(&["volume", "ls", "-q"]);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    stdout(&out)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Removes a test's volumes when dropped, even when it fails.
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        for v in volumes(&self.0) {
            let _ = docker(&["volume", "rm", "-f", &v]);
        }
    }
}

/// The running container of `service` (waits for exactly one).
fn the_container(service: &str) -> String {
    wait_for(timeout(), "one running container", || {
        let c = crate::harness::containers(service, false);
        match c.as_slice() {
            [(id, _)] => Ok(id.clone()),
            other => Err(format!("{} containers", other.len())),
        }
    })
}

#[test]
fn the_tutorial_redis_keeps_its_data_across_a_task_restart() {
    let Some(image) = redis_or_fail() else {
        return;
    };
    let stack = unique_name("vol");
    let svc = format!("{stack}_redis");
    let _volumes = VolumeGuard(format!("{stack}_"));
    let _guard = ContainerGuard(svc.clone());
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(&file, redis_stack(image)).unwrap();
    let file = file.to_str().unwrap();

    let out = m.cli_ok(&["stack", "deploy", "-c", file, &stack]);
    assert!(!out.contains("not supported"), "{out}");
    let addr = on(m, 6379);
    wait_for(timeout(), "redis to take a write", || {
        match resp(addr, &["SET", "greeting", "hello-volumes"])? {
            r if r.starts_with("+OK") => Ok(()),
            r => Err(r),
        }
    });
    // Kill the task's container: a new task replaces it and finds the data.
    let first = running_task_ids(m, &svc);
    assert_eq!(first.len(), 1, "{first:?}");
    let container = the_container(&svc);
    assert!(docker(&["kill", &container]).status.success());
    wait_until(timeout(), "a new task running", || {
        let now = running_task_ids(m, &svc);
        now.len() == 1 && now != first
    });
    let got = wait_for(timeout(), "redis to answer again", || {
        resp(addr, &["GET", "greeting"])
    });
    assert!(got.contains("hello-volumes"), "the data is lost: {got:?}");

    // The volume is the engine's, named for the stack and labelled with it and by skep.
    let vol = format!("{stack}_data");
    assert_eq!(volumes(&vol), vec![vol.clone()]);
    let labels = stdout(&docker(&[
        "volume",
        "inspect",
        "-f",
        "{{json .Labels}}",
        &vol,
    ]));
    assert!(
        labels.contains(&format!("\"com.docker.stack.namespace\":\"{stack}\""))
            && labels.contains("\"skep.volume\":\"true\""),
        "{labels}"
    );

    // stack rm keeps the volume, as Docker does; --volumes removes it.
    m.cli_ok(&["stack", "rm", &stack]);
    wait_until(timeout(), "the stack's containers gone", || {
        crate::harness::containers(&svc, true).is_empty()
    });
    assert_eq!(
        volumes(&vol),
        vec![vol.clone()],
        "stack rm removed the volume"
    );
    let out = m.cli_ok(&["stack", "rm", "--volumes", &stack]);
    assert!(out.contains(&format!("Removing volume {vol}")), "{out}");
    assert!(
        volumes(&vol).is_empty(),
        "stack rm --volumes left the volume"
    );
    assert!(
        m.audit()
            .iter()
            .any(|r| r["action"] == "volume.rm" && r["target"] == stack.as_str()),
        "the removal is not audited"
    );
}

#[test]
fn stack_rm_volumes_waits_for_the_tasks_and_spares_external_volumes() {
    let Some(image) = redis_or_fail() else {
        return;
    };
    let stack = unique_name("volx");
    let svc = format!("{stack}_redis");
    let external = format!("{stack}-external");
    let _volumes = VolumeGuard(stack.clone());
    let _guard = ContainerGuard(svc.clone());
    assert!(docker(&["volume", "create", &external]).status.success());
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    let text = format!(
        "services:\n  redis:\n    image: {image}\n    command: redis-server --appendonly yes\n    volumes:\n      - data:/data\n      - ext:/ext\nvolumes:\n  data:\n  ext:\n    external: true\n    name: {external}\n"
    );
    std::fs::write(&file, text).unwrap();
    m.cli_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), &stack]);
    the_container(&svc);
    // One command while the task still runs: the node removes the volume once the
    // container is gone, and the command waits for it.
    let out = m.cli_ok(&["stack", "rm", "--volumes", &stack]);
    assert!(
        out.contains(&format!("Removing volume {stack}_data")),
        "{out}"
    );
    assert!(volumes(&format!("{stack}_data")).is_empty());
    assert_eq!(
        volumes(&external),
        vec![external.clone()],
        "the external volume went"
    );
}

#[test]
fn bind_tmpfs_and_read_only_mounts_reach_the_container() {
    let Some(image) = redis_or_fail() else {
        return;
    };
    let name = unique_name("mounts");
    let vol = format!("{name}-ro");
    let _volumes = VolumeGuard(vol.clone());
    let _guard = ContainerGuard(name.clone());
    let host = tempfile::tempdir().unwrap();
    let host_dir = host.path().canonicalize().unwrap();
    let c = Cluster::init(1, 0);
    let m = c.first();
    let bind = format!("type=bind,source={},target=/data", host_dir.display());
    let ro = format!("type=volume,source={vol},target=/ro,readonly");
    m.cli_ok(&[
        "service",
        "create",
        "--name",
        &name,
        "--mount",
        &bind,
        "--mount",
        "type=tmpfs,target=/cache,tmpfs-size=1m",
        "--mount",
        &ro,
        image,
        "redis-server",
        "--appendonly",
        "yes",
    ]);
    let pretty = m.cli_ok(&["service", "inspect", "--pretty", &name]);
    assert!(pretty.contains("type=tmpfs,target=/cache"), "{pretty}");
    let json = m.cli_ok(&["service", "inspect", &name]);
    assert!(
        json.contains("\"Type\": \"bind\"") && json.contains("\"Target\": \"/data\""),
        "{json}"
    );
    let container = the_container(&name);
    // Redis writes its append-only files into the bind mount: they appear on the host.
    wait_until(timeout(), "the append-only directory on the host", || {
        host_dir.join("appendonlydir").is_dir()
    });
    let mounts = stdout(&docker(&["exec", &container, "/bin/cat", "/proc/mounts"]));
    let line = |target: &str| {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(target))
            .unwrap_or_else(|| panic!("no mount at {target}:\n{mounts}"))
            .to_string()
    };
    let tmp = line("/cache");
    assert!(tmp.starts_with("tmpfs /cache tmpfs"), "{tmp}");
    assert!(tmp.contains("size=1024k"), "{tmp}");
    let ro_line = line("/ro");
    let opts = ro_line.split_whitespace().nth(3).unwrap_or_default();
    assert!(opts.split(',').any(|o| o == "ro"), "{ro_line}");
    let write = docker(&["exec", &container, "/bin/sh", "-c", "echo x > /ro/f"]);
    assert!(!write.status.success(), "wrote to a read-only volume");
    assert!(
        line("/data")
            .split_whitespace()
            .nth(3)
            .unwrap_or_default()
            .starts_with("rw")
    );

    // --mount-rm by target, --mount-add: the service is updated.
    m.cli_ok(&["service", "update", "--mount-rm", "/cache", &name]);
    let pretty = m.cli_ok(&["service", "inspect", "--pretty", &name]);
    assert!(!pretty.contains("/cache"), "{pretty}");
    assert_error(
        &m.cli(&["service", "update", "--mount-rm", "/nowhere", &name]),
        "no mount at that target",
    );

    // A bind source through a symbolic link is refused on the node.
    let link = host_dir.join("link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let linked = unique_name("mounts-link");
    let _guard2 = ContainerGuard(linked.clone());
    m.cli_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        &linked,
        "--mount",
        &format!("type=bind,source={},target=/x", link.display()),
        image,
    ]);
    wait_until(
        timeout(),
        "the task refused for its symlinked source",
        || {
            m.cli_ok(&["service", "ps", "--no-trunc", &linked])
                .contains("symbolic link")
        },
    );
    assert!(crate::harness::containers(&linked, true).is_empty());
}

#[test]
fn bind_mounts_are_for_admins_and_the_host_paths_a_policy_allows() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();
    let admin = enrol(m, tmp.path(), "op-admin", "admin", &[]);
    let deployer = enrol(m, tmp.path(), "op-deployer", "deployer", &[]);
    // Replicas 0: the specs are what is judged, no task needs to run.
    let create = |dir: &std::path::Path, name: &str, mount: &str| {
        as_operator(
            m,
            dir,
            &[
                "service",
                "create",
                "-d",
                "--replicas",
                "0",
                "--name",
                name,
                "--mount",
                mount,
                "redis:7",
            ],
            None,
        )
    };
    let denied = create(
        &deployer,
        "dep-bind",
        "type=bind,source=/srv/data/app,target=/data",
    );
    assert_error(&denied, "may not bind-mount this host path into tasks");
    assert!(
        m.audit().iter().any(|r| r["outcome"] == "denied"
            && r["details"]["action"] == "BindMount"
            && r["details"]["bind_source"] == "/srv/data/app"),
        "the refused bind is not audited"
    );
    assert!(m.cli(&["service", "inspect", "dep-bind"]).status.code() != Some(0));
    // A deployer's named volume and tmpfs are fine; so is an admin's bind of anything.
    for (dir, name, mount) in [
        (
            &deployer,
            "dep-vol",
            "type=volume,source=appdata,target=/data",
        ),
        (&deployer, "dep-tmp", "type=tmpfs,target=/cache"),
        (
            &admin,
            "adm-bind",
            "type=bind,source=/var/run/docker.sock,target=/s",
        ),
    ] {
        let out = create(dir, name, mount);
        assert!(
            out.status.success(),
            "{name}: {}",
            crate::harness::describe(&out)
        );
    }
    // Updating a service to add a bind is the same decision.
    let upd = as_operator(
        m,
        &deployer,
        &[
            "service",
            "update",
            "-d",
            "--mount-add",
            "type=bind,source=/etc,target=/e",
            "dep-vol",
        ],
        None,
    );
    assert_error(&upd, "may not bind-mount");

    // The example policy: deployers may bind under /srv/data, nothing else.
    crate::harness::set_rbac_with(
        m,
        tmp.path(),
        include_str!("../../policies/examples/rbac-deployer-binds.cedar"),
    );
    let ok = create(
        &deployer,
        "dep-srv",
        "type=bind,source=/srv/data/app,target=/data",
    );
    assert!(ok.status.success(), "{}", crate::harness::describe(&ok));
    for (name, source) in [
        ("dep-srv2", "/srv/database"),
        ("dep-srv3", "/var/run/docker.sock"),
        ("dep-srv4", "/srv/data"),
    ] {
        let out = create(
            &deployer,
            name,
            &format!("type=bind,source={source},target=/d"),
        );
        assert_error(&out, "may not bind-mount");
    }
    // `..` cannot climb out of the allowed prefix: refused before any policy is asked.
    let out = create(
        &deployer,
        "dep-dots",
        "type=bind,source=/srv/data/../../etc,target=/d",
    );
    assert_error(&out, "plain path");
}
