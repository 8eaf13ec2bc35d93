//! The rules of a task's mounts (`--mount`, Compose `volumes:`): Docker's `--mount` CSV
//! syntax, and the one check of a task's mounts that managers apply to every spec and
//! agents again before they hand a mount to the engine.
//!
//! A bind mount gives the task a path of the node's file system: it is root-equivalent (bind
//! `/var/run/docker.sock` or `/` and the task owns the node). Who may use one, and which
//! paths, is the RBAC policy's decision (`BindMount`); this module only makes sure a path is
//! plain (absolute, no `.`, `..` or empty parts), so that a policy's prefix rule means what it
//! says.

use std::collections::BTreeSet;

use crate::store::service::{Mount, MountKind, Runtime, TaskSpec};

/// Most mounts one task may have.
pub const MAX_MOUNTS: usize = 64;
/// Longest target or bind source.
pub const MAX_PATH_BYTES: usize = 512;
/// Longest volume name (a stack's are `<stack>_<name>`).
pub const MAX_VOLUME_NAME_BYTES: usize = 128;
/// Most labels on one volume.
pub const MAX_VOLUME_LABELS: usize = 32;
/// Longest volume label key or value.
pub const MAX_VOLUME_LABEL_BYTES: usize = 256;
/// Longest `--mount` text.
const MAX_TEXT_BYTES: usize = 4096;

/// Where no mount may go: what skep itself mounts into a task (secrets, the Workload API, the
/// hosts file) and the kernel's file systems.
pub const RESERVED_TARGETS: [&str; 6] = [
    super::secret_target::SECRETS_DIR,
    "/run/spiffe",
    "/etc/hosts",
    "/proc",
    "/sys",
    "/dev",
];

/// Parses Docker's `--mount` value:
/// `type=volume|bind|tmpfs,source|src=S,target|dst|destination=T,readonly|ro[=true|false]`,
/// with `volume-label=K=V` (repeatable) and `tmpfs-size=BYTES`. The type defaults to volume, as
/// in Docker. The result is checked by [`check_one`].
pub fn parse(text: &str) -> Result<Mount, String> {
    let q = |t: &str| crate::util::quote(&crate::util::prefix(t, 64));
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!("{} is longer than {MAX_TEXT_BYTES} bytes", q(text)));
    }
    let mut m = Mount {
        kind: MountKind::Volume,
        source: String::new(),
        target: String::new(),
        read_only: false,
        volume_labels: Default::default(),
        tmpfs_size: 0,
    };
    let mut target = None;
    for field in text.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (field.trim(), None),
        };
        let value = || v.ok_or_else(|| format!("{} needs a value ({}=...)", q(k), q(k)));
        match k.to_ascii_lowercase().as_str() {
            "type" => {
                m.kind = match value()? {
                    "volume" => MountKind::Volume,
                    "bind" => MountKind::Bind,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(format!("type {} is not volume, bind or tmpfs", q(other)));
                    }
                }
            }
            "source" | "src" => m.source = value()?.to_string(),
            "target" | "dst" | "destination" => target = Some(value()?.to_string()),
            "readonly" | "ro" => {
                m.read_only = match v.map(str::trim) {
                    None | Some("true") | Some("1") => true,
                    Some("false") | Some("0") => false,
                    Some(other) => {
                        return Err(format!("readonly={} is not true or false", q(other)));
                    }
                }
            }
            "volume-label" => {
                let (lk, lv) = value()?.split_once('=').unwrap_or((value()?, ""));
                m.volume_labels.insert(lk.to_string(), lv.to_string());
            }
            "tmpfs-size" => {
                m.tmpfs_size = super::service::parse_memory(value()?.trim())?;
            }
            "" => return Err("an empty field (two commas in a row?)".into()),
            other => {
                return Err(format!(
                    "unknown key {} (use type, source, target, readonly, volume-label, tmpfs-size)",
                    q(other)
                ));
            }
        }
    }
    m.target = target.ok_or("target is missing (target=/path/in/the/task)")?;
    check_one(&m)?;
    Ok(m)
}

/// A plain absolute path: at most [`MAX_PATH_BYTES`], no control characters, no empty, `.` or
/// `..` parts (so `/srv/data/../etc` cannot pass a policy's `/srv/data/*` rule).
fn plain_path(what: &str, path: &str) -> Result<(), String> {
    let q = || crate::util::quote(&crate::util::prefix(path, 64));
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "{what} {} is longer than {MAX_PATH_BYTES} bytes",
            q()
        ));
    }
    if !path.starts_with('/') {
        return Err(format!("{what} {} is not an absolute path", q()));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{what} {} contains a control character", q()));
    }
    if path == "/" {
        return Ok(());
    }
    if path[1..]
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == ".." || p.len() > 255)
    {
        return Err(format!(
            "{what} {} is not a plain path (no empty, `.` or `..` parts)",
            q()
        ));
    }
    Ok(())
}

