//! A redis image for the volume tests, built locally once per test process (never pulled):
//! Debian's `redis-server` (7.0, which `.ci/run` installs) with the libraries `ldd` lists,
//! `/bin/sh` and `/bin/cat` (for `docker exec` checks), imported with `docker import`.
//!
//! Its entrypoint runs `redis-server ARGS` with `--protected-mode no` added, as the official
//! image (built with protected mode off) does, so clients reach it through the routing mesh.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use super::spiffe_images::{IMAGE_LIBRARY_PATH, copy_libraries, import, libraries, tool};
use super::{Runtime, cannot_run_without, require};

const REDIS_IMAGE: &str = "skep-test/redis:it1";

const ENTRY: &str = r#"#!/bin/sh
if [ "$1" = redis-server ]; then shift; exec /usr/bin/redis-server "$@" --protected-mode no; fi
exec "$@"
"#;

/// The image, built once per process.
pub fn redis_image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let root = dir.path().join("root");
            for d in ["tmp", "data", "usr/bin", "bin"] {
                std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
            }
            let mut libs = BTreeSet::new();
            for (from, to) in [
                ("/usr/bin/redis-server", "usr/bin/redis-server"),
                ("/bin/dash", "bin/sh"),
                ("/bin/cat", "bin/cat"),
            ] {
                if !Path::new(from).exists() {
                    return Err(format!("{from} is missing (.ci/run installs redis-server)"));
                }
                std::fs::copy(from, root.join(to)).map_err(|e| format!("{from}: {e}"))?;
                libraries(Path::new(from), &mut libs)?;
            }
            copy_libraries(&root, &libs)?;
            let entry = root.join("entry");
            std::fs::write(&entry, ENTRY).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let tar = dir.path().join("rootfs.tar");
            tool(
                Command::new("tar")
                    .arg("-cf")
                    .arg(&tar)
                    .arg("-C")
                    .arg(&root)
                    .arg("."),
            )?;
            import(
                &tar,
                REDIS_IMAGE,
                &[
                    IMAGE_LIBRARY_PATH,
                    "ENV PATH=/usr/bin:/bin",
                    "WORKDIR /data",
                    r#"ENTRYPOINT ["/entry"]"#,
                    r#"CMD ["redis-server"]"#,
                ],
            )?;
            Ok(REDIS_IMAGE)
        })
        .clone()
}

/// The redis image, or `None` after [`cannot_run_without`] (which fails the test in CI, where
/// `SKEP_IT_REQUIRE` names docker) when Docker or the image is unavailable.
pub fn redis_or_fail() -> Option<&'static str> {
    if !require(Runtime::Docker) {
        return None;
    }
    match redis_image() {
        Ok(image) => Some(image),
        Err(e) => {
            cannot_run_without(
                Runtime::Docker,
                format!("cannot build the redis image ({e})"),
            );
            None
        }
    }
}
