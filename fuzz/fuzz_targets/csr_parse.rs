//! CSRs arrive from nodes that have no certificate yet: parsing and the signature check must
//! never panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep_pki::Csr;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = Csr::from_der(data) {
        assert!(!csr.public_key_der().is_empty());
    }
});
