//! The real SPIFFE clients the `spiffe_clients` tests run, and their images, built locally
//! once per test process (never pulled):
//!
//! - the Rust client, `examples/spiffe_client.rs` (the `spiffe` crate and `spiffe-rustls`),
//!   built with the test's own cargo, stripped and copied where an exec task ("nobody") can
//!   run it; its image holds it and the shared libraries `ldd` lists;
//! - the Python client, `spiffe_client.py` on py-spiffe (PyPI `spiffe` 0.3.2), installed by
//!   `.ci/run` into [`PY_SPIFFE_DIR`] and run with Debian's `/usr/bin/python3` (3.11, the same
//!   ABI) and `-S` (so the system's own dist-packages stay out); its image holds python3.11,
//!   its standard library, the package directory and every library `ldd` finds for python and
//!   the extension modules.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where `.ci/run` installs py-spiffe and its dependencies (readable by exec tasks' "nobody").
pub const PY_SPIFFE_DIR: &str = "/opt/skep-it/py";

/// The Python client's source.
const PY_CLIENT: &str = include_str!("../spiffe_client.py");

const RUST_IMAGE: &str = "skep-test/spiffe-rust:it1";
const PY_IMAGE: &str = "skep-test/spiffe-py:it1";

pub(super) fn tool(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A directory kept until the process ends, open to every user (exec tasks run as "nobody").
fn open_dir(prefix: &str) -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

/// The Rust client, built (debug, as the tests) with the cargo running the tests and stripped
/// into a directory "nobody" can read; its path.
pub fn rust_spiffe_client() -> Result<&'static Path, String> {
    static CLIENT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // The test binary is <target>/debug/deps/it-*: the example lands in
            // <target>/debug/examples.
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("no target directory above the test binary")?;
            let target_dir = profile_dir.parent().ok_or("no target directory")?;
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args([
                    "build",
                    "--quiet",
                    "--example",
                    "spiffe_client",
                    "--target-dir",
                ])
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            outer_build_env(&mut build, target_dir);
            tool(&mut build)?;
            let built = profile_dir.join("examples/spiffe_client");
            let dir = open_dir("skep-it-spiffe-rs-")?;
            let bin = dir.join("spiffe_client");
            tool(Command::new("strip").arg("-o").arg(&bin).arg(&built))?;
            Ok(bin)
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Gives `cmd` the environment of the cargo that ran the tests, not the one cargo gives a
/// test (`CARGO_PKG_*`, `OUT_DIR`, the target's library path): build scripts that watch those
/// would otherwise rebuild half the tree here and again in the next `cargo test`.
fn outer_build_env(cmd: &mut Command, target_dir: &Path) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let from_cargo = (key.starts_with("CARGO_")
            && !matches!(key.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR"))
            || key == "OUT_DIR";
        if from_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        let kept: Vec<PathBuf> = std::env::split_paths(&paths)
            .filter(|p| !p.starts_with(target_dir) && !p.to_string_lossy().contains("/toolchains/"))
            .collect();
        if kept.is_empty() {
            cmd.env_remove("LD_LIBRARY_PATH");
        } else if let Ok(joined) = std::env::join_paths(kept) {
            cmd.env("LD_LIBRARY_PATH", joined);
        }
    }
}

/// The Python client script, copied where "nobody" can read it; its path.
pub fn py_spiffe_client() -> Result<&'static Path, String> {
    static SCRIPT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SCRIPT
        .get_or_init(|| {
            if !Path::new(PY_SPIFFE_DIR).join("spiffe/__init__.py").exists() {
                return Err(format!(
                    "py-spiffe is not installed in {PY_SPIFFE_DIR} (.ci/run installs it)"
                ));
            }
            let dir = open_dir("skep-it-spiffe-py-")?;
            let script = dir.join("spiffe_client.py");
            std::fs::write(&script, PY_CLIENT).map_err(|e| e.to_string())?;
            Ok(script)
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// The shell command an exec task runs for the Python client with `args`.
pub fn py_exec_command(args: &str) -> Result<String, String> {
    let script = py_spiffe_client()?;
    Ok(format!(
        "PYTHONPATH={PY_SPIFFE_DIR} exec /usr/bin/python3 -S {} {args}",
        script.display()
    ))
}

/// The shared libraries `ldd` lists for `file` (resolved paths, the loader included).
pub(super) fn libraries(file: &Path, into: &mut BTreeSet<PathBuf>) -> Result<(), String> {
    let out = tool(Command::new("ldd").arg(file))?;
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            into.insert(PathBuf::from(p));
        }
    }
    Ok(())
}

/// Copies `libs` into `root` at their own paths (following symlinks), so the loader finds
/// them where `ldd` did.
pub(super) fn copy_libraries(root: &Path, libs: &BTreeSet<PathBuf>) -> Result<(), String> {
    for lib in libs {
        let to = root.join(lib.strip_prefix("/").map_err(|e| e.to_string())?);
        std::fs::create_dir_all(to.parent().ok_or("a library at /")?).map_err(|e| e.to_string())?;
        std::fs::copy(lib, &to).map_err(|e| format!("{}: {e}", lib.display()))?;
    }
    Ok(())
}

/// `docker import`s `tar` as `tag` with these Dockerfile changes.
pub(super) fn import(tar: &Path, tag: &str, changes: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("docker");
    cmd.arg("import");
    for c in changes {
        cmd.args(["-c", c]);
    }
    tool(cmd.arg(tar).arg(tag)).map(drop)
}

/// The library search path the images set (the copied libraries keep the host's paths).
pub(super) const IMAGE_LIBRARY_PATH: &str =
    "ENV LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64";

/// The Rust client's image (`/spiffe_client` and its libraries), imported once per process.
pub fn rust_spiffe_image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let bin = rust_spiffe_client()?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let root = dir.path().join("root");
            std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
            std::fs::copy(bin, root.join("spiffe_client")).map_err(|e| e.to_string())?;
            let mut libs = BTreeSet::new();
            libraries(bin, &mut libs)?;
            copy_libraries(&root, &libs)?;
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
                RUST_IMAGE,
                &[IMAGE_LIBRARY_PATH, r#"CMD ["/spiffe_client", "fetch"]"#],
            )?;
            Ok(RUST_IMAGE)
        })
        .clone()
}

