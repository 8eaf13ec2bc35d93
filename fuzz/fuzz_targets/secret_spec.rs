//! `--secret` values come from operators' command lines (and, as specs, from the network):
//! parsing and resolving them must never panic, and whatever resolves must name a plain path
//! under /run/secrets.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep::manager::secrets::resolve_refs;
use skep::spec::secret::parse_secret_spec;
use skep::secret::SecretBytes;
use skep::store::model::State;
use skep::store::secret_obj::Secret;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(r) = parse_secret_spec(&text) else {
        return;
    };
    let mut state = State::default();
    state.secrets.insert(
        "id1".into(),
        Secret::new(
            "id1".into(),
            r.secret_name.clone(),
            Default::default(),
            SecretBytes::new(b"x".to_vec()),
            "",
        ),
    );
    // Two references: the second may clash with the first.
    let mut refs = vec![r.clone(), r];
    refs[1].target.push_str("/x");
    for n in 1..=2 {
        let mut some = refs[..n].to_vec();
        if resolve_refs(&state, &mut some).is_ok() {
            for s in &some {
                let rest = s.target.strip_prefix("/run/secrets/").expect("under /run/secrets");
                assert!(!rest.is_empty());
                assert!(rest.split('/').all(|p| !p.is_empty() && p != "." && p != ".."));
                assert_eq!(s.secret_id, "id1");
                assert!(s.mode <= 0o777);
            }
        }
    }
});