/// Docker's volume name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, here at most
/// [`MAX_VOLUME_NAME_BYTES`].
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = name.len() >= 2
        && name.len() <= MAX_VOLUME_NAME_BYTES
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {} is not valid (2 to {MAX_VOLUME_NAME_BYTES} letters, digits, '_', '.' \
             or '-', starting with a letter or digit)",
            crate::util::quote(&crate::util::prefix(name, 64))
        ))
    }
}

/// Checks one mount on its own: the target plain, absolute and not where skep mounts (or the
/// kernel's file systems); a volume's name, a bind's plain absolute host path, no source for
/// tmpfs; labels only on volumes, a size only on tmpfs; everything bounded.
pub fn check_one(m: &Mount) -> Result<(), String> {
    plain_path("target", &m.target)?;
    if m.target == "/" {
        return Err("target / is the task's root; mount under it".into());
    }
    for dir in RESERVED_TARGETS {
        if m.target == dir
            || m.target.starts_with(&format!("{dir}/"))
            || dir.starts_with(&format!("{}/", m.target))
        {
            return Err(format!(
                "target {} overlaps {dir}, which skep or the kernel mounts in every task",
                crate::util::quote(&crate::util::prefix(&m.target, 64))
            ));
        }
    }
    match m.kind {
        MountKind::Volume => {
            if m.source.is_empty() {
                return Err(format!(
                    "a volume mount at {} needs source=NAME (skep makes no anonymous volumes)",
                    m.target
                ));
            }
            check_volume_name(&m.source)?;
        }
        MountKind::Bind => plain_path("bind source", &m.source)?,
        MountKind::Tmpfs => {
            if !m.source.is_empty() {
                return Err(format!("a tmpfs mount at {} takes no source", m.target));
            }
        }
    }
    if m.kind != MountKind::Volume && !m.volume_labels.is_empty() {
        return Err(format!(
            "volume-label is for volume mounts, not {} (at {})",
            m.kind.as_str(),
            m.target
        ));
    }
    if m.kind != MountKind::Tmpfs && m.tmpfs_size != 0 {
        return Err(format!(
            "tmpfs-size is for tmpfs mounts, not {} (at {})",
            m.kind.as_str(),
            m.target
        ));
    }
    if m.volume_labels.len() > MAX_VOLUME_LABELS {
        return Err(format!(
            "a volume has at most {MAX_VOLUME_LABELS} labels (at {})",
            m.target
        ));
    }
    for (k, v) in &m.volume_labels {
        if k.is_empty()
            || k.len() > MAX_VOLUME_LABEL_BYTES
            || v.len() > MAX_VOLUME_LABEL_BYTES
            || k.chars().chain(v.chars()).any(char::is_control)
        {
            return Err(format!(
                "volume label {} is not a KEY=VALUE of at most {MAX_VOLUME_LABEL_BYTES} bytes each",
                crate::util::quote(&crate::util::prefix(k, 64))
            ));
        }
    }
    Ok(())
}

/// Checks a task's mounts together: each on its own ([`check_one`]), at most
/// [`MAX_MOUNTS`], no two at one target and none at a config's target, and none at all for
/// the exec runtime (it has no mounts yet).
pub fn check(task: &TaskSpec) -> Result<(), String> {
    if task.mounts.is_empty() {
        return Ok(());
    }
    if task.runtime == Runtime::Exec {
        return Err(
            "the exec runtime has no volumes, bind or tmpfs mounts yet; use the docker runtime"
                .into(),
        );
    }
    if task.mounts.len() > MAX_MOUNTS {
        return Err(format!("a service has at most {MAX_MOUNTS} mounts"));
    }
    let mut targets = BTreeSet::new();
    for m in &task.mounts {
        check_one(m)?;
        if !targets.insert(m.target.as_str()) {
            return Err(format!("two mounts have the target {}", m.target));
        }
    }
    if let Some(c) = task
        .configs
        .iter()
        .find(|c| targets.contains(c.target.as_str()))
    {
        return Err(format!(
            "target {} is both a mount and config {}'s target",
            c.target, c.secret_name
        ));
    }
    Ok(())
}

