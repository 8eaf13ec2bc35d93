//! What an installation uses besides the daemon: the shell completions loaded by a real bash,
//! the manual pages rendered by a real `man` without warnings, and the example systemd unit
//! (its keys, and no sandboxing directive that would break the tasks it runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::harness::{describe, run, skep_bin, stderr, stdout};

#[test]
fn bash_loads_the_completion_script_and_completes_subcommands() {
    let script = format!(
        "source <({bin} completion bash) && complete -p skep && \
         COMP_WORDS=(skep serv) COMP_CWORD=1 && _skep skep serv skep && echo \"${{COMPREPLY[@]}}\" && \
         COMP_WORDS=(skep daemon --log-f) COMP_CWORD=2 && _skep skep --log-f daemon && echo \"${{COMPREPLY[@]}}\"",
        bin = skep_bin()
    );
    let out = run(Command::new("bash").args(["-c", &script]), None);
    assert!(out.status.success(), "{}", describe(&out));
    let said = stdout(&out);
    let mut lines = said.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.contains("_skep") && l.ends_with(" skep")),
        "complete -p: {said}"
    );
    assert_eq!(lines.next(), Some("service"), "{said}");
    assert_eq!(lines.next(), Some("--log-format"), "{said}");
}

#[test]
fn the_manual_pages_render_without_warnings() {
    if !tool("man") {
        crate::harness::cannot_run("`man` is not installed (apt-get install man-db)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The check itself: a page with an unknown macro is reported.
    let bad = dir.path().join("bad.1");
    std::fs::write(&bad, ".TH bad 1\n.SH NAME\nbad \\- x\n.XX unknown\n").unwrap();
    let (_, warnings) = man(&bad);
    assert!(
        warnings.contains("XX"),
        "man reports no warning: {warnings:?}"
    );

    let out = run(Command::new(skep_bin()).arg("man"), None);
    assert!(out.status.success(), "{}", describe(&out));
    let page = dir.path().join("skep.1");
    std::fs::write(&page, stdout(&out)).unwrap();
    let text = render(&page);
    assert!(text.contains("skep-service(1)"), "{text}");
    assert!(text.contains("SYNOPSIS"), "{text}");

    let pages = dir.path().join("man1");
    let out = run(
        Command::new(skep_bin()).args(["man", "--dir"]).arg(&pages),
        None,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for want in [
        "skep.1",
        "skep-service-create.1",
        "skep-daemon.1",
        "skep-completion.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for name in &names {
        render(&pages.join(name));
    }
    let daemon = render(&pages.join("skep-daemon.1"));
    assert!(daemon.contains("--log-format"), "{daemon}");
}

/// `man -l PAGE` with every groff warning on (`-ww`): the rendered text and the warnings.
fn man(page: &Path) -> (String, String) {
    let out = run(
        Command::new("man")
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("LC_ALL", "C.UTF-8")
            .args(["--warnings=w", "-l"])
            .arg(page),
        None,
    );
    assert!(
        out.status.success(),
        "{}: {}",
        page.display(),
        describe(&out)
    );
    (stdout(&out), stderr(&out))
}

/// The rendered text of `page`; panics on any warning.
fn render(page: &Path) -> String {
    let (text, warnings) = man(page);
    assert!(
        warnings.trim().is_empty(),
        "{} renders with warnings:\n{warnings}",
        page.display()
    );
    text
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The unit's directives, by section; a key given twice keeps both values.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            sections.entry(name.to_string()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not KEY=VALUE: {line}", n + 1));
        assert!(!value.ends_with('\\'), "line {}: no continuations", n + 1);
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: outside a section", n + 1));
        sections
            .get_mut(section)
            .unwrap()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    sections
}

#[test]
fn the_example_systemd_unit_runs_the_daemon_without_breaking_its_tasks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/skep.service");
    let unit = parse_unit(&std::fs::read_to_string(&path).unwrap());
    let one = |section: &str, key: &str| -> String {
        let values = unit
            .get(section)
            .and_then(|s| s.get(key))
            .unwrap_or_else(|| panic!("[{section}] has no {key}"));
        assert_eq!(values.len(), 1, "[{section}] {key} given twice");
        values[0].clone()
    };
    assert_eq!(one("Service", "Type"), "simple");
    // Tasks outlive a daemon restart (README "Upgrading a node"): systemd stops the daemon
    // alone, not the init helpers of its exec tasks.
    assert_eq!(one("Service", "KillMode"), "process");
    assert_eq!(one("Service", "Restart"), "on-failure");
    assert_eq!(one("Service", "TasksMax"), "infinity");
    assert!(one("Service", "LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
    assert_eq!(one("Install", "WantedBy"), "multi-user.target");
    assert!(one("Unit", "After").contains("docker.service"));
    // The kernel's OOM killer takes a task before the daemon, as with docker.service: the
    // daemon at -500, which exec tasks' commands do not inherit (they stand 500 above it, at
    // 0, a container's value).
    let oom: i32 = one("Service", "OOMScoreAdjust").parse().unwrap();
    assert_eq!(oom, -500);
    assert_eq!(skep_init::task_oom_score_adj(oom), 0);

    // Every flag of ExecStart is one `skep daemon` has.
    let exec = one("Service", "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/skep"));
    assert_eq!(words.next(), Some("daemon"));
    assert!(exec.contains("--data-dir /var/lib/skep"), "{exec}");
    let help = stdout(&run(
        Command::new(skep_bin()).args(["daemon", "--help"]),
        None,
    ));
    for flag in words.filter(|w| w.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "ExecStart's {flag} is not a `skep daemon` flag"
        );
    }

    // None of these may be set: each gives the daemon a mount namespace of its own (its
    // secret tmpfs mounts would then be invisible to the Docker Engine, which binds them into
    // containers, and to the host) or a seccomp filter, capability set or mask that every exec
    // task would inherit (the exec runtime needs namespaces, mounts and setuid).
    let forbidden = [
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "PrivateNetwork",
        "ProtectSystem",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "ProtectProc",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "MountFlags",
        "RootDirectory",
        "SystemCallFilter",
        "RestrictNamespaces",
        "RestrictAddressFamilies",
        "RestrictSUIDSGID",
        "MemoryDenyWriteExecute",
        "LockPersonality",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "DynamicUser",
        "User",
        "UMask",
    ];
    for key in forbidden {
        assert!(
            !unit.values().any(|s| s.contains_key(key)),
            "{key} breaks the tasks the daemon runs: see the comment in the unit"
        );
    }
}
