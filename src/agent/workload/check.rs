//! Request checks of the Workload API: pure functions of a request, run before the source is
//! asked for anything, so a hostile request costs no more than its decoding. Errors quote at
//! most a short prefix of what they were sent. The fuzz target `workload_frames` runs them on
//! arbitrary messages.

use crate::api::spiffe::{JwtsvidRequest, ValidateJwtsvidRequest};
use crate::util::quote;

use super::{SECURITY_HEADER_VALUE, WorkloadError};

/// At most this many audiences in one JWT-SVID request (the JWT-SVID profile of skep).
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 256;
/// The longest JWT-SVID a caller may ask to validate, in bytes: an ES256 token with a few
/// audiences is well under 1 KiB.
pub const MAX_JWT_BYTES: usize = 8 << 10;

/// The request carries `workload.spiffe.io: true` (`value` is the header's value, if any).
pub fn security_header(value: Option<&[u8]>) -> Result<(), WorkloadError> {
    match value {
        Some(v) if v == SECURITY_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(WorkloadError::SecurityHeaderMissing),
    }
}

/// The audiences of a FetchJWTSVID request, checked: 1..=[`MAX_AUDIENCES`] entries, each
/// non-empty and at most [`MAX_AUDIENCE_BYTES`]. The count is checked before any entry is
/// looked at.
pub fn audiences(req: &JwtsvidRequest) -> Result<Vec<String>, WorkloadError> {
    if req.audience.is_empty() {
        return Err(WorkloadError::NoAudience);
    }
    if req.audience.len() > MAX_AUDIENCES {
        return Err(WorkloadError::TooManyAudiences {
            count: req.audience.len(),
            max: MAX_AUDIENCES,
        });
    }
    for (index, a) in req.audience.iter().enumerate() {
        audience(index, a)?;
    }
    Ok(req.audience.clone())
}

/// One audience: non-empty, at most [`MAX_AUDIENCE_BYTES`].
fn audience(index: usize, a: &str) -> Result<(), WorkloadError> {
    let problem = if a.is_empty() {
        "empty"
    } else if a.len() > MAX_AUDIENCE_BYTES {
        "longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(WorkloadError::BadAudience {
        index,
        problem,
        quoted: quote(a),
    })
}

/// A FetchJWTSVID's optional `spiffe_id` names this task's own ID (or nothing).
pub fn requested_id(requested: &str, ours: &str) -> Result<(), WorkloadError> {
    if requested.is_empty() || requested == ours {
        Ok(())
    } else {
        Err(WorkloadError::ForeignSpiffeId {
            quoted: quote(requested),
        })
    }
}

/// A ValidateJWTSVID request: one audience (non-empty, at most [`MAX_AUDIENCE_BYTES`]) and a
/// token of 1..=[`MAX_JWT_BYTES`] bytes.
pub fn validate_request(req: &ValidateJwtsvidRequest) -> Result<(), WorkloadError> {
    audience(0, &req.audience)?;
    if req.svid.is_empty() {
        return Err(WorkloadError::BadToken {
            problem: "required: pass the JWT-SVID to validate".into(),
        });
    }
    if req.svid.len() > MAX_JWT_BYTES {
        return Err(WorkloadError::BadToken {
            problem: format!(
                "{} bytes, longer than the {MAX_JWT_BYTES} a JWT-SVID may be",
                req.svid.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_req(audience: Vec<String>) -> JwtsvidRequest {
        JwtsvidRequest {
            audience,
            spiffe_id: String::new(),
        }
    }

    #[test]
    fn the_security_header_must_say_true() {
        assert!(security_header(Some(b"true")).is_ok());
        for bad in [
            None,
            Some(&b""[..]),
            Some(b"TRUE"),
            Some(b"1"),
            Some(b"true "),
        ] {
            let e = security_header(bad).unwrap_err();
            assert_eq!(e.status().code(), tonic::Code::InvalidArgument);
            assert_eq!(e.status().message(), "security header missing");
        }
    }

    #[test]
    fn audiences_within_bounds_pass() {
        let a: Vec<String> = (0..MAX_AUDIENCES).map(|i| format!("aud{i}")).collect();
        assert_eq!(audiences(&jwt_req(a.clone())).unwrap(), a);
        assert!(audiences(&jwt_req(vec!["x".repeat(MAX_AUDIENCE_BYTES)])).is_ok());
    }

    #[test]
    fn no_audience_is_refused() {
        let e = audiences(&jwt_req(vec![])).unwrap_err();
        assert!(matches!(e, WorkloadError::NoAudience));
        assert_eq!(e.status().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn ten_thousand_audiences_are_refused_with_a_short_message() {
        let a: Vec<String> = (0..10_000).map(|i| format!("audience-{i}")).collect();
        let e = audiences(&jwt_req(a)).unwrap_err();
        assert!(matches!(
            e,
            WorkloadError::TooManyAudiences { count: 10_000, .. }
        ));
        let s = e.status();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("10000"), "{}", s.message());
        assert!(s.message().len() < 100, "{}", s.message());
    }

    #[test]
    fn an_empty_or_long_audience_is_named_and_quoted_briefly() {
        let e = audiences(&jwt_req(vec!["a".into(), String::new()])).unwrap_err();
        assert!(e.to_string().contains("audience 1 is empty"), "{e}");
        let long = "z".repeat(100_000);
        let e = audiences(&jwt_req(vec![long])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("audience 0 is longer than 256 bytes"), "{msg}");
        assert!(msg.contains("100000 bytes"), "{msg}");
        assert!(msg.len() < 200, "{} bytes", msg.len());
    }

    #[test]
    fn only_our_own_spiffe_id_may_be_requested() {
        let ours = "spiffe://td/ns/default/svc/web";
        assert!(requested_id("", ours).is_ok());
        assert!(requested_id(ours, ours).is_ok());
        let e = requested_id("spiffe://td/ns/default/svc/db", ours).unwrap_err();
        assert_eq!(e.status().code(), tonic::Code::PermissionDenied);
        let e = requested_id(&"spiffe://x/".repeat(10_000), ours).unwrap_err();
        assert!(e.to_string().len() < 200);
    }

    #[test]
    fn validate_requests_are_bounded() {
        let ok = ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: "a.b.c".into(),
        };
        assert!(validate_request(&ok).is_ok());
        for (audience, svid) in [
            ("", "a.b.c".to_string()),
            ("db", String::new()),
            ("db", "x".repeat(MAX_JWT_BYTES + 1)),
        ] {
            let req = ValidateJwtsvidRequest {
                audience: audience.into(),
                svid,
            };
            let e = validate_request(&req).unwrap_err();
            assert_eq!(e.status().code(), tonic::Code::InvalidArgument);
            assert!(e.to_string().len() < 200);
        }
    }
}
