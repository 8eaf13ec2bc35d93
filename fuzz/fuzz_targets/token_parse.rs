//! Join tokens come from operators and from the network: parsing must never panic, and a
//! token that parses must print back to the same text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep_pki::JoinToken;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = JoinToken::parse(&text) {
        // The format is canonical: what parsed is exactly what it prints.
        assert_eq!(token.expose().as_str(), &*text);
        assert!(token.secret_matches(&token));
    }
});
