//! Operators as a person has them: a certificate directory made with `operator csr` and
//! `operator sign`, and the CLI run with it against a manager over mTLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Node, describe, run, skep_bin};

/// An operator's certificate directory (ca.pem, cert.pem, key.pem), made the way an operator
/// would: `operator csr` on their machine, `operator sign` on a manager.
pub fn enrol(m: &Node, root: &Path, name: &str, role: &str, extra: &[&str]) -> PathBuf {
    let dir = root.join(name);
    let out = run(
        Command::new(skep_bin()).args([
            "operator",
            "csr",
            "--name",
            name,
            "--out",
            dir.to_str().unwrap(),
        ]),
        None,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["operator", "sign", "--role", role];
    args.extend_from_slice(extra);
    args.push(csr.to_str().unwrap());
    std::fs::write(dir.join("cert.pem"), m.cli_ok(&args)).unwrap();
    std::fs::write(dir.join("ca.pem"), m.cli_ok(&["swarm", "ca", "-q"])).unwrap();
    dir
}

/// The CLI as an operator: `--host tcp://MANAGER --cert-path DIR`.
pub fn as_operator(m: &Node, dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let host = format!("tcp://{}", m.addr());
    run(
        Command::new(skep_bin())
            .env_remove("SKEP_HOST")
            .env("SKEP_CONFIG", dir.join("config"))
            .args(["--host", &host, "--cert-path", dir.to_str().unwrap()])
            .args(args),
        stdin,
    )
}

/// Installs the default RBAC policies with `example` (the text of one of
/// `policies/examples/rbac-*.cedar`) added, as an admin would with `policy set --rbac`.
pub fn set_rbac_with(m: &Node, dir: &Path, example: &str) {
    let policy = dir.join("rbac.cedar");
    std::fs::write(
        &policy,
        format!(
            "{}\n{example}",
            include_str!("../../../policies/rbac.cedar")
        ),
    )
    .unwrap();
    m.cli_ok(&["policy", "set", "--rbac", policy.to_str().unwrap()]);
}

/// `out` was refused by the policy `id`, and the refusal is on the audit log.
pub fn assert_refused_and_audited(m: &Node, out: &Output, id: &str) {
    super::assert_error(out, id);
    assert!(
        m.audit()
            .iter()
            .any(|r| r["outcome"] == "denied" && r.to_string().contains(id)),
        "the refusal by {id} is not in the audit log"
    );
}
