//! JWT-SVIDs on the managers: the swarm's signing key (kept in [`WorkloadKeys`]) put to use
//! through [`skep_pki::jwt`].

use skep_pki::jwt::{JwtKey, jwks_json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::workload::WorkloadError;
use crate::store::workload::WorkloadKeys;

/// Refuses an audience list a JWT-SVID cannot carry (empty, more than
/// [`skep_pki::jwt::MAX_AUDIENCES`], empty or too long entries), before anything else is
/// looked at.
pub fn check_audience(audience: &[String]) -> Result<(), WorkloadError> {
    skep_pki::jwt::check_audience(audience).map_err(|e| WorkloadError::BadRequest(e.to_string()))
}

fn key(keys: &WorkloadKeys) -> Result<JwtKey, WorkloadError> {
    JwtKey::from_pkcs8_pem(keys.jwt_key_pem.expose())
        .map_err(|e| WorkloadError::Sign(e.to_string()))
}

/// The JWKS of the swarm's JWT key (what verifiers of JWT-SVIDs trust).
pub fn jwks(keys: &WorkloadKeys) -> Result<Vec<u8>, WorkloadError> {
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
) -> Result<Zeroizing<String>, WorkloadError> {
    let k = key(keys)?;
    let signed = if issuer.is_empty() {
        k.sign_svid(spiffe_id, audience, ttl, now)
    } else {
        k.sign_svid_with_issuer(spiffe_id, audience, ttl, now, issuer)
    };
    signed.map_err(|e| WorkloadError::Sign(e.to_string()))
}
