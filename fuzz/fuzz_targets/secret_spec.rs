//! `--secret` and `--config` values come from operators' command lines (and, as specs, from
//! the network): parsing and resolving them must never panic, and whatever resolves must name
//! a plain path under /run/secrets (secrets) or an absolute plain path outside /run/secrets,
//! /proc, /sys and /dev (configs). The first byte picks which.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep::manager::secrets::resolve_refs;
use skep::secret::SecretBytes;
use skep::spec::secret::{parse_config_spec, parse_secret_spec};
use skep::store::model::State;
use skep::store::secret_obj::Secret;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let config = first & 1 == 1;
    let text = String::from_utf8_lossy(rest);
    let parsed = if config {
        parse_config_spec(&text)
    } else {
        parse_secret_spec(&text)
    };
    let Ok(r) = parsed else {
        return;
    };
    let mut state = State::default();
    let mut sec = Secret::new(
        "id1".into(),
        r.secret_name.clone(),
        Default::default(),
        SecretBytes::new(b"x".to_vec()),
        "",
    );
    sec.push(SecretBytes::new(b"y".to_vec()), "");
    if config {
        state.configs.insert("id1".into(), sec);
    } else {
        state.secrets.insert("id1".into(), sec);
    }
    // Two references: the second may clash with the first.
    let mut refs = vec![r.clone(), r];
    refs[1].target.push_str("/x");
    for n in 1..=2 {
        let mut some = refs[..n].to_vec();
        if resolve_refs(&state, &mut some, config).is_ok() {
            for s in &some {
                let rest = if config {
                    for dir in ["/run/secrets", "/proc", "/sys", "/dev"] {
                        assert!(s.target != dir && !s.target.starts_with(&format!("{dir}/")));
                    }
                    s.target.strip_prefix('/').expect("absolute")
                } else {
                    s.target
                        .strip_prefix("/run/secrets/")
                        .expect("under /run/secrets")
                };
                assert!(!rest.is_empty());
                assert!(rest.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
                assert_eq!(s.secret_id, "id1");
                assert!(s.mode <= 0o777);
                assert!(s.pinned.is_none_or(|v| v == 1 || v == 2));
            }
        }
    }
});
