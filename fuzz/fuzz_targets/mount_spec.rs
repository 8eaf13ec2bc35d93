//! `--mount` values come from operators' command lines (and, as specs, from the network):
//! parsing never panics, and whatever parses has a plain absolute target outside the paths
//! skep mounts in every task, a plain absolute source for a bind, a volume name for a volume
//! and none for tmpfs, and passes the spec's own check.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep::spec::mount::{RESERVED_TARGETS, check_one, parse};
use skep::store::service::MountKind;

fn plain(path: &str) -> bool {
    path == "/"
        || path
            .strip_prefix('/')
            .is_some_and(|r| r.split('/').all(|p| !p.is_empty() && p != "." && p != ".."))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(m) = parse(&text) else {
        return;
    };
    assert!(check_one(&m).is_ok());
    assert!(plain(&m.target) && m.target != "/");
    for dir in RESERVED_TARGETS {
        assert!(m.target != dir && !m.target.starts_with(&format!("{dir}/")));
    }
    match m.kind {
        MountKind::Bind => assert!(plain(&m.source)),
        MountKind::Volume => assert!(!m.source.is_empty() && !m.source.contains('/')),
        MountKind::Tmpfs => assert!(m.source.is_empty()),
    }
});
