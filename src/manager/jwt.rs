//! JWT-SVIDs on the managers: the swarm's signing key (kept in [`WorkloadKeys`]) put to use
//! through [`skep_pki::jwt`].

use skep_pki::PkiError;
use skep_pki::jwt::{JwtKey, jwks_json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::store::workload::WorkloadKeys;

fn key(keys: &WorkloadKeys) -> Result<JwtKey, PkiError> {
    JwtKey::from_pkcs8_pem(keys.jwt_key_pem.expose())
}

/// The JWKS of the swarm's JWT key (what verifiers of JWT-SVIDs trust).
pub fn jwks(keys: &WorkloadKeys) -> Result<Vec<u8>, PkiError> {
    Ok(jwks_json(&[key(keys)?.public_jwk()]))
}

/// A JWT-SVID for `spiffe_id` and `audience`, living `ttl` from `now`; with an `iss` claim
/// when the swarm has an OIDC issuer (`swarm update --oidc-issuer`).
pub fn sign(
    keys: &WorkloadKeys,
    spiffe_id: &str,
    audience: &[String],
    ttl: time::Duration,
    now: OffsetDateTime,
    issuer: &str,
) -> Result<Zeroizing<String>, PkiError> {
    let k = key(keys)?;
    if issuer.is_empty() {
        k.sign_svid(spiffe_id, audience, ttl, now)
    } else {
        k.sign_svid_with_issuer(spiffe_id, audience, ttl, now, issuer)
    }
}
