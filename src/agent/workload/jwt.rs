//! JWT-SVID verification for ValidateJWTSVID: ES256 only, the key chosen by the token's `kid`
//! from the trust domain's JWKS, `exp` checked against a given time, the audience required in
//! `aud`, and `sub` a SPIFFE ID of that trust domain.
//!
//! The signature check is the swarm's one JWT verifier, `skep_pki::jwt::verify`.

use serde_json::{Map, Value};

use super::WorkloadError;
use super::check::MAX_JWT_BYTES;
use crate::util::quote;

/// A JWT-SVID that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Its `sub`: the SPIFFE ID it proves.
    pub spiffe_id: String,
    /// Its claims.
    pub claims: Map<String, Value>,
}

/// Verifies `token` against `jwks_json` (the JWT bundle of `trust_domain`) for `audience` at
/// `now` (seconds since the epoch), with the swarm's one verifier
/// ([`skep_pki::jwt::verify`]: ES256 only, the key by `kid`, `exp` against `now`), then
/// requires `sub` to be in `trust_domain`.
pub fn verify(
    token: &str,
    jwks_json: &[u8],
    trust_domain: &str,
    audience: &str,
    now: u64,
) -> Result<Verified, WorkloadError> {
    let bad = |why: String| WorkloadError::InvalidToken(crate::util::prefix(&why, 200));
    if token.len() > MAX_JWT_BYTES {
        return Err(bad(format!("longer than {MAX_JWT_BYTES} bytes")));
    }
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(now).unwrap_or(i64::MAX))
        .map_err(|_| bad("the clock is out of range".into()))?;
    let c =
        skep_pki::jwt::verify(token, jwks_json, audience, at).map_err(|e| bad(e.to_string()))?;
    let in_domain = c
        .sub
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_prefix(trust_domain))
        .is_some_and(|path| path.starts_with('/') && path.len() > 1);
    if !in_domain {
        return Err(bad(format!(
            "sub {} is not a SPIFFE ID of trust domain {}",
            quote(&c.sub),
            quote(trust_domain)
        )));
    }
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(c.sub.clone()));
    claims.insert("aud".into(), Value::from(c.aud.clone()));
    claims.insert("exp".into(), Value::from(c.exp.unix_timestamp()));
    if let Some(iat) = c.iat {
        claims.insert("iat".into(), Value::from(iat.unix_timestamp()));
    }
    if let Some(iss) = &c.iss {
        claims.insert("iss".into(), Value::from(iss.clone()));
    }
    Ok(Verified {
        spiffe_id: c.sub,
        claims,
    })
}

/// Claims as the `google.protobuf.Struct` of a ValidateJWTSVIDResponse.
pub fn claims_struct(claims: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims
            .iter()
            .map(|(k, v)| (k.clone(), proto_value(v)))
            .collect(),
    }
}

fn proto_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    // Depth is bounded by serde_json's recursion limit (128) on a token of at most 8 KiB.
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(proto_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(claims_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A P-256 key pair for tests: (PKCS#8 DER, JWKS JSON with kid `kid`).
    pub(crate) fn test_key(kid: &str) -> (Vec<u8>, Vec<u8>) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = kp.public_key_raw(); // 0x04 || x || y
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        }]});
        (kp.serialize_der(), serde_json::to_vec(&jwks).unwrap())
    }

    /// An ES256 token signed by `key_der` with header kid `kid` (claims as given, so tests can
    /// forge any).
    pub(crate) fn sign(key_der: &[u8], kid: &str, claims: &Value) -> String {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key_der, &rng).unwrap();
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    const NOW: u64 = 1_800_000_000;
    const ID: &str = "spiffe://td/ns/default/svc/web";

    fn claims(aud: &[&str], exp: u64) -> Value {
        serde_json::json!({"sub": ID, "aud": aud, "exp": exp, "iat": NOW - 10})
    }

    #[test]
    fn a_good_token_verifies_and_keeps_its_claims() {
        let (key, jwks) = test_key("k1");
        let token = sign(&key, "k1", &claims(&["db", "cache"], NOW + 300));
        let v = verify(&token, &jwks, "td", "db", NOW).unwrap();
        assert_eq!(v.spiffe_id, ID);
        let s = claims_struct(&v.claims);
        assert!(s.fields.contains_key("aud"));
        assert!(matches!(
            s.fields["exp"].kind,
            Some(prost_types::value::Kind::NumberValue(e)) if e == (NOW + 300) as f64
        ));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (key, jwks) = test_key("k1");
        let (other, _) = test_key("k1");
        let good = claims(&["db"], NOW + 300);
        let cases = [
            ("wrong audience", sign(&key, "k1", &good), "cache"),
            ("expired", sign(&key, "k1", &claims(&["db"], NOW)), "db"),
            ("other signer", sign(&other, "k1", &good), "db"),
            ("unknown kid", sign(&key, "k2", &good), "db"),
            (
                "foreign trust domain",
                sign(
                    &key,
                    "k1",
                    &serde_json::json!({"sub": "spiffe://evil/x", "aud": ["db"], "exp": NOW + 300}),
                ),
                "db",
            ),
            (
                "no sub",
                sign(
                    &key,
                    "k1",
                    &serde_json::json!({"aud": ["db"], "exp": NOW + 300}),
                ),
                "db",
            ),
            ("garbage", "not.a.jwt".to_string(), "db"),
            ("empty", String::new(), "db"),
            ("huge", "a".repeat(MAX_JWT_BYTES + 1), "db"),
        ];
        for (what, token, aud) in cases {
            let e = verify(&token, &jwks, "td", aud, NOW).unwrap_err();
            assert_eq!(e.status().code(), tonic::Code::InvalidArgument, "{what}");
            assert!(e.to_string().len() < 300, "{what}: {e}");
        }
    }

    #[test]
    fn an_unsigned_or_hmac_token_is_refused() {
        let (_, jwks) = test_key("k1");
        let body = URL_SAFE_NO_PAD.encode(claims(&["db"], NOW + 300).to_string());
        let long_alg = format!(r#"{{"alg":"{}","kid":"k1"}}"#, "x".repeat(5000));
        for header in [
            r#"{"alg":"none","kid":"k1"}"#,
            r#"{"alg":"HS256","kid":"k1"}"#,
            long_alg.as_str(),
        ] {
            let token = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
            let e = verify(&token, &jwks, "td", "db", NOW).unwrap_err();
            assert!(e.to_string().len() < 300, "{e}");
        }
    }
}
