//! The one validator of service specs, whether they come from the CLI over the control API,
//! from a Compose file or from the manager's own store.
//!
//! Everything here is untrusted input: every check names the field it refuses, in the words
//! `docker service create` would use, so the operator knows what to fix. Parsing the free-text
//! pieces (constraints, modes) happens here too, so the rest of the manager only ever sees
//! values that parsed.

use crate::store::service::{
    Constraint, ConstraintOp, HealthCheck, Limit, Mode, PortConfig, PortIdentity, PortProtocol,
    PublishMode, Resources, Runtime, ServiceSpec, TaskSpec, UpdateConfig,
};

/// The largest replica count a service may ask for: each replica is a task in the replicated
/// state, and the orchestrator writes new tasks in one Raft entry.
pub const MAX_REPLICAS: u64 = 10_000;

/// The longest delay or monitor period accepted, in milliseconds (30 days).
pub const MAX_DURATION_MS: u64 = 30 * 24 * 3600 * 1000;

/// Why a service spec was refused. Each message starts with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The service name breaks Docker's naming rule.
    #[error(
        "name: {} is not a valid service name ({reason}; use letters, digits, '_', '.' \
         and '-', starting with a letter or digit, at most 63 characters)",
        crate::util::quote(.name)
    )]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A health check that cannot run.
    #[error("healthcheck: {0}")]
    Health(String),
    /// `--replicas` given for a global service.
    #[error("replicas: a global service has no replicas")]
    GlobalReplicas,
    /// Too many replicas, or an unknown mode.
    #[error("replicas: {0}")]
    Replicas(String),
    /// A published port that does not parse or clashes.
    #[error("publish {}: {reason}", crate::util::quote(.text))]
    Publish {
        /// The port as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--mode` is neither replicated nor global.
    #[error("mode: {} is not a service mode (use replicated or global)", crate::util::quote(.0))]
    Mode(String),
    /// A placement constraint that does not parse or names an unknown key.
    #[error("constraint {}: {reason}", crate::util::quote(.text))]
    Constraint {
        /// The constraint as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The image reference does not follow Docker's grammar.
    #[error("image: {} is not a valid image reference", crate::util::quote(.0))]
    Image(String),
    /// The image does not fit the runtime.
    #[error("image: {0}")]
    ImageRuntime(&'static str),
    /// The command is missing or unusable.
    #[error("command: {0}")]
    Command(&'static str),
    /// An environment entry is not `KEY=VALUE`.
    #[error("env: {} is not KEY=VALUE", crate::util::quote(.0))]
    Env(String),
    /// A label key is empty or unusable.
    #[error("labels: {} is not a valid label key", crate::util::quote(.0))]
    Label(String),
    /// A restart setting is out of range.
    #[error("restart.{field}: {reason}")]
    Restart {
        /// The field (`delay_ms`, ...).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A secret attachment the runtime cannot honour.
    #[error("{0}")]
    Secret(String),
    /// A mount that is malformed, overlaps another or that the runtime cannot make.
    #[error("mount: {0}")]
    Mount(String),
    /// An update or rollback setting is out of range.
    #[error("{section}.{field}: {reason}")]
    Update {
        /// `update` or `rollback`.
        section: &'static str,
        /// The field (`parallelism`, `delay_ms`, `monitor_ms`).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A network name that is invalid or given twice.
    #[error("network {}: {reason}", crate::util::quote(.name))]
    Network {
        /// The network as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A list or a text longer than a spec may hold (everything in it is replicated and
    /// stored).
    #[error("{field}: {reason}")]
    TooLarge {
        /// `labels`, `env` and the like.
        field: &'static str,
        /// The bound it broke.
        reason: String,
    },
    /// Reservations or limits are out of range.
    #[error("{field}: {reason}")]
    Resources {
        /// `reservations.memory_bytes` and the like.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Parses `--publish`: `PUBLISHED:TARGET[/PROTOCOL]` or
/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host][,identity=none|required]`.
pub fn parse_publish(text: &str) -> Result<PortConfig, SpecError> {
    let bad = |reason: &str| SpecError::Publish {
        text: text.chars().take(80).collect(),
        reason: reason.to_string(),
    };
    let port = |v: &str, what: &str| -> Result<u16, SpecError> {
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad(&format!(
                "{what} port {} is not a number from 1 to 65535",
                crate::util::quote(v)
            ))),
        }
    };
    let protocol = |v: &str| match v {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(bad(&format!(
            "protocol {} is not tcp or udp",
            crate::util::quote(other)
        ))),
    };
    if text.contains('=') {
        let (mut published, mut target) = (None, None);
        let mut cfg = PortConfig {
            published: 0,
            target: 0,
            protocol: PortProtocol::Tcp,
            mode: PublishMode::Ingress,
            identity: PortIdentity::None,
        };
        for part in text.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(&format!("{} is not KEY=VALUE", crate::util::quote(part))))?;
            match k.trim() {
                "published" => published = Some(port(v, "published")?),
                "target" => target = Some(port(v, "target")?),
                "protocol" => cfg.protocol = protocol(v.trim())?,
                "mode" => {
                    cfg.mode = match v.trim() {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(bad(&format!(
                                "mode {} is not ingress or host",
                                crate::util::quote(other)
                            )));
                        }
                    }
                }
                "identity" => cfg.identity = port_identity(v.trim()).map_err(|e| bad(&e))?,
                other => return Err(bad(&format!("unknown key {}", crate::util::quote(other)))),
            }
        }
        cfg.target = target.ok_or_else(|| bad("target is missing"))?;
        cfg.published =
            published.ok_or_else(|| bad("published is missing (skep does not pick one)"))?;
        return Ok(cfg);
    }
    let (ports, proto) = match text.split_once('/') {
        Some((p, proto)) => (p, protocol(proto)?),
        None => (text, PortProtocol::Tcp),
    };
    let (published, target) = ports
        .split_once(':')
        .ok_or_else(|| bad("expected PUBLISHED:TARGET (skep does not pick a published port)"))?;
    Ok(PortConfig {
        published: port(published, "published")?,
        target: port(target, "target")?,
        protocol: proto,
        mode: PublishMode::Ingress,
        identity: PortIdentity::None,
    })
}

/// A published port's `identity=` value: `none` or `required`.
pub fn port_identity(text: &str) -> Result<PortIdentity, String> {
    match text {
        "none" => Ok(PortIdentity::None),
        "required" => Ok(PortIdentity::Required),
        other => Err(format!(
            "identity {} is not none or required",
            crate::util::quote(other)
        )),
    }
}

/// Derives what the manager keeps in step with the rest of a spec: the tasks' target ports
/// from the published ports.
pub fn normalize(spec: &mut ServiceSpec) {
    let mut targets: Vec<u16> = spec.ports.iter().map(|p| p.target).collect();
    targets.extend(
        spec.expose
            .iter()
            .chain(&spec.expose_udp)
            .copied()
            .filter(|p| *p > 0),
    );
    targets.sort_unstable();
    targets.dedup();
    spec.task.ports = targets;
    spec.task.networks = spec.networks.clone();
}

/// `0.5` CPUs → 500 000 000 nano-CPUs.
pub fn parse_cpus(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid CPU count {text:?}: expected a decimal number of CPUs (e.g. 0.5)");
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 {
        return Err(format!(
            "invalid CPU count {text:?}: at most 9 decimal places"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac_nanos: u64 = if frac.is_empty() {
        0
    } else {
        let digits: u64 = frac.parse().map_err(|_| bad())?;
        digits * 10u64.pow(9 - u32::try_from(frac.len()).unwrap_or(9))
    };
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(|| format!("invalid CPU count {text:?}: too large"))
}

/// `64M`, `1.5g`, `512MiB`, `1048576` → bytes (powers of 1024, as Docker counts them).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {text:?}: expected a number of bytes with an optional unit b, k, m, g or t (e.g. 64M)"
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 9 {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut total = whole << shift;
    if !frac.is_empty() {
        let digits: u128 = frac.parse().map_err(|_| bad())?;
        total += (digits << shift) / 10u128.pow(u32::try_from(frac.len()).unwrap_or(9));
    }
    u64::try_from(total).map_err(|_| format!("invalid size {text:?}: too large"))
}

/// Checks a whole spec; the first problem found is returned.
pub fn validate(spec: &ServiceSpec) -> Result<(), SpecError> {
    validate_name(&spec.name)?;
    check_sizes(spec)?;
    check_ports(spec)?;
    check_networks(spec)?;
    for key in spec.labels.keys() {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SpecError::Label(key.clone()));
        }
    }
    if let Mode::Replicated { replicas } = spec.mode
        && replicas > MAX_REPLICAS
    {
        return Err(SpecError::Replicas(format!(
            "{replicas} is more than the {MAX_REPLICAS} replicas a service may have"
        )));
    }
    check_task(&spec.task)?;
    check_update("update", &spec.update)?;
    check_update("rollback", &spec.rollback)?;
    Ok(())
}

/// Published ports: 1 to 65535, each (port, protocol) once; a target published with
/// `identity=required` only so (else the other published port would be a way around it).
fn check_ports(spec: &ServiceSpec) -> Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for p in &spec.ports {
        if spec
            .ports
            .iter()
            .any(|q| q.target == p.target && q.protocol == p.protocol && q.identity != p.identity)
        {
            return Err(SpecError::Publish {
                text: format!("{}:{}", p.published, p.target),
                reason: format!(
                    "target port {} is published both with and without identity=required",
                    p.target
                ),
            });
        }
        if p.published == 0 || p.target == 0 {
            return Err(SpecError::Publish {
                text: format!("{}:{}", p.published, p.target),
                reason: "ports are 1 to 65535".into(),
            });
        }
        if p.identity == PortIdentity::Required && p.protocol != PortProtocol::Tcp {
            return Err(SpecError::Publish {
                text: format!("{}:{}", p.published, p.target),
                reason:
                    "identity=required needs protocol=tcp (the mesh authenticates callers with TLS)"
                        .into(),
            });
        }
        if p.identity == PortIdentity::Required && p.mode != PublishMode::Ingress {
            return Err(SpecError::Publish {
                text: format!("{}:{}", p.published, p.target),
                reason:
                    "identity=required needs mode=ingress (the routing mesh authenticates callers)"
                        .into(),
            });
        }
        if p.identity == PortIdentity::Required && !spec.task.identity {
            return Err(SpecError::Publish {
                text: format!("{}:{}", p.published, p.target),
                reason: "identity=required needs the service's workload identity (drop --identity=false): \
                         the node presents the task's SVID to callers"
                    .into(),
            });
        }
        if !seen.insert((p.published, p.protocol)) {
            return Err(SpecError::Publish {
                text: format!("{}:{}", p.published, p.target),
                reason: format!("port {} is published twice", p.published),
            });
        }
    }
    Ok(())
}

/// Networks: at most 64, each a valid name, none twice.
fn check_networks(spec: &ServiceSpec) -> Result<(), SpecError> {
    if spec.networks.len() > 64 {
        return Err(SpecError::Network {
            name: String::new(),
            reason: "a service is attached to at most 64 networks",
        });
    }
    let mut nets = std::collections::BTreeSet::new();
    for n in &spec.networks {
        if super::secret::validate_name(n).is_err() {
            return Err(SpecError::Network {
                name: n.clone(),
                reason: "not a valid network name (letters, digits, '_', '.' and '-', at most 64 characters)",
            });
        }
        if !nets.insert(n) {
            return Err(SpecError::Network {
                name: n.clone(),
                reason: "given twice",
            });
        }
    }
    Ok(())
}

/// The task: runtime and image or command, health check, environment, restart delay,
/// constraints and resources.
fn check_task(task: &TaskSpec) -> Result<(), SpecError> {
    match task.runtime {
        Runtime::Exec => {
            if !task.image.is_empty() {
                return Err(SpecError::ImageRuntime(
                    "the exec runtime takes no image (give the program as the command)",
                ));
            }
            if task.command.first().is_none_or(|c| c.is_empty()) {
                return Err(SpecError::Command("the exec runtime needs a command"));
            }
            if let Some((name, sig)) = task.secrets.iter().find_map(|r| match &r.on_change {
                crate::store::service::OnChange::Signal(s) if !super::secret::exec_forwards(s) => {
                    Some((&r.secret_name, s))
                }
                _ => None,
            }) {
                return Err(SpecError::Secret(format!(
                    "secret {name}: on-change=signal:{sig}: the exec runtime passes on only {} to a task",
                    super::secret::EXEC_SIGNALS
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Runtime::Docker => {
            if task.image.is_empty() {
                return Err(SpecError::ImageRuntime("the docker runtime needs an image"));
            }
            parse_image(&task.image)?;
        }
    }
    if task.command.iter().any(|a| a.contains('\0')) {
        return Err(SpecError::Command("arguments may not contain NUL bytes"));
    }
    if let Some(h) = &task.healthcheck {
        validate_health(h)?;
    }
    for e in &task.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains('\0') && !e.contains('\0') => {}
            _ => return Err(SpecError::Env(e.clone())),
        }
    }
    if task.restart.delay_ms > MAX_DURATION_MS {
        return Err(SpecError::Restart {
            field: "delay_ms",
            reason: too_long(task.restart.delay_ms),
        });
    }
    for c in &task.constraints {
        check_constraint(c)?;
    }
    check_resources(&task.reservations, &task.limits)?;
    super::mount::check(task).map_err(SpecError::Mount)?;
    Ok(())
}

/// Turns `--mode` and `--replicas` into a [`Mode`]; a replicated service defaults to one
/// replica.
pub fn parse_mode(mode: &str, replicas: Option<u64>) -> Result<Mode, SpecError> {
    match mode {
        "" | "replicated" => {
            let replicas = replicas.unwrap_or(1);
            if replicas > MAX_REPLICAS {
                return Err(SpecError::Replicas(format!(
                    "{replicas} is more than the {MAX_REPLICAS} replicas a service may have"
                )));
            }
            Ok(Mode::Replicated { replicas })
        }
        "global" if replicas.is_some() => Err(SpecError::GlobalReplicas),
        "global" => Ok(Mode::Global),
        other => Err(SpecError::Mode(other.to_string())),
    }
}

/// Parses `node.labels.zone==eu`, `node.role != manager` and the like.
pub fn parse_constraint(s: &str) -> Result<Constraint, SpecError> {
    let err = |reason: String| SpecError::Constraint {
        text: s.to_string(),
        reason,
    };
    let (key, op, value) = if let Some((k, v)) = s.split_once("==") {
        (k, ConstraintOp::Eq, v)
    } else if let Some((k, v)) = s.split_once("!=") {
        (k, ConstraintOp::Ne, v)
    } else {
        return Err(err("expected KEY==VALUE or KEY!=VALUE".into()));
    };
    let (key, value) = (key.trim(), value.trim());
    let key = canonical_key(key).map_err(err)?;
    let c = Constraint {
        key,
        op,
        value: value.to_string(),
    };
    check_value(&c).map_err(err)?;
    Ok(c)
}

/// The constraint as an operator writes it: `node.role==worker`.
pub fn constraint_text(c: &Constraint) -> String {
    let op = match c.op {
        ConstraintOp::Eq => "==",
        ConstraintOp::Ne => "!=",
    };
    format!("{}{op}{}", c.key, c.value)
}

/// Checks an image reference against Docker's grammar
/// (`[domain[:port]/]path[/path...][:tag][@algorithm:hex]`, lower-case path). Nothing is
/// pulled or resolved.
pub fn parse_image(s: &str) -> Result<(), SpecError> {
    super::image::check(s).map_err(|_| SpecError::Image(s.to_string()))
}

/// A check runs (`CMD` with a program, `CMD-SHELL` with a command line) or is `NONE`; its
/// times are within a day and the interval at least a millisecond, as Docker requires.
fn validate_health(h: &HealthCheck) -> Result<(), SpecError> {
    let bad = |m: &str| Err(SpecError::Health(m.to_string()));
    match h.test.first().map(String::as_str) {
        Some("NONE") if h.test.len() == 1 => {}
        Some("NONE") => return bad("test [\"NONE\"] takes nothing after NONE"),
        Some("CMD") if h.test.get(1).is_some_and(|p| !p.is_empty()) => {}
        Some("CMD") => return bad("test [\"CMD\", ...] needs a program after CMD"),
        Some("CMD-SHELL") if h.test.len() == 2 && !h.test[1].trim().is_empty() => {}
        Some("CMD-SHELL") => {
            return bad("test [\"CMD-SHELL\", ...] takes exactly one command line after CMD-SHELL");
        }
        _ => {
            return bad(
                "test must start with \"CMD\", \"CMD-SHELL\" or \"NONE\" (or be a plain command line)",
            );
        }
    }
    if h.test.iter().any(|a| a.contains('\0')) || h.test.len() > 256 {
        return bad("test may not contain NUL bytes or more than 256 arguments");
    }
    const DAY_MS: u64 = 86_400_000;
    for (what, ms) in [
        ("interval", h.interval_ms),
        ("timeout", h.timeout_ms),
        ("start_period", h.start_period_ms),
    ] {
        if ms > DAY_MS {
            return bad(&format!("{what} may be at most 24h"));
        }
    }
    if h.interval_ms == 0 || h.timeout_ms == 0 {
        return bad("interval and timeout must be at least 1ms");
    }
    if h.retries == 0 || h.retries > 1000 {
        return bad("retries must be 1 to 1000");
    }
    Ok(())
}

/// The longest service name (a DNS label).
pub const MAX_NAME_BYTES: usize = 63;

fn validate_name(name: &str) -> Result<(), SpecError> {
    super::name::check(name, MAX_NAME_BYTES).map_err(|e| SpecError::Name {
        name: name.to_string(),
        reason: match e {
            super::name::NameError::TooLong => "it is longer than 63 characters",
            other => other.reason(),
        },
    })
}

/// Labels a service may carry.
pub const MAX_LABELS: usize = 256;
/// Bytes of a label key.
pub const MAX_LABEL_KEY_BYTES: usize = 256;
/// Bytes of a label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// Environment entries, and command arguments, a task may have.
pub const MAX_LIST_ITEMS: usize = 1024;
/// Bytes of one environment entry or command argument.
pub const MAX_ITEM_BYTES: usize = 32 * 1024;
/// Placement constraints of a service.
pub const MAX_CONSTRAINTS: usize = 64;
/// Bytes of a constraint's key or value.
pub const MAX_CONSTRAINT_BYTES: usize = 256;

/// Every list and text of a spec within its bound: all of it is replicated and stored.
fn check_sizes(spec: &ServiceSpec) -> Result<(), SpecError> {
    let too = |field, reason: String| Err(SpecError::TooLarge { field, reason });
    let long = |what: &str, text: &str, max: usize| {
        format!(
            "{what} {} is longer than {max} bytes",
            crate::util::quote(text)
        )
    };
    if spec.labels.len() > MAX_LABELS {
        return too(
            "labels",
            format!("a service has at most {MAX_LABELS} labels"),
        );
    }
    for (k, v) in &spec.labels {
        if k.len() > MAX_LABEL_KEY_BYTES {
            return too("labels", long("the key", k, MAX_LABEL_KEY_BYTES));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return too(
                "labels",
                long(
                    &format!("the value of {}", crate::util::quote(k)),
                    v,
                    MAX_LABEL_VALUE_BYTES,
                ),
            );
        }
    }
    let task = &spec.task;
    for (field, list) in [("env", &task.env), ("command", &task.command)] {
        if list.len() > MAX_LIST_ITEMS {
            return too(field, format!("at most {MAX_LIST_ITEMS} entries"));
        }
        if let Some(e) = list.iter().find(|e| e.len() > MAX_ITEM_BYTES) {
            return too(field, long("the entry", e, MAX_ITEM_BYTES));
        }
    }
    if task.constraints.len() > MAX_CONSTRAINTS {
        return too(
            "constraint",
            format!("a service has at most {MAX_CONSTRAINTS} constraints"),
        );
    }
    for c in &task.constraints {
        for part in [&c.key, &c.value] {
            if part.len() > MAX_CONSTRAINT_BYTES {
                return too(
                    "constraint",
                    long("the key or value", part, MAX_CONSTRAINT_BYTES),
                );
            }
        }
    }
    if let Some(h) = &task.healthcheck
        && let Some(t) = h.test.iter().find(|t| t.len() > MAX_ITEM_BYTES)
    {
        return too("healthcheck", long("the argument", t, MAX_ITEM_BYTES));
    }
    Ok(())
}

fn too_long(ms: u64) -> String {
    format!("{ms} ms is longer than the {MAX_DURATION_MS} ms (30 days) allowed")
}

fn check_update(section: &'static str, u: &UpdateConfig) -> Result<(), SpecError> {
    if u.parallelism > MAX_REPLICAS {
        return Err(SpecError::Update {
            section,
            field: "parallelism",
            reason: format!(
                "{} is more than {MAX_REPLICAS} (use 0 to replace all tasks at once)",
                u.parallelism
            ),
        });
    }
    for (field, ms) in [("delay_ms", u.delay_ms), ("monitor_ms", u.monitor_ms)] {
        if ms > MAX_DURATION_MS {
            return Err(SpecError::Update {
                section,
                field,
                reason: too_long(ms),
            });
        }
    }
    Ok(())
}

/// The most process IDs a `--limit-pids` may give: the kernel's own ceiling on `pid_max`.
pub const MAX_PIDS: u64 = 1 << 22;

fn check_resources(res: &Resources, lim: &Limit) -> Result<(), SpecError> {
    const MIN_MEMORY: u64 = 4 * 1024 * 1024;
    const MIN_CPU: u64 = 1_000_000;
    if lim.pids > MAX_PIDS {
        return Err(SpecError::Resources {
            field: "limits.pids",
            reason: format!("{} is more than the kernel's {MAX_PIDS}", lim.pids),
        });
    }
    for (field, v) in [
        ("limits.memory_bytes", lim.memory_bytes),
        ("reservations.memory_bytes", res.memory_bytes),
    ] {
        if v != 0 && v < MIN_MEMORY {
            return Err(SpecError::Resources {
                field,
                reason: format!("{v} bytes is less than the 4 MiB minimum"),
            });
        }
    }
    for (field, v) in [
        ("limits.nano_cpus", lim.nano_cpus),
        ("reservations.nano_cpus", res.nano_cpus),
    ] {
        if v != 0 && v < MIN_CPU {
            return Err(SpecError::Resources {
                field,
                reason: format!("{v} is less than the 0.001 CPU minimum"),
            });
        }
    }
    if lim.memory_bytes != 0 && res.memory_bytes > lim.memory_bytes {
        return Err(SpecError::Resources {
            field: "reservations.memory_bytes",
            reason: "the reservation exceeds the limit".into(),
        });
    }
    if lim.nano_cpus != 0 && res.nano_cpus > lim.nano_cpus {
        return Err(SpecError::Resources {
            field: "reservations.nano_cpus",
            reason: "the reservation exceeds the limit".into(),
        });
    }
    Ok(())
}

fn check_constraint(c: &Constraint) -> Result<(), SpecError> {
    let err = |reason: String| SpecError::Constraint {
        text: constraint_text(c),
        reason,
    };
    let key = canonical_key(&c.key).map_err(err)?;
    if key != c.key {
        return Err(err(format!("write the key as {key}")));
    }
    check_value(c).map_err(err)
}

/// `node.id`, `node.hostname`, `node.role` (any case) or `node.labels.KEY` (the label key kept
/// as written).
fn canonical_key(key: &str) -> Result<String, String> {
    const LABELS: &str = "node.labels.";
    let lower = key.to_ascii_lowercase();
    if matches!(lower.as_str(), "node.id" | "node.hostname" | "node.role") {
        return Ok(lower);
    }
    if lower.starts_with(LABELS) && key.is_char_boundary(LABELS.len()) {
        let label = &key[LABELS.len()..];
        if label.is_empty() || label.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{} names no valid label key",
                crate::util::quote(key)
            ));
        }
        return Ok(format!("{LABELS}{label}"));
    }
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    Err(format!(
        "unknown key {} (use node.id, node.hostname, node.role or node.labels.KEY)",
        crate::util::prefix(key, crate::util::QUOTE_BYTES)
    ))
}

fn check_value(c: &Constraint) -> Result<(), String> {
    if c.value.is_empty() {
        return Err("the value is empty".into());
    }
    if c.value.chars().any(|ch| ch.is_control()) {
        return Err("the value contains control characters".into());
    }
    if c.key == "node.role"
        && !matches!(c.value.to_ascii_lowercase().as_str(), "manager" | "worker")
    {
        return Err(format!(
            "node.role is manager or worker, not {}",
            crate::util::quote(&c.value)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::service::TaskSpec;

    fn spec() -> ServiceSpec {
        let mut task = TaskSpec::new(Runtime::Docker, "nginx:1.27", vec![]);
        task.env = vec!["A=1".into()];
        let mut s = ServiceSpec::new("web", task);
        s.mode = Mode::Replicated { replicas: 2 };
        s
    }

    fn field_of(spec: &ServiceSpec) -> String {
        validate(spec).expect_err("should be refused").to_string()
    }

    #[test]
    fn a_good_spec_passes() {
        assert_eq!(validate(&spec()), Ok(()));
        let mut s = spec();
        s.task.runtime = Runtime::Exec;
        s.task.image.clear();
        s.task.command = vec!["/bin/sleep".into(), "60".into()];
        s.task.constraints = vec![parse_constraint("node.labels.zone == eu").expect("parses")];
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn oversized_lists_and_texts_are_refused_quoting_a_prefix() {
        let big = "x".repeat(120 * 1024);
        type Tamper<'a> = Box<dyn Fn(&mut ServiceSpec) + 'a>;
        let cases: Vec<(&str, Tamper)> = vec![
            (
                "labels: ",
                Box::new(|s| {
                    s.labels.insert(big.clone(), "v".into());
                }),
            ),
            (
                "labels: ",
                Box::new(|s| {
                    s.labels.insert("k".into(), big.clone());
                }),
            ),
            ("env: ", Box::new(|s| s.task.env.push(format!("K={big}")))),
            ("command: ", Box::new(|s| s.task.command.push(big.clone()))),
            (
                "constraint: ",
                Box::new(|s| {
                    s.task.constraints.push(Constraint {
                        key: format!("node.labels.{big}"),
                        op: ConstraintOp::Eq,
                        value: "x".into(),
                    });
                }),
            ),
        ];
        for (field, set) in cases {
            let mut s = spec();
            set(&mut s);
            let e = field_of(&s);
            assert!(e.starts_with(field), "{e}");
            assert!(e.len() < 300, "{e}");
        }
        let mut s = spec();
        s.labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(field_of(&s).starts_with("labels: "));
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut s = spec();
        s.name = "-web".into();
        assert!(field_of(&s).starts_with("name: "));
        s.name = "a".repeat(64);
        assert!(field_of(&s).starts_with("name: "));
        s.name = "we b".into();
        assert!(field_of(&s).starts_with("name: "));

        let mut s = spec();
        s.task.image = "UPPER:case".into();
        assert_eq!(
            field_of(&s),
            "image: \"UPPER:case\" is not a valid image reference"
        );

        let mut s = spec();
        s.task.runtime = Runtime::Exec;
        s.task.image.clear();
        assert_eq!(field_of(&s), "command: the exec runtime needs a command");

        // An exec task can be sent only the signals its init helper passes on.
        let mut s = spec();
        s.task.runtime = Runtime::Exec;
        s.task.image.clear();
        s.task.command = vec!["/bin/true".into()];
        let mut r = crate::store::service::SecretRef::new("db");
        r.on_change = crate::store::service::OnChange::Signal("SIGWINCH".into());
        s.task.secrets = vec![r.clone()];
        assert!(
            field_of(&s).contains("passes on only SIGTERM"),
            "{}",
            field_of(&s)
        );
        r.on_change = crate::store::service::OnChange::Signal("SIGUSR1".into());
        s.task.secrets = vec![r];
        assert!(validate(&s).is_ok());

        let mut s = spec();
        s.task.env = vec!["FOO".into()];
        assert_eq!(field_of(&s), "env: \"FOO\" is not KEY=VALUE");

        let mut s = spec();
        s.update.delay_ms = u64::MAX;
        assert!(field_of(&s).starts_with("update.delay_ms: "));
        let mut s = spec();
        s.rollback.parallelism = u64::MAX;
        assert!(field_of(&s).starts_with("rollback.parallelism: "));
        let mut s = spec();
        s.task.restart.delay_ms = u64::MAX;
        assert!(field_of(&s).starts_with("restart.delay_ms: "));

        let mut s = spec();
        s.mode = Mode::Replicated { replicas: u64::MAX };
        assert!(field_of(&s).starts_with("replicas: "));

        let mut s = spec();
        s.task.reservations.memory_bytes = 1 << 30;
        s.task.limits.memory_bytes = 1 << 29;
        assert!(field_of(&s).starts_with("reservations.memory_bytes: "));
        let mut s = spec();
        s.task.limits.pids = MAX_PIDS + 1;
        assert!(field_of(&s).starts_with("limits.pids: "));
        s.task.limits.pids = MAX_PIDS;
        assert!(validate(&s).is_ok());

        let mut s = spec();
        s.task.constraints = vec![Constraint {
            key: "node.rol".into(),
            op: ConstraintOp::Eq,
            value: "x".into(),
        }];
        assert_eq!(
            field_of(&s),
            "constraint \"node.rol==x\": unknown key node.rol (use node.id, node.hostname, \
             node.role or node.labels.KEY)"
        );

        assert_eq!(
            parse_mode("global", Some(3))
                .expect_err("refused")
                .to_string(),
            "replicas: a global service has no replicas"
        );
        assert!(parse_mode("daemonset", None).is_err());
        assert_eq!(parse_mode("", None), Ok(Mode::Replicated { replicas: 1 }));
    }

    #[test]
    fn constraints_parse() {
        let c = parse_constraint("node.labels.zone==eu").expect("parses");
        assert_eq!(
            (c.key.as_str(), c.op, c.value.as_str()),
            ("node.labels.zone", ConstraintOp::Eq, "eu")
        );
        let c = parse_constraint("Node.Role != manager").expect("parses");
        assert_eq!((c.key.as_str(), c.op), ("node.role", ConstraintOp::Ne));
        assert_eq!(constraint_text(&c), "node.role!=manager");
        let e = parse_constraint("node.rol==x")
            .expect_err("refused")
            .to_string();
        assert_eq!(
            e,
            "constraint \"node.rol==x\": unknown key node.rol (use node.id, node.hostname, \
             node.role or node.labels.KEY)"
        );
        assert!(parse_constraint("node.role=worker").is_err());
        assert!(parse_constraint("node.role==boss").is_err());
        assert!(parse_constraint("node.labels.==x").is_err());
        assert!(parse_constraint("node.hostname==").is_err());
    }

    #[test]
    fn image_grammar() {
        // The grammar's own cases are in `spec::image`; here, that the validator uses it.
        assert_eq!(parse_image("Registry.Example.com/team/app"), Ok(()));
        assert_eq!(parse_image("[::1]:5000/app:1"), Ok(()));
        assert_eq!(parse_image("Nginx"), Err(SpecError::Image("Nginx".into())));
    }

    #[test]
    fn publish_short_and_long_syntax() {
        let p = parse_publish("4000:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol, p.mode),
            (4000, 80, PortProtocol::Tcp, PublishMode::Ingress)
        );
        assert_eq!(
            parse_publish("53:53/udp").unwrap().protocol,
            PortProtocol::Udp
        );
        let l = parse_publish("published=8080,target=80,protocol=tcp,mode=host").unwrap();
        assert_eq!(
            (l.published, l.target, l.mode),
            (8080, 80, PublishMode::Host)
        );
        for bad in [
            "80",
            "0:80",
            "70000:80",
            "4000:80/sctp",
            "target=80",
            "published=1,target=2,x=3",
            "a:b",
            "",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
        let mut spec = spec();
        spec.ports = vec![
            parse_publish("4000:80").unwrap(),
            parse_publish("4000:81").unwrap(),
        ];
        assert!(matches!(validate(&spec), Err(SpecError::Publish { .. })));
    }

    #[test]
    fn publish_identity_option() {
        let p = parse_publish("published=8443,target=443,mode=ingress,identity=required").unwrap();
        assert_eq!(
            (p.published, p.target, p.mode, p.identity),
            (8443, 443, PublishMode::Ingress, PortIdentity::Required)
        );
        assert_eq!(
            parse_publish("published=1,target=2,identity=none")
                .unwrap()
                .identity,
            PortIdentity::None
        );
        assert_eq!(parse_publish("1:2").unwrap().identity, PortIdentity::None);
        let long = format!("published=1,target=2,identity={}", "x".repeat(5000));
        let e = parse_publish(&long).unwrap_err().to_string();
        assert!(e.contains("is not none or required"), "{e}");
        assert!(e.len() < 400, "{e}");
        assert!(parse_publish("published=1,target=2,identity=Required").is_err());

        let mut s = spec();
        s.ports = vec![parse_publish("published=8443,target=443,identity=required").unwrap()];
        assert_eq!(validate(&s), Ok(()));
        for bad in [
            "published=8443,target=443,protocol=udp,identity=required",
            "published=8443,target=443,mode=host,identity=required",
        ] {
            s.ports = vec![parse_publish(bad).unwrap()];
            assert!(
                matches!(validate(&s), Err(SpecError::Publish { .. })),
                "{bad}"
            );
        }
        s.ports = vec![
            parse_publish("published=8443,target=443,identity=required").unwrap(),
            parse_publish("8444:443").unwrap(),
        ];
        assert!(matches!(validate(&s), Err(SpecError::Publish { .. })));
        s.ports = vec![parse_publish("published=8443,target=443,identity=required").unwrap()];
        s.task.identity = false;
        assert!(matches!(validate(&s), Err(SpecError::Publish { .. })));
    }

    #[test]
    fn a_pids_limit_reads_old_specs_and_survives_the_raft_encoding() {
        // A snapshot (JSON) written before `--limit-pids` existed: no limit.
        let old: Limit =
            serde_json::from_str(r#"{"nano_cpus":1000000000,"memory_bytes":0}"#).unwrap();
        assert_eq!(old.pids, 0);
        let mut spec = spec();
        spec.task.limits.pids = 64;
        spec.task.env = vec!["AFTER=1".into()];
        let bytes = crate::store::wire::encode(&spec).unwrap();
        let back: ServiceSpec = crate::store::wire::decode(&bytes).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn port_identity_reads_old_specs_and_survives_the_raft_encoding() {
        let old = r#"{"published":4000,"target":80,"protocol":"tcp","mode":"ingress"}"#;
        let p: PortConfig = serde_json::from_str(old).unwrap();
        assert_eq!(p.identity, PortIdentity::None);
        let mut r = p;
        r.identity = PortIdentity::Required;
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""identity":"required""#), "{text}");
        assert_eq!(serde_json::from_str::<PortConfig>(&text).unwrap(), r);
        // The Raft log is postcard, which has no field names to skip by: both values must
        // round-trip, with the fields after the port intact.
        for port in [p, r] {
            let mut spec = spec();
            spec.ports = vec![port, parse_publish("5000:50").unwrap()];
            spec.networks = vec!["after".into()];
            let bytes = crate::store::wire::encode(&spec).unwrap();
            let back: ServiceSpec = crate::store::wire::decode(&bytes).unwrap();
            assert_eq!(back, spec);
        }
    }
}
