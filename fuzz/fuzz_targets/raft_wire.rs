//! Raft messages from a peer manager are untrusted bytes until decoded: decoding them as any
//! of the Raft requests or a forwarded command must never panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    skep::store::wire::fuzz_decode_append(data);
});
