//! Material into Workload API responses: pure functions, one per response. Bundles are keyed
//! by the trust domain's SPIFFE ID (`spiffe://<td>`), as SPIRE does.

use std::collections::HashMap;

use crate::api::spiffe::{
    JwtBundlesResponse, Jwtsvid, JwtsvidResponse, X509BundlesResponse, X509svid, X509svidResponse,
};

use super::{JwtBundleMaterial, X509Material};

/// The key of a trust domain in a bundles map.
pub fn trust_domain_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

fn crls(m: &X509Material) -> Vec<Vec<u8>> {
    if m.crl_der.is_empty() {
        Vec::new()
    } else {
        vec![m.crl_der.clone()]
    }
}

/// A FetchX509SVID message: the task's one SVID, its key and its trust domain's bundle.
pub fn x509_svid(m: &X509Material) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: m.spiffe_id.clone(),
            x509_svid: m.cert_der.clone(),
            x509_svid_key: m.key_pkcs8.to_vec(),
            bundle: m.bundle_der.clone(),
            hint: String::new(),
        }],
        crl: crls(m),
        federated_bundles: HashMap::new(),
    }
}

/// A FetchX509Bundles message: the trust domain's CA certificates and CRL.
pub fn x509_bundles(m: &X509Material) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: crls(m),
        bundles: HashMap::from([(trust_domain_id(&m.trust_domain), m.bundle_der.clone())]),
    }
}

/// A FetchJWTBundles message: the trust domain's JWKS.
pub fn jwt_bundles(m: &JwtBundleMaterial) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: HashMap::from([(trust_domain_id(&m.trust_domain), m.jwks_json.clone())]),
    }
}

/// A FetchJWTSVID answer carrying `token` for `spiffe_id`.
pub fn jwt_svid(spiffe_id: &str, token: &str) -> JwtsvidResponse {
    JwtsvidResponse {
        svids: vec![Jwtsvid {
            spiffe_id: spiffe_id.to_string(),
            svid: token.to_string(),
            hint: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(crl: &[u8]) -> X509Material {
        X509Material {
            spiffe_id: "spiffe://td/ns/default/svc/web".into(),
            cert_der: vec![1],
            key_pkcs8: zeroize::Zeroizing::new(vec![2]),
            bundle_der: vec![3],
            crl_der: crl.to_vec(),
            trust_domain: "td".into(),
        }
    }

    #[test]
    fn an_svid_message_carries_key_bundle_and_crl_only_when_there_is_one() {
        let r = x509_svid(&material(&[]));
        assert_eq!(r.svids.len(), 1);
        assert_eq!(r.svids[0].x509_svid_key, vec![2]);
        assert_eq!(r.svids[0].bundle, vec![3]);
        assert!(r.crl.is_empty());
        assert_eq!(x509_svid(&material(&[9])).crl, vec![vec![9]]);
    }

    #[test]
    fn bundles_are_keyed_by_the_trust_domain_id() {
        let r = x509_bundles(&material(&[9]));
        assert_eq!(r.bundles["spiffe://td"], vec![3]);
        assert_eq!(r.crl, vec![vec![9]]);
        let j = jwt_bundles(&JwtBundleMaterial {
            trust_domain: "td".into(),
            jwks_json: b"{}".to_vec(),
        });
        assert_eq!(j.bundles["spiffe://td"], b"{}".to_vec());
    }
}
