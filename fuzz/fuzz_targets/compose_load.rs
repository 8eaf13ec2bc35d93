//! Compose files come from operators' disks and are full of other people's YAML: loading one
//! must never panic, never expand aliases without bound, and whatever loads must be specs the
//! manager accepts.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(stack) = skep::stack::load_str_for_fuzz(&text) {
        for spec in &stack.services {
            assert!(skep::spec::service::validate(spec).is_ok());
            assert!(spec.name.starts_with("fuzz_"));
            assert_eq!(
                spec.labels.get(skep::stack::NAMESPACE_LABEL).map(String::as_str),
                Some("fuzz")
            );
        }
    }
});
