//! A task's hosts file, the step of its path after its secrets: a task on a network sees
//! `/etc/hosts` from its task directory, with the localhost lines and, for each service on one
//! of its networks, that service's names at the address where this node's mesh listens on the
//! service's ports: its loopback address for an exec task, its container-side address for a
//! container (see [`super::vip`]). Rewritten in place on each routing-table refresh (the
//! task's bind mount follows the same file).

use std::path::Path;

use crate::api::v1::ServiceVip;
use crate::store::service::{Runtime, Task};

/// The hosts file of `task` with the services `names`.
pub fn text(task: &Task, names: &[ServiceVip]) -> String {
    let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
    let container = task.spec.runtime == Runtime::Docker;
    for v in names {
        if !v.networks.iter().any(|n| task.spec.networks.contains(n)) {
            continue;
        }
        let addr = match v.vip.parse() {
            Ok(ip) if container => super::vip::container_vip(ip).map(|a| a.to_string()),
            _ => Some(v.vip.clone()),
        };
        if let Some(addr) = addr {
            text.push_str(&format!("{addr}\t{}\n", v.names.join(" ")));
        }
    }
    text
}

/// Writes `task`'s hosts file in its directory `dir`, unless it already says the same.
pub fn write(dir: &Path, task: &Task, names: &[ServiceVip]) {
    let text = text(task, names);
    let path = dir.join("hosts");
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &text));
    if let Err(e) = written {
        tracing::warn!(task_id = %task.id, error = %e, "cannot write the task's hosts file");
    }
}
