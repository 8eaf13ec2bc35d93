//! An audit export given to `skep audit verify --file` is untrusted: parsing it and verifying
//! what parsed (hashes, links, checkpoint signatures) must never panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = skep::audit::export::parse_and_verify(data);
});