/// The mount as `--mount` writes it (for `service inspect --pretty`).
pub fn text(m: &Mount) -> String {
    let mut out = format!("type={}", m.kind.as_str());
    if !m.source.is_empty() {
        out.push_str(&format!(",source={}", m.source));
    }
    out.push_str(&format!(",target={}", m.target));
    if m.read_only {
        out.push_str(",readonly");
    }
    for (k, v) in &m.volume_labels {
        out.push_str(&format!(",volume-label={k}={v}"));
    }
    if m.tmpfs_size > 0 {
        out.push_str(&format!(",tmpfs-size={}", m.tmpfs_size));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(mounts: Vec<Mount>) -> TaskSpec {
        let mut t = TaskSpec::new(Runtime::Docker, "redis", vec![]);
        t.mounts = mounts;
        t
    }

    #[test]
    fn docker_csv_syntax_parses() {
        let m = parse("type=volume,source=data,target=/data").unwrap();
        assert_eq!(
            (m.kind, m.source.as_str(), m.target.as_str(), m.read_only),
            (MountKind::Volume, "data", "/data", false)
        );
        let m = parse("src=data,dst=/data,ro").unwrap();
        assert_eq!((m.kind, m.read_only), (MountKind::Volume, true));
        let m = parse("type=bind,source=/srv/x,destination=/x,readonly=false").unwrap();
        assert_eq!((m.kind, m.read_only), (MountKind::Bind, false));
        let m = parse("type=bind,src=/srv/x,target=/x,readonly=true").unwrap();
        assert!(m.read_only);
        let m = parse("type=tmpfs,target=/cache,tmpfs-size=64m").unwrap();
        assert_eq!((m.kind, m.tmpfs_size), (MountKind::Tmpfs, 64 << 20));
        let m = parse("source=dd,target=/d,volume-label=a=b,volume-label=c").unwrap();
        assert_eq!(m.volume_labels.len(), 2);
        assert_eq!(
            text(&m),
            "type=volume,source=dd,target=/d,volume-label=a=b,volume-label=c="
        );
    }

    #[test]
    fn bad_mounts_say_what_is_wrong() {
        for (bad, says) in [
            ("type=nfs,source=a,target=/a", "not volume, bind or tmpfs"),
            ("source=vol", "target is missing"),
            ("source=vol,target=relative", "not an absolute path"),
            ("source=vol,target=/", "task's root"),
            ("source=vol,target=/run/secrets", "overlaps /run/secrets"),
            ("source=vol,target=/run/secrets/x", "overlaps /run/secrets"),
            ("source=vol,target=/run", "overlaps /run/secrets"),
            ("source=vol,target=/run/spiffe", "overlaps /run/spiffe"),
            ("source=vol,target=/etc/hosts", "overlaps /etc/hosts"),
            ("source=vol,target=/proc/1", "overlaps /proc"),
            ("source=vol,target=/data/../etc", "plain path"),
            ("source=vol,target=/data//x", "plain path"),
            ("source=../x,target=/x", "volume name"),
            ("source=a/b,target=/x", "volume name"),
            ("target=/x", "needs source=NAME"),
            (
                "type=bind,source=relative,target=/x",
                "not an absolute path",
            ),
            (
                "type=bind,source=/srv/data/../../etc,target=/x",
                "plain path",
            ),
            ("type=bind,source=/srv/./data,target=/x", "plain path"),
            ("type=tmpfs,source=a,target=/x", "takes no source"),
            (
                "type=bind,source=/a,target=/x,volume-label=a=b",
                "for volume mounts",
            ),
            ("source=vol,target=/x,tmpfs-size=1m", "for tmpfs mounts"),
            ("source=vol,target=/x,readonly=maybe", "not true or false"),
            ("source=vol,target=/x,propagation=shared", "unknown key"),
            ("source=vol,,target=/x", "empty field"),
            ("type=tmpfs,target=/x,tmpfs-size=lots", "invalid size"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("source=vol,target=/{}", "x".repeat(10_000));
        assert!(parse(&long).unwrap_err().len() < 200);
        let long = format!("source={},target=/x", "x".repeat(200));
        assert!(parse(&long).unwrap_err().len() < 300);
    }

    #[test]
    fn a_tasks_mounts_are_checked_together() {
        let m = |t: &str| parse(&format!("source=data,target={t}")).unwrap();
        assert!(check(&task(vec![m("/a"), m("/b")])).is_ok());
        assert!(
            check(&task(vec![m("/a"), m("/a")]))
                .unwrap_err()
                .contains("two mounts")
        );
        let mut t = task(vec![m("/etc/app.conf")]);
        let mut c = crate::store::service::SecretRef::new("app");
        c.target = "/etc/app.conf".into();
        t.configs = vec![c];
        assert!(check(&t).unwrap_err().contains("config app"));
        let mut exec = task(vec![m("/a")]);
        exec.runtime = Runtime::Exec;
        assert!(check(&exec).unwrap_err().contains("exec runtime"));
        let many = (0..=MAX_MOUNTS).map(|i| m(&format!("/m{i}"))).collect();
        assert!(check(&task(many)).unwrap_err().contains("at most"));
    }
}
