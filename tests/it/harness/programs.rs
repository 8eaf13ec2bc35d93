//! The test program (compiled once per test process from `prog.c`, static, so it also runs as
//! an image's only file) and the test image imported from it.

use std::path::Path;
use std::sync::OnceLock;

use super::*;

/// The test program's C source.
const TEST_PROGRAM: &str = include_str!("prog.c");

const TEST_IMAGE: &str = "skep-test/prog:it6";

fn run_tool(cmd: &mut std::process::Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The test program, compiled (static) once per test process into a directory kept until
/// the process ends; exec tasks run it by this path.
pub fn test_program() -> Result<&'static Path, String> {
    static PROGRAM: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("skep-it-prog-")
                .tempdir()
                .map_err(|e| e.to_string())?
                .keep();
            // Exec tasks run as "nobody": the program must be reachable and executable by it.
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let src = dir.join("prog.c");
            std::fs::write(&src, TEST_PROGRAM).map_err(|e| e.to_string())?;
            run_tool(
                std::process::Command::new("gcc")
                    .args(["-static", "-O2", "-o"])
                    .arg(dir.join("prog"))
                    .arg(&src),
            )?;
            Ok(dir.join("prog"))
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Imports the test image once per test process; the error says why it could not be.
pub fn test_image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let run = run_tool;
            std::fs::copy(test_program()?, dir.path().join("prog")).map_err(|e| e.to_string())?;
            run(std::process::Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .args(["-cf", "rootfs.tar", "prog"])
                .current_dir(dir.path()))?;
            run(std::process::Command::new("docker")
                .args(["import", "-c", r#"CMD ["/prog", "exit", "7"]"#])
                .arg(dir.path().join("rootfs.tar"))
                .arg(TEST_IMAGE))?;
            Ok(TEST_IMAGE)
        })
        .clone()
}

/// The test program's path for exec tasks, or `None` (with a notice) when exec tasks cannot
/// run here (not root) or the program cannot be built.
pub fn serving_program() -> Option<String> {
    if !require(Runtime::Exec) {
        return None;
    }
    match test_program() {
        Ok(p) => Some(p.to_str()?.to_string()),
        Err(e) => {
            cannot_run_without(
                Runtime::Exec,
                format!("cannot build the test program ({e})"),
            );
            None
        }
    }
}
