//! The rule for where a config may appear in a task: any absolute plain path outside the
//! secrets directory and the kernel's file systems (`/proc`, `/sys`, `/dev`). Managers check
//! it on every spec (skep's `spec::config_target`) and the init checks it again before it
//! binds anything.

use crate::text::{prefix, quote};

/// Most configs one task may have.
pub const MAX_CONFIGS: usize = 256;
/// Longest target.
const MAX_TARGET_LEN: usize = 512;
/// Where no config may go: the secrets directory and the kernel's file systems.
const FORBIDDEN: [&str; 4] = [crate::SECRETS_DIR, "/proc", "/sys", "/dev"];

/// Checks one target: absolute, at most 512 bytes, components of 1 to 255 bytes that are not
/// `.` or `..`, no control characters, and not in or at `/run/secrets`, `/proc`, `/sys` or
/// `/dev`. The error says which rule it broke, quoting at most a prefix.
pub fn check(target: &str) -> Result<(), String> {
    let quoted = || quote(&prefix(target, 64));
    if target.len() > MAX_TARGET_LEN {
        return Err(format!(
            "config target {} is {} bytes long; at most {MAX_TARGET_LEN}",
            quoted(),
            target.len()
        ));
    }
    let Some(rest) = target.strip_prefix('/').filter(|r| !r.is_empty()) else {
        return Err(format!(
            "config target {} is not an absolute file path",
            quoted()
        ));
    };
    if target.chars().any(char::is_control) {
        return Err(format!(
            "config target {} contains a control character",
            quoted()
        ));
    }
    for part in rest.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.len() > 255 {
            return Err(format!(
                "config target {} is not a plain path (no empty, `.` or `..` parts, names of \
                 at most 255 bytes)",
                quoted()
            ));
        }
    }
    for dir in FORBIDDEN {
        if target == dir || target.starts_with(&format!("{dir}/")) {
            return Err(format!(
                "config target {} lies in {dir}, where no config may go{}",
                quoted(),
                if dir == crate::SECRETS_DIR {
                    " (that is where secrets are mounted; use --secret)"
                } else {
                    " (a kernel file system)"
                }
            ));
        }
    }
    Ok(())
}
