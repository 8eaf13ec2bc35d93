//! Tests of JWT-SVID signing and verification, each trying one way to get a bad token past
//! [`verify`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const ID: &str = "spiffe://prod.example/ns/default/svc/web";

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn aud(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn jwks(keys: &[&JwtKey]) -> Vec<u8> {
    let jwks: Vec<Jwk> = keys.iter().map(|k| k.public_jwk()).collect();
    jwks_json(&jwks)
}

fn b64(json: &str) -> String {
    URL_SAFE_NO_PAD.encode(json)
}

/// A token with the given header and claims, signed (ES256) by `key` whatever they say.
fn sign_raw(key: &JwtKey, header: &str, claims: &str) -> String {
    let signed = format!("{}.{}", b64(header), b64(claims));
    let sig = key
        .signer
        .sign(&SystemRandom::new(), signed.as_bytes())
        .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn claims_json(exp: i64) -> String {
    format!(r#"{{"sub":"{ID}","aud":["db"],"exp":{exp},"iat":1}}"#)
}

#[test]
fn round_trip() {
    let key = JwtKey::generate().unwrap();
    let token = key
        .sign_svid(ID, &aud(&["db", "cache"]), Duration::minutes(5), now())
        .unwrap();
    let claims = verify(&token, &jwks(&[&key]), "cache", now()).unwrap();
    assert_eq!(claims.sub, ID);
    assert_eq!(claims.aud, aud(&["db", "cache"]));
    assert_eq!(claims.exp, now() + Duration::minutes(5));
    assert_eq!(claims.iat, Some(now()));
    assert_eq!(claims.iss, None);

    // The header is what the JWT-SVID specification asks for.
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"], key.kid());
}

#[test]
fn pem_round_trip_keeps_the_key_and_its_id() {
    let key = JwtKey::generate().unwrap();
    let again = JwtKey::from_pkcs8_pem(&key.pkcs8_pem()).unwrap();
    assert_eq!(key.kid(), again.kid());
    assert_eq!(key.public_jwk(), again.public_jwk());
    let from_der = JwtKey::from_pkcs8_der(&key.pkcs8_der()).unwrap();
    assert_eq!(key.kid(), from_der.kid());
    // A token of the reloaded key verifies with the original's JWKS.
    let token = again
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    verify(&token, &jwks(&[&key]), "db", now()).unwrap();
    // The id is 16 bytes, base64url.
    assert_eq!(URL_SAFE_NO_PAD.decode(key.kid()).unwrap().len(), 16);
    assert_ne!(key.kid(), JwtKey::generate().unwrap().kid());
}

#[test]
fn jwks_has_the_published_shape() {
    let (a, b) = (JwtKey::generate().unwrap(), JwtKey::generate().unwrap());
    let doc: Value = serde_json::from_slice(&jwks(&[&a, &b])).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let k = &keys[0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["alg"], "ES256");
    assert_eq!(k["use"], "sig");
    assert_eq!(k["kid"], a.kid());
    for c in ["x", "y"] {
        let bytes = URL_SAFE_NO_PAD.decode(k[c].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 32, "{c}");
    }
    // During a rotation a token of either key verifies.
    let token = b
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    verify(&token, &jwks(&[&a, &b]), "db", now()).unwrap();
}

#[test]
fn wrong_audience_is_refused() {
    let key = JwtKey::generate().unwrap();
    let token = key
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    let err = verify(&token, &jwks(&[&key]), "payments", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtAudience { .. }), "{err}");
    assert!(err.to_string().contains("payments"));
}

#[test]
fn expired_token_is_refused() {
    let key = JwtKey::generate().unwrap();
    let token = key
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    let keys = jwks(&[&key]);
    let last_second = now() + Duration::minutes(5) - Duration::seconds(1);
    verify(&token, &keys, "db", last_second).unwrap();
    for at in [now() + Duration::minutes(5), now() + Duration::hours(1)] {
        let err = verify(&token, &keys, "db", at).unwrap_err();
        assert!(matches!(err, PkiError::JwtExpired { .. }), "{err}");
    }
}

#[test]
fn future_nbf_is_refused() {
    let key = JwtKey::generate().unwrap();
    let exp = now().unix_timestamp() + 300;
    let claims = format!(
        r#"{{"sub":"{ID}","aud":["db"],"exp":{exp},"nbf":{}}}"#,
        exp - 10
    );
    let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, key.kid());
    let token = sign_raw(&key, &header, &claims);
    let err = verify(&token, &jwks(&[&key]), "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtNotYetValid { .. }), "{err}");
}

#[test]
fn unknown_kid_is_refused() {
    let (ours, theirs) = (JwtKey::generate().unwrap(), JwtKey::generate().unwrap());
    let token = theirs
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    let err = verify(&token, &jwks(&[&ours]), "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtUnknownKey { .. }), "{err}");

    // Another key that claims our key's id: the signature does not verify.
    let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, ours.kid());
    let forged = sign_raw(&theirs, &header, &claims_json(now().unix_timestamp() + 60));
    let err = verify(&forged, &jwks(&[&ours]), "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtBadSignature), "{err}");

    // No kid at all.
    let forged = sign_raw(
        &ours,
        r#"{"alg":"ES256"}"#,
        &claims_json(now().unix_timestamp() + 60),
    );
    let err = verify(&forged, &jwks(&[&ours]), "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtMalformed { .. }), "{err}");
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let key = JwtKey::generate().unwrap();
    let keys = jwks(&[&key]);
    let claims = b64(&claims_json(now().unix_timestamp() + 60));
    let kid = key.kid();

    for alg in ["none", "None", "HS256", "RS256", "ES384", "EdDSA", "es256"] {
        let header = b64(&format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#));
        for sig in [String::new(), b64("x")] {
            let token = format!("{header}.{claims}.{sig}");
            let err = verify(&token, &keys, "db", now()).unwrap_err();
            assert!(matches!(err, PkiError::JwtAlgorithm { .. }), "{alg}: {err}");
        }
    }

    // The classic confusion: HS256 keyed with the public JWKS bytes.
    let header = b64(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#));
    let signed = format!("{header}.{claims}");
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &keys),
        signed.as_bytes(),
    );
    let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    let err = verify(&token, &keys, "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtAlgorithm { .. }), "{err}");

    // An alg that is not a string.
    let header = b64(&format!(r#"{{"alg":7,"kid":"{kid}"}}"#));
    let token = format!("{header}.{claims}.");
    assert!(matches!(
        verify(&token, &keys, "db", now()),
        Err(PkiError::JwtMalformed { .. })
    ));
}

#[test]
fn tampered_token_is_refused() {
    let key = JwtKey::generate().unwrap();
    let keys = jwks(&[&key]);
    let token = key
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();

    // Other claims under the original signature: another subject and a later expiry.
    let other = format!(
        r#"{{"sub":"spiffe://prod.example/ns/default/svc/admin","aud":["db"],"exp":{},"iat":1}}"#,
        now().unix_timestamp() + 3600
    );
    let token2 = format!("{}.{}.{}", parts[0], b64(&other), parts[2]);
    let err = verify(&token2, &keys, "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtBadSignature), "{err}");

    // One bit of the signature flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let token3 = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
    assert!(matches!(
        verify(&token3, &keys, "db", now()),
        Err(PkiError::JwtBadSignature)
    ));

    // A truncated signature, padding, or a fourth part.
    for bad in [
        format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]),
        format!("{}=", *token),
        format!("{}.x", *token),
        format!("{}.{}", parts[0], parts[1]),
        String::new(),
    ] {
        assert!(verify(&bad, &keys, "db", now()).is_err(), "{bad}");
    }
}

#[test]
fn claims_of_the_wrong_type_are_refused() {
    // The jsonwebtoken type confusion: a string exp must not count as no exp.
    let key = JwtKey::generate().unwrap();
    let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, key.kid());
    for claims in [
        format!(r#"{{"sub":"{ID}","aud":["db"],"exp":"never"}}"#),
        format!(r#"{{"sub":"{ID}","aud":["db"]}}"#),
        format!(r#"{{"sub":"{ID}","aud":["db"],"exp":1e20}}"#),
        format!(r#"{{"sub":"{ID}","aud":["db"],"exp":99999999999999999}}"#),
        format!(r#"{{"sub":"{ID}","aud":"db","exp":1900000000,"nbf":"later"}}"#),
        format!(r#"{{"sub":"{ID}","aud":[],"exp":1900000000}}"#),
        format!(r#"{{"sub":"{ID}","aud":[1],"exp":1900000000}}"#),
        format!(r#"{{"sub":"{ID}","sub":"{ID}","aud":["db"],"exp":1900000000}}"#),
        r#"{"sub":"web","aud":["db"],"exp":1900000000}"#.to_string(),
        r#"{"sub":"spiffe://Prod/x","aud":["db"],"exp":1900000000}"#.to_string(),
        r#"{"sub":"spiffe://prod/a/../b","aud":["db"],"exp":1900000000}"#.to_string(),
    ] {
        let token = sign_raw(&key, &header, &claims);
        assert!(
            verify(&token, &jwks(&[&key]), "db", now()).is_err(),
            "{claims}"
        );
    }
    // aud as one string is allowed by RFC 7519.
    let claims = format!(r#"{{"sub":"{ID}","aud":"db","exp":1900000000}}"#);
    let token = sign_raw(&key, &header, &claims);
    let got = verify(&token, &jwks(&[&key]), "db", now()).unwrap();
    assert_eq!(got.aud, aud(&["db"]));
    assert_eq!(got.iat, None);
}

#[test]
fn critical_header_extensions_are_refused() {
    let key = JwtKey::generate().unwrap();
    let header = format!(
        r#"{{"alg":"ES256","kid":"{}","crit":["exp"],"exp":1}}"#,
        key.kid()
    );
    let token = sign_raw(&key, &header, &claims_json(now().unix_timestamp() + 60));
    let err = verify(&token, &jwks(&[&key]), "db", now()).unwrap_err();
    assert!(err.to_string().contains("crit"), "{err}");
}

#[test]
fn oversized_token_is_refused_without_reading_it() {
    let key = JwtKey::generate().unwrap();
    let token = "a".repeat(MAX_TOKEN_LEN + 1);
    let err = verify(&token, &jwks(&[&key]), "db", now()).unwrap_err();
    assert!(matches!(err, PkiError::JwtTooLarge { .. }), "{err}");
    assert!(err.to_string().len() < 200);

    // The signer refuses to write what verifiers would refuse to read.
    let long: Vec<String> = (0..MAX_AUDIENCES)
        .map(|i| format!("{i:0>width$}", width = MAX_AUDIENCE_LEN))
        .collect();
    let long_id = format!("spiffe://td/{}", "a".repeat(2000));
    let err = key
        .sign_svid(&long_id, &long, Duration::minutes(5), now())
        .unwrap_err();
    assert!(matches!(err, PkiError::JwtTooLarge { .. }), "{err}");
    // The largest audience list with a usual ID fits.
    let token = key
        .sign_svid(ID, &long, Duration::minutes(5), now())
        .unwrap();
    assert!(token.len() <= MAX_TOKEN_LEN);
    verify(&token, &jwks(&[&key]), &long[15], now()).unwrap();
}

#[test]
fn check_audience_names_what_is_wrong() {
    let huge: Vec<String> = (0..10_000).map(|i| format!("aud-{i}")).collect();
    let err = check_audience(&huge).unwrap_err();
    assert!(err.to_string().contains("10000 entries"), "{err}");
    assert!(err.to_string().len() < 200);

    assert!(
        check_audience(&[])
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
    let err = check_audience(&aud(&["db", ""])).unwrap_err();
    assert!(err.to_string().contains("entry 1 is empty"), "{err}");
    let err = check_audience(&["db".into(), "x".repeat(MAX_AUDIENCE_LEN + 1)]).unwrap_err();
    assert!(err.to_string().contains("entry 1"), "{err}");
    assert!(err.to_string().len() < 200, "{err}");

    check_audience(&aud(&["db"])).unwrap();
    check_audience(&vec!["x".repeat(MAX_AUDIENCE_LEN); MAX_AUDIENCES]).unwrap();
    assert!(check_audience(&vec!["x".into(); MAX_AUDIENCES + 1]).is_err());

    // The signer checks too.
    let key = JwtKey::generate().unwrap();
    assert!(matches!(
        key.sign_svid(ID, &huge, Duration::minutes(5), now()),
        Err(PkiError::JwtAudienceList { .. })
    ));
}

#[test]
fn signer_refuses_bad_ids_and_lifetimes() {
    let key = JwtKey::generate().unwrap();
    let db = aud(&["db"]);
    for id in [
        "web",
        "spiffe://",
        "spiffe:///x",
        "https://td/x",
        "SPIFFE://td/x",
        "spiffe://td/x/",
        "spiffe://td//x",
        "spiffe://td/x?y",
        "spiffe://t d/x",
    ] {
        let err = key
            .sign_svid(id, &db, Duration::minutes(5), now())
            .unwrap_err();
        assert!(matches!(err, PkiError::JwtSubject { .. }), "{id}: {err}");
    }
    for ttl in [Duration::ZERO, Duration::seconds(-1), Duration::days(2)] {
        assert!(matches!(
            key.sign_svid(ID, &db, ttl, now()),
            Err(PkiError::JwtTtl { .. })
        ));
    }
}

#[test]
fn jwks_problems_are_named() {
    let key = JwtKey::generate().unwrap();
    let token = key
        .sign_svid(ID, &aud(&["db"]), Duration::minutes(5), now())
        .unwrap();
    let jwk = key.public_jwk().to_json();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut k = jwk.clone();
        f(&mut k);
        serde_json::json!({ "keys": [k] }).to_string().into_bytes()
    };
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"[]".to_vec(),
        b"{\"keys\":{}}".to_vec(),
        vec![b' '; MAX_JWKS_LEN + 1],
        serde_json::json!({ "keys": [jwk, jwk] })
            .to_string()
            .into_bytes(),
        with(&|k| k["kty"] = "RSA".into()),
        with(&|k| k["crv"] = "P-384".into()),
        with(&|k| k["alg"] = "HS256".into()),
        with(&|k| k["use"] = "x509-svid".into()),
        with(&|k| k["x"] = "AAAA".into()),
        with(&|k| k["y"] = Value::Null),
        with(&|k| k["kid"] = 5.into()),
    ];
    for (i, bad) in cases.iter().enumerate() {
        let err = verify(&token, bad, "db", now()).unwrap_err();
        assert!(matches!(err, PkiError::JwksMalformed { .. }), "{i}: {err}");
        assert!(err.to_string().len() < 300, "{i}: {err}");
    }
    // A JWKS in the SPIFFE bundle form (use "jwt-svid", no alg) is read too, and keys of
    // other types beside ours are skipped.
    let spiffe = serde_json::json!({ "keys": [
        { "kty": "RSA", "kid": "other", "n": "AQAB", "e": "AQAB" },
        with_use(&jwk, "jwt-svid"),
    ]});
    verify(&token, spiffe.to_string().as_bytes(), "db", now()).unwrap();
}

fn with_use(jwk: &Value, use_: &str) -> Value {
    let mut k = jwk.clone();
    k["use"] = use_.into();
    k.as_object_mut().unwrap().remove("alg");
    k
}

#[test]
fn errors_quote_only_a_prefix() {
    let key = JwtKey::generate().unwrap();
    let keys = jwks(&[&key]);
    let long = "A".repeat(4000);
    let claims = b64(&claims_json(now().unix_timestamp() + 60));
    for token in [
        format!("{}.{claims}.", b64(&format!(r#"{{"alg":"{long}"}}"#))),
        format!(
            "{}.{claims}.",
            b64(&format!(r#"{{"alg":"ES256","kid":"{long}"}}"#))
        ),
        format!(
            "{}.{claims}.",
            b64(&format!(r#"{{"alg":"ES256","typ":"{long}"}}"#))
        ),
        format!("{}.{claims}.", b64(&format!(r#"{{"alg":["{long}"]}}"#))),
        format!("{long}.{claims}."),
    ] {
        let err = verify(&token, &keys, "db", now()).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }
    let err = verify("x.y.z", &keys, &long, now()).unwrap_err();
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn debug_hides_the_key() {
    let key = JwtKey::generate().unwrap();
    let debug = format!("{key:?}");
    assert!(debug.starts_with("JwtKey"), "{debug}");
    assert!(debug.contains(&key.kid()));
    let pem = key.pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!debug.contains(&body[..16]));
    assert!(debug.len() < 80, "{debug}");
}

#[test]
fn issuer_is_carried_when_asked() {
    let key = JwtKey::generate().unwrap();
    let iss = "https://oidc.prod.example:8443";
    let token = key
        .sign_svid_with_issuer(ID, &aud(&["sts"]), Duration::minutes(5), now(), iss)
        .unwrap();
    let claims = verify(&token, &jwks(&[&key]), "sts", now()).unwrap();
    assert_eq!(claims.iss.as_deref(), Some(iss));

    for bad in ["", &"x".repeat(MAX_ISSUER_LEN + 1)] {
        assert!(matches!(
            key.sign_svid_with_issuer(ID, &aud(&["sts"]), Duration::minutes(5), now(), bad),
            Err(PkiError::JwtIssuer { .. })
        ));
    }
    // An issuer of the wrong type is an error, not an absent issuer.
    let header = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, key.kid());
    let claims = format!(r#"{{"sub":"{ID}","aud":["sts"],"exp":1900000000,"iss":5}}"#);
    let token = sign_raw(&key, &header, &claims);
    assert!(verify(&token, &jwks(&[&key]), "sts", now()).is_err());
}