/// The Python client's image (python3.11, its standard library, py-spiffe at /py, the script
/// at /spiffe_client.py, and every library they load), imported once per process.
pub fn py_spiffe_image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = py_spiffe_client()?;
            let python = Path::new("/usr/bin/python3.11");
            let stdlib = Path::new("/usr/lib/python3.11");
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let root = dir.path().join("root");
            std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
            std::fs::copy(script, root.join("spiffe_client.py")).map_err(|e| e.to_string())?;
            // Every library python and the extension modules (standard and the package's) load.
            let mut libs = BTreeSet::new();
            libraries(python, &mut libs)?;
            let modules = tool(
                Command::new("find")
                    .arg(stdlib.join("lib-dynload"))
                    .arg(PY_SPIFFE_DIR)
                    .args(["-name", "*.so"]),
            )?;
            for module in modules.lines() {
                libraries(Path::new(module), &mut libs)?;
            }
            copy_libraries(&root, &libs)?;
            let tar = dir.path().join("rootfs.tar");
            // The host's python, standard library and package directory go in as they are
            // (the package directory renamed to /py); the staged root adds the rest.
            tool(
                Command::new("tar")
                    .arg("-cf")
                    .arg(&tar)
                    .args(["--exclude=__pycache__", "--exclude=site-packages"])
                    .args(["--exclude=dist-packages", "--exclude=test"])
                    .args(["-C", "/", "usr/bin/python3.11", "usr/lib/python3.11"])
                    .args(["--transform", "s,^opt/skep-it/py,py,"])
                    .args(["-C", "/", "opt/skep-it/py"])
                    .arg("-C")
                    .arg(&root)
                    .arg("."),
            )?;
            import(
                &tar,
                PY_IMAGE,
                &[
                    IMAGE_LIBRARY_PATH,
                    "ENV PYTHONPATH=/py",
                    r#"CMD ["/usr/bin/python3.11", "-S", "/spiffe_client.py"]"#,
                ],
            )?;
            Ok(PY_IMAGE)
        })
        .clone()
}
