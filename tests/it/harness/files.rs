//! Files: writing a test's inputs, and scanning what the daemons wrote.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `text` to `path`.
pub fn write_file(path: &Path, text: &str) {
    File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Every file below `dir`, however deep.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `needle` (not empty) occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// No file a node wrote (data directory, daemon log) holds any of the values.
pub fn assert_no_plaintext(nodes: &[&super::Node], values: &[&str]) {
    let mut scanned = 0;
    for n in nodes {
        let mut files = files_under(&n.data_dir());
        files.push(n.log_path());
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            scanned += bytes.len();
            for v in values {
                assert!(
                    !contains(&bytes, v.as_bytes()),
                    "{} holds a secret value in plaintext",
                    f.display()
                );
            }
        }
    }
    assert!(scanned > 0);
}
