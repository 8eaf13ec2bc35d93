//! A backup given to `skep swarm restore` is untrusted: reading its header and opening it
//! (lengths, header fields, signature, decryption) must never panic or allocate past its
//! bounds, whatever the bytes; nor may parsing them as a backup key's text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Random bytes cannot carry a valid signature (nor a tag under the fixed key), so every
    // call is an error; the fuzzer only hunts for panics and runaway allocations.
    let _ = skep::store::backup::open_untrusted(data);
});
