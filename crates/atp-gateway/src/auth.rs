//! Who is calling: a bearer JWT validated OIDC-style (issuer, audience, exp/nbf with bounded
//! skew, EdDSA signature by a known `kid`). Tenant and roles come from the token's claims only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// Clock skew tolerated on `exp` and `nbf`: enough for NTP-disciplined hosts, small enough that
/// an expired token is refused within a minute.
pub const LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Producer,
    Auditor,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The tenant the caller acts for.
    pub tenant_id: String,
    pub roles: Vec<Role>,
}

/// How tokens are checked: trusted issuer, audience and verification keys by `kid`.
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub keys: HashMap<String, DecodingKey>,
}

impl AuthConfig {
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: HashMap::new(),
        }
    }
    pub fn with_ed25519_key(mut self, kid: &str, public_key: &[u8; 32]) -> Self {
        self.keys
            .insert(kid.to_owned(), DecodingKey::from_ed_der(public_key));
        self
    }

    pub fn verify(&self, token: &str) -> Result<Claims, Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the bearer token is not a JWT"))?;
        let kid = header
            .kid
            .ok_or_else(|| Problem::unauthorized("the token names no key (kid)"))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| Problem::unauthorized("the token's key is not trusted"))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| {
            Problem::unauthorized(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => "the token is not valid yet",
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                    "the token's issuer is not trusted"
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    "the token is for another audience"
                }
                _ => "the token does not verify",
            })
        })?;
        atp_core::TenantId::new(&data.claims.tenant_id)
            .map_err(|_| Problem::unauthorized("the token's tenant_id is not valid"))?;
        Ok(data.claims)
    }
}

/// Mints a token (the dev issuer: `atp token mint`, the dev stack and tests).
pub fn mint(key: &SigningKey, kid: &str, claims: &Claims) -> Result<String, String> {
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .map_err(|e| e.to_string())
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub tenant: atp_core::TenantId,
    pub roles: Vec<Role>,
}

impl Principal {
    pub fn require(&self, any_of: &[Role]) -> Result<(), Problem> {
        if self.roles.iter().any(|r| any_of.contains(r)) {
            Ok(())
        } else {
            Err(
                Problem::forbidden(format!("this needs one of the roles {any_of:?}"))
                    .tenant(self.tenant.as_str()),
            )
        }
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<AuthConfig>: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<AuthConfig>::from_ref(state);
        let value = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Problem::unauthorized("send Authorization: Bearer <token>"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Problem::unauthorized("the Authorization scheme must be Bearer"))?;
        let claims = auth.verify(token.trim())?;
        let tenant = atp_core::TenantId::new(claims.tenant_id)
            .map_err(|_| Problem::unauthorized("bad tenant"))?;
        // The request's span (and so its log lines and trace) names the caller's tenant.
        tracing::Span::current().record("tenant.id", tenant.as_str());
        Ok(Principal {
            subject: claims.sub,
            tenant,
            roles: claims.roles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            iss: "atp-dev".into(),
            aud: "atp".into(),
            sub: "alice".into(),
            exp: (now + exp_offset) as u64,
            nbf: None,
            iat: Some(now as u64),
            tenant_id: "acme".into(),
            roles: vec![Role::Auditor],
        }
    }

    #[test]
    fn tokens_verify_only_with_the_right_key_issuer_audience_and_time() {
        let k = SigningKey::from_bytes(&[3u8; 32]);
        let cfg = AuthConfig::new("atp-dev", "atp")
            .with_ed25519_key("dev-1", &k.verifying_key().to_bytes());
        let ok = mint(&k, "dev-1", &claims(600)).unwrap();
        assert_eq!(cfg.verify(&ok).unwrap().tenant_id, "acme");
        assert_eq!(
            cfg.verify(&mint(&k, "dev-1", &claims(-3600)).unwrap())
                .unwrap_err()
                .detail,
            "the token has expired"
        );
        assert!(
            cfg.verify(&mint(&k, "other", &claims(600)).unwrap())
                .is_err()
        );
        let mallory = SigningKey::from_bytes(&[4u8; 32]);
        assert!(
            cfg.verify(&mint(&mallory, "dev-1", &claims(600)).unwrap())
                .is_err()
        );
        let mut wrong_aud = claims(600);
        wrong_aud.aud = "elsewhere".into();
        assert!(cfg.verify(&mint(&k, "dev-1", &wrong_aud).unwrap()).is_err());
        assert!(cfg.verify("not.a.jwt").is_err());
    }
}
