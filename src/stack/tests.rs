//! Unit tests of the Compose loader: the schema, interpolation, merging, warnings and limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::interpolate::interpolate;
use super::*;
use crate::store::service::{
    ConstraintOp, FailureAction, Mode, PortIdentity, PortProtocol, PublishMode, RestartCondition,
    Runtime, UpdateOrder,
};

/// Files in memory, by path.
struct Mem(BTreeMap<PathBuf, Vec<u8>>);

impl Files for Mem {
    fn read(&self, path: &Path, limit: usize) -> Result<Vec<u8>, String> {
        let b = self.0.get(path).ok_or("no such file")?;
        if b.len() > limit {
            return Err("larger than allowed".into());
        }
        Ok(b.clone())
    }
}

fn files(list: &[(&str, &str)]) -> Mem {
    Mem(list
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.as_bytes().to_vec()))
        .collect())
}

fn env(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_one(text: &str) -> Result<Stack, StackError> {
    load_with(text, &[], &[])
}

fn load_with(
    text: &str,
    vars: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> Result<Stack, StackError> {
    let mut all = vec![("/app/docker-compose.yml", text)];
    all.extend_from_slice(extra);
    load(
        &[PathBuf::from("/app/docker-compose.yml")],
        "getstartedlab",
        &env(vars),
        &files(&all),
    )
}

fn err(r: Result<Stack, StackError>) -> String {
    match r {
        Ok(s) => panic!("loaded: {:?}", s.services),
        Err(e) => e.to_string(),
    }
}

const SEED: &str = r#"
version: "3"
services:
  web:
    # replace username/repo:tag with your name and image details
    image: username/repo:tag
    x-skep-runtime: exec
    command: ["/bin/sleep", "1000"]
    deploy:
      replicas: 5
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
"#;

#[test]
fn the_seed_file_becomes_one_service_a_network_and_an_external_secret() {
    let s = load_one(SEED).unwrap();
    assert_eq!(s.services.len(), 1);
    let web = &s.services[0];
    assert_eq!(web.name, "getstartedlab_web");
    assert_eq!(web.mode, Mode::Replicated { replicas: 5 });
    assert_eq!(web.task.runtime, Runtime::Exec);
    assert_eq!(web.task.image, "");
    assert_eq!(web.task.command, ["/bin/sleep", "1000"]);
    assert_eq!(web.task.limits.nano_cpus, 100_000_000);
    assert_eq!(web.task.limits.memory_bytes, 50 * 1024 * 1024);
    assert_eq!(web.task.restart.condition, RestartCondition::OnFailure);
    assert_eq!(web.ports.len(), 1);
    assert_eq!((web.ports[0].published, web.ports[0].target), (4000, 80));
    assert_eq!(web.networks, ["getstartedlab_webnet"]);
    assert_eq!(web.labels[NAMESPACE_LABEL], "getstartedlab");
    assert_eq!(web.task.secrets[0].secret_name, "db_password");
    assert_eq!(web.task.secrets[0].target, "/run/secrets/db_password");
    assert_eq!(s.networks.len(), 1);
    assert_eq!(s.networks[0].name, "getstartedlab_webnet");
    assert_eq!(s.networks[0].labels[NAMESPACE_LABEL], "getstartedlab");
    assert!(!s.networks[0].external);
    assert!(matches!(s.secrets[0].source, SecretSource::External));
    assert_eq!(s.secrets[0].name, "db_password");
    // The image is named in a warning: the exec runtime does not use it.
    assert!(
        s.warnings.iter().any(|w| w.contains("`image` is ignored")),
        "{:?}",
        s.warnings
    );
    crate::spec::service::validate(web).unwrap();
}

#[test]
fn interpolation_follows_docker() {
    let e = env(&[("SET", "v"), ("EMPTY", "")]);
    let mut w = Vec::new();
    let mut i = |t: &str| interpolate(t, &e, &mut w);
    assert_eq!(i("a $SET b").unwrap(), "a v b");
    assert_eq!(i("${SET}x").unwrap(), "vx");
    assert_eq!(i("${UNSET:-d}/${EMPTY:-d}/${SET:-d}").unwrap(), "d/d/v");
    assert_eq!(i("${UNSET-d}/${EMPTY-d}").unwrap(), "d/");
    assert_eq!(
        i("${SET:+alt}/${EMPTY:+alt}/${EMPTY+alt}").unwrap(),
        "alt//alt"
    );
    assert_eq!(i("$$SET costs $$5").unwrap(), "$SET costs $5");
    assert_eq!(i("${SET:?needed}").unwrap(), "v");
    assert_eq!(
        i("${EMPTY:?set it}").unwrap_err(),
        "required variable EMPTY is missing a value: set it"
    );
    assert!(i("${EMPTY?x}").is_ok());
    assert!(i("${UNSET?x}").unwrap_err().contains("UNSET"));
    assert!(i("${UNSET}").unwrap().is_empty());
    assert!(i("cost: $5").unwrap_err().contains("$$"));
    assert!(i("${SET").unwrap_err().contains("without"));
    assert!(i("${1x}").is_err());
    assert!(i("${SET/x}").is_err());
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("UNSET"), "{w:?}");
}

#[test]
fn variables_reach_every_value_and_numbers_still_parse() {
    let text = r#"
services:
  web:
    image: "${IMAGE:-nginx}:${TAG}"
    deploy:
      replicas: ${REPLICAS:-2}
    environment:
      GREETING: "hello $$USER"
    ports: ["${PORT}:80"]
"#;
    let s = load_with(
        text,
        &[("TAG", "1.27"), ("REPLICAS", "7"), ("PORT", "8080")],
        &[],
    )
    .unwrap();
    let web = &s.services[0];
    assert_eq!(web.task.image, "nginx:1.27");
    assert_eq!(web.mode, Mode::Replicated { replicas: 7 });
    assert_eq!(web.task.env, ["GREETING=hello $USER"]);
    assert_eq!(web.ports[0].published, 8080);
    let e = err(load_with(
        "services:\n  web:\n    image: \"${IMAGE:?give an image}\"\n",
        &[],
        &[],
    ));
    assert!(e.contains("line 3") && e.contains("give an image"), "{e}");
}

#[test]
fn ports_in_both_syntaxes() {
    let text = r#"
services:
  web:
    image: nginx
    ports:
      - "4000:80"
      - 5353:53/udp
      - target: 443
        published: 8443
        protocol: tcp
        mode: host
      - target: 514
        published: 1514
        protocol: udp
"#;
    let s = load_one(text).unwrap();
    let p = &s.services[0].ports;
    assert_eq!(
        (p[0].published, p[0].target, p[0].protocol),
        (4000, 80, PortProtocol::Tcp)
    );
    assert_eq!(
        (p[1].published, p[1].target, p[1].protocol),
        (5353, 53, PortProtocol::Udp)
    );
    assert_eq!(
        (p[2].published, p[2].target, p[2].mode),
        (8443, 443, PublishMode::Host)
    );
    assert_eq!(
        (p[3].published, p[3].target, p[3].protocol, p[3].mode),
        (1514, 514, PortProtocol::Udp, PublishMode::Ingress)
    );
    assert!(p.iter().all(|p| p.identity == PortIdentity::None));
    let text = "services:\n  db:\n    image: pg\n    ports:\n      - {target: 443, published: 8443, x-skep-identity: required}\n";
    let s = load_one(text).unwrap();
    assert_eq!(s.services[0].ports[0].identity, PortIdentity::Required);
    let text = "services:\n  db:\n    image: pg\n    ports:\n      - {target: 443, published: 8443, x-skep-identity: maybe}\n";
    let e = err(load_one(text));
    assert!(e.contains("x-skep-identity") && e.contains("line 5"), "{e}");
    for (bad, needle) in [
        ("\"127.0.0.1:80:80\"", "host IP"),
        ("\"8000-8001:80-81\"", "ranges"),
        ("\"80\"", "PUBLISHED:TARGET"),
        ("{target: 80}", "published"),
        ("\"80:80/sctp\"", "sctp"),
    ] {
        let text = format!("services:\n  web:\n    image: nginx\n    ports:\n      - {bad}\n");
        let e = err(load_one(&text));
        assert!(e.contains(needle) && e.contains("line 5"), "{bad}: {e}");
    }
}

#[test]
fn secret_targets_go_through_the_managers_rule() {
    for (secrets, needle) in [
        (
            "[a, {source: b, target: a}]",
            "clashes with the target of a",
        ),
        ("[a, a]", "given twice"),
        ("[{source: a, target: ../x}]", "not a plain path"),
        (
            "[{source: a, target: a/b}, {source: b, target: a}]",
            "cannot also be a directory",
        ),
    ] {
        let text = format!(
            "services:\n  web:\n    image: nginx\n    secrets: {secrets}\n\
             secrets:\n  a:\n    external: true\n  b:\n    external: true\n"
        );
        let e = err(load_one(&text));
        assert!(e.contains(needle) && e.contains("line 4"), "{secrets}: {e}");
    }
}

#[test]
fn secrets_in_both_syntaxes_and_from_files() {
    let text = r#"
services:
  web:
    image: nginx
    secrets:
      - db_password
      - source: api_key
        target: keys/api
        uid: "1000"
        gid: "1000"
        mode: 0400
secrets:
  db_password:
    external: true
  api_key:
    file: ./api_key.txt
"#;
    let s = load_with(text, &[], &[("/app/./api_key.txt", "s3cret")]).unwrap();
    let refs = &s.services[0].task.secrets;
    assert_eq!(refs[0].secret_name, "db_password");
    assert_eq!(refs[1].secret_name, "getstartedlab_api_key");
    assert_eq!(refs[1].target, "/run/secrets/keys/api");
    assert_eq!(
        (refs[1].uid, refs[1].gid, refs[1].mode),
        (1000, 1000, 0o400)
    );
    let made = s
        .secrets
        .iter()
        .find(|x| x.name == "getstartedlab_api_key")
        .unwrap();
    assert_eq!(made.labels[NAMESPACE_LABEL], "getstartedlab");
    match &made.source {
        SecretSource::Value(v) => assert_eq!(v.expose(), b"s3cret"),
        SecretSource::External => panic!("external"),
    }
    // A secret the top level does not declare is refused, naming it.
    let e = err(load_one(
        "services:\n  web:\n    image: nginx\n    secrets: [nope]\n",
    ));
    assert!(e.contains("\"nope\"") && e.contains("not declared"), "{e}");
    // A missing file is refused with its path.
    let e = err(load_one(
        "services:\n  web:\n    image: nginx\n    secrets: [k]\nsecrets:\n  k:\n    file: missing.txt\n",
    ));
    assert!(e.contains("missing.txt"), "{e}");
}

#[test]
fn configs_in_both_syntaxes_and_on_change_for_secrets() {
    let text = r#"
services:
  web:
    image: nginx
    configs:
      - nginx_conf
      - source: site
        target: /etc/nginx/conf.d/site.conf
        mode: 0440
        x-skep-on-change: none
    secrets:
      - source: db
        x-skep-on-change: signal:HUP
      - db_plain
configs:
  nginx_conf:
    file: ./nginx.conf
  site:
    external: true
    name: shared_site
secrets:
  db:
    external: true
  db_plain:
    external: true
"#;
    let s = load_with(text, &[], &[("/app/./nginx.conf", "worker_processes 1;")]).unwrap();
    let task = &s.services[0].task;
    let c: Vec<_> = task
        .configs
        .iter()
        .map(|r| {
            (
                r.secret_name.as_str(),
                r.target.as_str(),
                r.mode,
                r.on_change.to_string(),
            )
        })
        .collect();
    assert_eq!(
        c,
        [
            (
                "getstartedlab_nginx_conf",
                "/nginx_conf",
                0o444,
                "restart".to_string()
            ),
            (
                "shared_site",
                "/etc/nginx/conf.d/site.conf",
                0o440,
                "none".to_string()
            ),
        ]
    );
    assert_eq!(task.secrets[0].on_change.to_string(), "signal:SIGHUP");
    assert_eq!(task.secrets[1].on_change.to_string(), "rotate");
    let made = s
        .configs
        .iter()
        .find(|x| x.name == "getstartedlab_nginx_conf")
        .unwrap();
    assert_eq!(made.labels[NAMESPACE_LABEL], "getstartedlab");
    assert!(matches!(
        s.configs
            .iter()
            .find(|x| x.name == "shared_site")
            .map(|x| &x.source),
        Some(SecretSource::External)
    ));
    assert!(s.secrets.iter().all(|x| !x.name.contains("nginx")));

    for (bad, says) in [
        // A config cannot be swapped in place.
        (
            "services:\n  w:\n    image: nginx\n    configs:\n      - source: c\n        x-skep-on-change: rotate\nconfigs:\n  c:\n    external: true\n",
            "on-change=rotate",
        ),
        (
            "services:\n  w:\n    image: nginx\n    configs:\n      - source: c\n        target: /proc/x\nconfigs:\n  c:\n    external: true\n",
            "lies in /proc",
        ),
        (
            "services:\n  w:\n    image: nginx\n    configs:\n      - source: c\n        target: /run/secrets/c\nconfigs:\n  c:\n    external: true\n",
            "lies in /run/secrets",
        ),
        (
            "services:\n  w:\n    image: nginx\n    configs:\n      - source: c\n        target: /etc/x\n      - source: d\n        target: /etc/x\nconfigs:\n  c:\n    external: true\n  d:\n    external: true\n",
            "clashes",
        ),
        (
            "services:\n  w:\n    image: nginx\n    secrets:\n      - source: s\n        x-skep-on-change: signal:NOPE\nsecrets:\n  s:\n    external: true\n",
            "not a signal name",
        ),
        (
            "services:\n  w:\n    image: nginx\n    configs: [nope]\n",
            "not declared under the top-level `configs:`",
        ),
    ] {
        let e = err(load_one(bad));
        assert!(e.contains(says), "{says}: {e}");
    }
}

#[test]
fn environment_lists_maps_and_env_files() {
    let text = r#"
services:
  a:
    image: nginx
    env_file: app.env
    environment:
      - MODE=prod
      - FROM_SHELL
      - NOT_IN_SHELL
  b:
    image: nginx
    environment:
      PORT: 80
      DEBUG: false
      HOME:
"#;
    let s = load_with(
        text,
        &[("FROM_SHELL", "yes"), ("HOME", "/root")],
        &[(
            "/app/app.env",
            "# comment\nMODE=dev\nNAME=\"quoted\"\n\nexport LEVEL=3\n",
        )],
    )
    .unwrap();
    assert_eq!(
        s.services[0].task.env,
        ["NAME=quoted", "LEVEL=3", "MODE=prod", "FROM_SHELL=yes"]
    );
    assert_eq!(
        s.services[1].task.env,
        ["PORT=80", "DEBUG=false", "HOME=/root"]
    );
    assert!(
        s.warnings.iter().any(|w| w.contains("NOT_IN_SHELL")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn deploy_settings_map_onto_the_spec() {
    let text = r#"
services:
  web:
    image: nginx
    labels: [tier=front]
    deploy:
      mode: replicated
      replicas: 3
      labels:
        team: web
      resources:
        reservations: {cpus: 0.25, memory: 20M}
      restart_policy: {condition: any, delay: 2s, max_attempts: 3}
      update_config: {parallelism: 2, delay: 1s, order: start-first, failure_action: rollback, monitor: 10s}
      rollback_config: {parallelism: 0, order: stop-first, failure_action: continue}
      placement:
        constraints: [node.role == worker, "node.labels.zone != a"]
  agent:
    image: nginx
    command: sh -c 'echo "hi there"'
    deploy: {mode: global}
"#;
    let s = load_one(text).unwrap();
    let web = &s.services[0];
    assert_eq!(web.labels["tier"], "front");
    assert_eq!(web.labels["team"], "web");
    assert_eq!(web.task.reservations.nano_cpus, 250_000_000);
    assert_eq!(web.task.restart.delay_ms, 2000);
    assert_eq!(web.task.restart.max_attempts, 3);
    assert_eq!(web.update.parallelism, 2);
    assert_eq!(web.update.order, UpdateOrder::StartFirst);
    assert_eq!(web.update.failure_action, FailureAction::Rollback);
    assert_eq!(web.update.monitor_ms, 10_000);
    assert_eq!(web.rollback.parallelism, 0);
    assert_eq!(web.rollback.failure_action, FailureAction::Continue);
    assert_eq!(web.task.constraints.len(), 2);
    assert_eq!(web.task.constraints[1].op, ConstraintOp::Ne);
    let agent = &s.services[1];
    assert_eq!(agent.mode, Mode::Global);
    assert_eq!(agent.task.command, ["sh", "-c", "echo \"hi there\""]);
    // Compose's `limits.pids` (Docker's `--limit-pids`), as a number or a string.
    for (pids, want) in [("10", 10), ("'20'", 20), ("0", 0)] {
        let text = format!(
            "services:\n  a:\n    image: nginx\n    deploy:\n      resources:\n        limits: {{cpus: 0.5, pids: {pids}}}\n"
        );
        let s = load_one(&text).unwrap();
        assert_eq!(s.services[0].task.limits.pids, want, "{pids}");
        assert_eq!(s.services[0].task.limits.nano_cpus, 500_000_000, "{pids}");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }
    for bad in ["-1", "lots", "[1]", "1.5"] {
        let text = format!(
            "services:\n  a:\n    image: nginx\n    deploy:\n      resources:\n        limits: {{pids: {bad}}}\n"
        );
        let e = err(load_one(&text));
        assert!(
            e.contains("line 6") && e.contains("deploy.resources.limits.pids"),
            "{bad}: {e}"
        );
    }
    // Global with replicas is refused as Docker refuses it.
    let e = err(load_one(
        "services:\n  a:\n    image: nginx\n    deploy: {mode: global, replicas: 2}\n",
    ));
    assert!(e.contains("global"), "{e}");
}

#[test]
fn unsupported_keys_are_named_in_warnings_never_dropped_silently() {
    let text = r#"
services:
  web:
    image: nginx
    volumes: [{type: volume, source: data, target: /data, volume: {nocopy: true}}]
    healthcheck: {test: ["CMD", "true"], start_interval: 1s}
    x-anything: ignored quietly
    networks:
      front:
        aliases: [www]
    deploy:
      endpoint_mode: dnsrr
      max_replicas_per_node: 2
      restart_policy: {condition: any, window: 5s}
      resources:
        reservations: {pids: 10}
networks:
  front:
    driver: bridge
    ipam: {config: [{subnet: 10.0.0.0/24}]}
volumes:
  data:
    driver: nfs
"#;
    let s = load_one(text).unwrap();
    let w = s.warnings.join("\n");
    for needle in [
        "service web: key `volumes.volume` is not supported by skep and is ignored",
        "service web: key `healthcheck.start_interval` is not supported",
        "service web: key `deploy.endpoint_mode` is not supported",
        "service web: key `deploy.max_replicas_per_node` is not supported",
        "service web: key `deploy.restart_policy.window` is not supported",
        "service web: key `deploy.resources.reservations.pids` is not supported",
        "service web: key `networks.front.aliases` is not supported",
        "network front: key `ipam` is not supported",
        "driver \"bridge\" is not supported",
        "volume data: key `driver` is not supported",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in:\n{w}");
    }
    assert!(!w.contains("x-anything"), "{w}");
    assert_eq!(s.services[0].networks, ["getstartedlab_front"]);
}

#[test]
fn expose_takes_tcp_and_udp_ports() {
    let s = load_one(
        "services:\n  dns:\n    image: coredns\n    expose: [\"53/udp\", \"53\", 8080/tcp, 9153, \"53/udp\"]\n",
    )
    .unwrap();
    let spec = &s.services[0];
    assert_eq!(spec.expose, [53, 8080, 9153]);
    assert_eq!(spec.expose_udp, [53]);
    let e = err(load_one(
        "services:\n  dns:\n    image: coredns\n    expose: [\"53/sctp\"]\n",
    ));
    assert!(
        e.contains("services.dns.expose[0]") && e.contains("/tcp or /udp"),
        "{e}"
    );
}

#[test]
fn healthchecks_in_every_form() {
    use crate::store::service::HealthCheck;
    let check = |yaml: &str| -> Result<Option<HealthCheck>, String> {
        let text = format!("services:\n  web:\n    image: nginx\n{yaml}");
        load_one(&text)
            .map(|s| s.services[0].task.healthcheck.clone())
            .map_err(|e| e.to_string())
    };
    assert_eq!(check("").unwrap(), None);
    let h = check(
        "    healthcheck:\n      test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"]\n      interval: 1m30s\n      timeout: 10s\n      retries: \"5\"\n      start_period: 40s\n",
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.test, ["CMD", "curl", "-f", "http://localhost"]);
    assert_eq!(
        (h.interval_ms, h.timeout_ms, h.retries, h.start_period_ms),
        (90_000, 10_000, 5, 40_000)
    );
    // A string is a shell command line; Docker's defaults fill the rest.
    let h = check("    healthcheck:\n      test: curl -f http://localhost || exit 1\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        h,
        HealthCheck::new(vec![
            "CMD-SHELL".into(),
            "curl -f http://localhost || exit 1".into()
        ])
    );
    let h = check("    healthcheck:\n      disable: true\n")
        .unwrap()
        .unwrap();
    assert!(h.is_disabled());
    let h = check("    healthcheck:\n      test: [\"NONE\"]\n")
        .unwrap()
        .unwrap();
    assert!(h.is_disabled());
    for (yaml, needle) in [
        ("    healthcheck:\n      interval: 5s\n", "needs a `test`"),
        (
            "    healthcheck:\n      test: [\"CMD\"]\n",
            "needs a program after CMD",
        ),
        (
            "    healthcheck:\n      test: [\"curl\", \"x\"]\n",
            "must start with",
        ),
        (
            "    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: soon\n",
            "interval",
        ),
        (
            "    healthcheck:\n      test: [\"CMD\", \"true\"]\n      retries: -1\n",
            "retries",
        ),
        (
            "    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 0s\n",
            "at least 1ms",
        ),
        ("    healthcheck: [1, 2]\n", "healthcheck"),
    ] {
        let e = check(yaml).unwrap_err();
        assert!(e.contains(needle), "{yaml}: {e}");
        assert!(e.contains("services.web"), "{yaml}: {e}");
    }
}

#[test]
fn several_files_merge_later_keys_winning() {
    let base = r#"
version: "3.8"
services:
  web:
    image: nginx:1
    command: ["a", "b"]
    environment: [A=1, B=2]
    ports: ["80:80"]
    deploy: {replicas: 2, labels: {x: "1"}}
"#;
    let over = r#"
services:
  web:
    image: nginx:2
    command: ["c"]
    environment: {B: "3", C: "4"}
    ports: ["80:80", "443:443"]
    deploy: {replicas: 4}
  db:
    image: postgres
"#;
    let s = load(
        &[PathBuf::from("/a/base.yml"), PathBuf::from("/a/over.yml")],
        "st",
        &BTreeMap::new(),
        &files(&[("/a/base.yml", base), ("/a/over.yml", over)]),
    )
    .unwrap();
    let web = &s.services[0];
    assert_eq!(web.task.image, "nginx:2");
    assert_eq!(web.task.command, ["c"]);
    assert_eq!(web.task.env, ["A=1", "B=3", "C=4"]);
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.mode, Mode::Replicated { replicas: 4 });
    assert_eq!(web.labels["x"], "1");
    assert_eq!(s.services[1].name, "st_db");
    // Services without networks share the stack's default network.
    assert_eq!(s.networks.len(), 1);
    assert_eq!(s.networks[0].name, "st_default");
}

#[test]
fn bad_files_are_refused_with_the_line_and_the_key() {
    // A syntax error: the line.
    let e = err(load_one("services:\n  web:\n    image: [nginx\n"));
    assert!(e.starts_with("/app/docker-compose.yml: line"), "{e}");
    assert!(e.contains("not valid YAML"), "{e}");
    // A wrong type: the line and the key path.
    let e = err(load_one(
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: five\n",
    ));
    assert!(e.contains("line 5: services.web.deploy.replicas"), "{e}");
    // Versions Docker refuses.
    for v in ["\"1\"", "banana", "\"2.4\"", "\"3.\""] {
        let e = err(load_one(&format!(
            "version: {v}\nservices:\n  a:\n    image: nginx\n"
        )));
        assert!(e.contains("unsupported Compose file version"), "{v}: {e}");
    }
    for v in ["\"3\"", "\"3.9\"", "3.8", "3"] {
        load_one(&format!(
            "version: {v}\nservices:\n  a:\n    image: nginx\n"
        ))
        .unwrap();
    }
    // No services, or not a mapping.
    assert!(err(load_one("version: \"3\"\n")).contains("services"));
    assert!(err(load_one("- a\n- b\n")).contains("not a Compose file"));
    // The manager's own checks apply: a bad image, a missing exec command.
    assert!(err(load_one("services:\n  a:\n    image: \"UPPER/Case\"\n")).contains("image"));
    let e = err(load_one("services:\n  a:\n    x-skep-runtime: exec\n"));
    assert!(e.contains("services.a") && e.contains("command"), "{e}");
    let e = err(load_one(
        "services:\n  a:\n    x-skep-runtime: rkt\n    image: x\n",
    ));
    assert!(e.contains("rkt"), "{e}");
    // Duplicate keys.
    let e = err(load_one("services:\n  a:\n    image: x\n    image: y\n"));
    assert!(e.contains("image"), "{e}");
    // A bad stack name.
    assert!(matches!(
        load(
            &[PathBuf::from("/x")],
            "../x",
            &BTreeMap::new(),
            &files(&[])
        ),
        Err(StackError::Name(_))
    ));
}

#[test]
fn a_yaml_bomb_is_refused_quickly() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
    let mut prev = "a";
    for n in names {
        text.push_str(&format!(
            "{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = n;
    }
    text.push_str("services:\n  web:\n    image: nginx\n    command: *i\n");
    let started = Instant::now();
    let e = err(load_one(&text));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(e.contains("not valid YAML"), "{e}");
}

#[test]
fn size_and_count_limits() {
    let big = format!(
        "services:\n  a:\n    image: nginx\n# {}\n",
        "x".repeat(MAX_FILE_BYTES)
    );
    let e = err(load(
        &[PathBuf::from("/big.yml")],
        "s",
        &BTreeMap::new(),
        &files(&[("/big.yml", &big)]),
    ));
    assert!(e.contains("/big.yml") && e.contains("larger"), "{e}");
    let mut many = String::from("services:\n");
    for i in 0..=MAX_SERVICES {
        many.push_str(&format!("  s{i}:\n    image: nginx\n"));
    }
    assert!(err(load_one(&many)).contains("a stack may have"));
}

#[test]
fn command_strings_split_like_a_shell() {
    use super::words::split_words;
    assert_eq!(split_words("a  b\tc").unwrap(), ["a", "b", "c"]);
    assert_eq!(
        split_words(r#"sh -c "echo \"x\" 'y'""#).unwrap(),
        ["sh", "-c", "echo \"x\" 'y'"]
    );
    assert_eq!(split_words("a\\ b ''").unwrap(), ["a b", ""]);
    assert!(split_words("'open").is_err());
}

#[test]
fn the_fuzz_entry_point_never_panics_on_odd_input() {
    for text in [
        "",
        "~",
        "services: ~",
        "services: {a: ~}",
        "services: {a: [1]}",
        "services: {a: {ports: 5}}",
        "services: {a: {ports: [{target: 99999, published: 1}]}}",
        "services: {a: {deploy: {replicas: -1}, image: x}}",
        "services: {a: {secrets: [{source: 1}]}}",
        "services: {a: {networks: {x: 5}}}",
        "secrets: {a: {external: 5}}\nservices: {a: {image: x}}",
        "{1: 2}",
        "services:\n  a:\n    image: x\n    command: \"\\\"\"",
    ] {
        let _ = load_str_for_fuzz(text);
    }
}

#[test]
fn volumes_become_mounts_named_for_the_stack() {
    use crate::store::service::MountKind;
    let text = r#"
services:
  redis:
    image: redis
    command: redis-server --appendonly yes
    volumes:
      - data:/data
      - shared:/shared:ro
      - /srv/redis/conf:/etc/redis:ro
      - type: tmpfs
        target: /cache
        tmpfs: {size: 64m}
      - {type: volume, source: named, target: /named, read_only: true}
volumes:
  data:
    labels: {tier: db}
  shared:
    external: true
  named:
    name: exact-name
"#;
    let s = load_one(text).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let m = &s.services[0].task.mounts;
    assert_eq!(m.len(), 5);
    assert_eq!(
        (
            m[0].kind,
            m[0].source.as_str(),
            m[0].target.as_str(),
            m[0].read_only
        ),
        (MountKind::Volume, "getstartedlab_data", "/data", false)
    );
    assert_eq!(
        m[0].volume_labels[crate::stack::NAMESPACE_LABEL],
        "getstartedlab"
    );
    assert_eq!(m[0].volume_labels["tier"], "db");
    // An external volume keeps its name and gets no label: stack rm --volumes never finds it.
    assert_eq!((m[1].source.as_str(), m[1].read_only), ("shared", true));
    assert!(m[1].volume_labels.is_empty());
    assert_eq!(
        (m[2].kind, m[2].source.as_str(), m[2].read_only),
        (MountKind::Bind, "/srv/redis/conf", true)
    );
    assert_eq!((m[3].kind, m[3].tmpfs_size), (MountKind::Tmpfs, 64 << 20));
    assert_eq!((m[4].source.as_str(), m[4].read_only), ("exact-name", true));
    crate::spec::service::validate(&s.services[0]).unwrap();

    for (bad, says) in [
        ("- nope:/data", "not declared"),
        ("- /data", "no source"),
        ("- ./rel:/data", "not absolute"),
        ("- data:/data:rx", "not ro or rw"),
        ("- data:relative", "not an absolute path"),
        ("- data:/run/secrets", "overlaps /run/secrets"),
        ("- /srv/../etc:/x", "plain path"),
        (
            "- {type: nfs, source: data, target: /d}",
            "not volume, bind or tmpfs",
        ),
    ] {
        let text = format!(
            "services:\n  a:\n    image: nginx\n    volumes:\n      {bad}\nvolumes:\n  data:\n"
        );
        let e = err(load_one(&text));
        assert!(e.contains(says), "{bad}: {e}");
    }
    let e = err(load_one(
        "services:\n  a:\n    image: nginx\nvolumes:\n  data:\n    name: ../x\n",
    ));
    assert!(e.contains("volume name"), "{e}");
    // The exec runtime has no mounts: refused by the spec's one rule.
    let e = err(load_one(
        "services:\n  a:\n    x-skep-runtime: exec\n    command: [/bin/true]\n    volumes: [data:/d]\nvolumes:\n  data:\n",
    ));
    assert!(e.contains("exec runtime"), "{e}");
}
