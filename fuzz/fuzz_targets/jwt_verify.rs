//! JWT-SVIDs reach `jwt::verify` from workloads (the Workload API's ValidateJWTSVID) and JWKS
//! documents from trust bundles: whatever the bytes, verify must never panic, must quote at
//! most a short prefix of what it refuses, and must accept only what the bundle's key signed.
//!
//! The fixed token and JWKS below were made once by `JwtKey::sign_svid` (at `NOW`, for five
//! minutes, audience "db"); only public values are kept, so every run is reproducible.

#![no_main]

use libfuzzer_sys::fuzz_target;
use skep_pki::PkiError;
use skep_pki::jwt::{self, JwtClaims, MAX_AUDIENCES};
use time::OffsetDateTime;

const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6IjJwWjRpR2E4Zk5Tcmg5SUsxVTgzN3ciLCJ0eXAiOiJKV1QifQ.eyJhdWQiOlsiZGIiXSwiZXhwIjoxODAwMDAwMzAwLCJpYXQiOjE4MDAwMDAwMDAsInN1YiI6InNwaWZmZTovL2Z1enouZXhhbXBsZS9ucy9kZWZhdWx0L3N2Yy93ZWIifQ.KIoIBAdjiH2Md_ViTIPvrCDDaFmcRtZY9--NeLFJYX_Cmd-XdIiCqeYJ-BPZa8HpNZhqp1BCV3spF1okyuQ4dw";

const JWKS: &[u8] = br#"{"keys":[{"alg":"ES256","crv":"P-256","kid":"2pZ4iGa8fNSrh9IK1U837w","kty":"EC","use":"sig","x":"9d6eMraTqF3ZJB3Xpg6yavIXLChNUfQC-3YxEpENCUc","y":"kZ1ru9xXjpfAQRLha65K_krX8rHLtDmn2Aiq1KY8vfI"}]}"#;

const NOW: i64 = 1_800_000_000;

fn check(result: Result<JwtClaims, PkiError>, now: OffsetDateTime) {
    match result {
        Ok(claims) => {
            assert!(claims.sub.starts_with("spiffe://"));
            assert!(claims.exp > now);
            assert!(claims.aud.iter().any(|a| a == "db"));
            assert!(claims.aud.len() <= MAX_AUDIENCES);
        }
        Err(e) => assert!(e.to_string().len() <= 400, "{} bytes: {e}", e.to_string().len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(now) = OffsetDateTime::from_unix_timestamp(NOW) else {
        return;
    };
    let text = String::from_utf8_lossy(data);
    // Arbitrary bytes as the token, against the real bundle.
    check(jwt::verify(&text, JWKS, "db", now), now);
    // The real token against arbitrary bytes as the bundle.
    check(jwt::verify(TOKEN, data, "db", now), now);
    // Both arbitrary.
    let (token, jwks) = data.split_at(data.len() / 2);
    check(jwt::verify(&String::from_utf8_lossy(token), jwks, "db", now), now);
});
