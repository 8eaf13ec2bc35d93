//! The one rule for task IDs on a node: they name directories (the task's files, its secrets)
//! and containers, so an ID that is not a plain name could reach outside them.

/// Whether `id` may name a task's directory or container: only `[A-Za-z0-9_.-]`, not starting
/// with a dot, at most 128 bytes.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
