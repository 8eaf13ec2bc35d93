//! Workload API requests come from the task, which may be hostile: decoding any bytes as any
//! request message and running the server's request checks on what decodes must never panic,
//! and every refusal must stay short (it quotes at most a prefix of what it was sent).

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use skep::agent::workload::{check, jwt};
use skep::api::spiffe::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, WitBundlesRequest, WitsvidRequest,
    X509BundlesRequest, X509svidRequest,
};

/// A trust bundle with one P-256 key (kid `k1`), so tokens reach the signature check.
const JWKS: &[u8] = br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"1lI2os2OlL-mpbbfph0SKmRXwMLCMOtF5MSClyg3yfc","y":"tfbFYI1yKJUaYcsRc_cH05t3Z5EiuersDUT0P4DhQko"}]}"#;

fuzz_target!(|data: &[u8]| {
    let short = |e: skep::agent::workload::WorkloadError| {
        let s = e.status();
        assert!(s.message().len() <= 600, "{} bytes", s.message().len());
    };
    // The header check sees the raw value.
    if let Err(e) = check::security_header(Some(data)) {
        short(e);
    }
    if let Ok(req) = JwtsvidRequest::decode(data) {
        match check::audiences(&req) {
            Ok(a) => {
                assert!(!a.is_empty() && a.len() <= check::MAX_AUDIENCES);
                assert!(a.iter().all(|x| !x.is_empty() && x.len() <= check::MAX_AUDIENCE_BYTES));
            }
            Err(e) => short(e),
        }
        if let Err(e) = check::requested_id(&req.spiffe_id, "spiffe://td/ns/default/svc/web") {
            short(e);
        }
    }
    if let Ok(req) = ValidateJwtsvidRequest::decode(data) {
        match check::validate_request(&req) {
            Ok(()) => {
                assert!(req.svid.len() <= check::MAX_JWT_BYTES);
                // No token signed by the fixed key can come out of a fuzzer.
                let e = jwt::verify(&req.svid, JWKS, "td", &req.audience, 0).unwrap_err();
                short(e);
            }
            Err(e) => short(e),
        }
    }
    // The requests without fields must decode from anything without panicking.
    let _ = X509svidRequest::decode(data);
    let _ = X509BundlesRequest::decode(data);
    let _ = JwtBundlesRequest::decode(data);
    let _ = WitsvidRequest::decode(data);
    let _ = WitBundlesRequest::decode(data);
});
