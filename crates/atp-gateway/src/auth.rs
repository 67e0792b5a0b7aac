//! Who is calling: a bearer JWT validated OIDC-style (issuer, audience, exp/nbf with bounded
//! skew, an RS256, ES256 or EdDSA signature by a known `kid`, keys configured or fetched from
//! the issuer's JWKS with rotation). Tenant and roles come from the token's claims only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use atp_core::edition::{Edition, EditionError, Feature};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::problem::{Problem, ProblemCode};

/// Clock skew tolerated on `exp` and `nbf`: enough for NTP-disciplined hosts, small enough that
/// an expired token is refused within a minute.
pub const LEEWAY_SECS: u64 = 60;

pub use atp_core::role::Permission;

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
    pub roles: Vec<Permission>,
    /// The tenant's edition (`standard` when absent).
    #[serde(default)]
    pub edition: Edition,
}

/// A key tokens may be signed with. Its algorithm is fixed by the key, never taken from the
/// token (a token naming another algorithm than its key's is refused: no algorithm confusion).
struct TrustedKey {
    alg: Algorithm,
    key: DecodingKey,
    /// Came from the JWKS endpoint (replaced on every fetch) rather than configuration.
    fetched: bool,
}

/// Where signing keys are fetched from: an OIDC issuer's JWKS endpoint, fetched by the caller of
/// [`AuthConfig::refresh`] (at start and on a timer) and when a token names a key not yet known
/// — those fetches at most once per `min_interval`, so unknown `kid`s cannot make the gateway
/// hammer the issuer.
struct JwksSource {
    url: String,
    client: reqwest::Client,
    min_interval: Duration,
    /// The last fetch a token with an unknown `kid` caused.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When the keys were last fetched, or when the source was configured if never: how stale
    /// the fetched keys are ([`AuthConfig::jwks_age`]).
    fresh_since: Mutex<Instant>,
}

/// How long a JWKS fetch may take, connecting included: an issuer slower than this is treated
/// as down (the keys fetched before stay trusted).
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS accepted, counted while it is read. A set of a dozen RSA-4096 keys is about
/// 10 KiB; 64 KiB leaves room for any real issuer and keeps a hostile or broken endpoint from
/// making the gateway buffer without limit.
pub const JWKS_MAX_BYTES: usize = 64 * 1024;

/// Why the issuer's JWKS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Keys that decide who may act for every tenant travel only over TLS, except from a
    /// loopback address (the dev stack's issuer on the same host).
    #[error("the JWKS URL {0} must be https (http only to a loopback address such as 127.0.0.1)")]
    Insecure(String),
    #[error("the JWKS URL {0} is not a URL")]
    NotAUrl(String),
    #[error("no HTTP client for the JWKS: {0}")]
    Client(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url} answered more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} is not a JWKS document: {reason}")]
    NotJwks { url: String, reason: String },
    #[error("the key cache is poisoned")]
    Poisoned,
}

/// Whether keys may be fetched from `url`: https, or http to a literal loopback address (not a
/// name: `localhost` could be made to resolve elsewhere).
pub fn check_jwks_url(url: &str) -> Result<(), JwksError> {
    let u = reqwest::Url::parse(url).map_err(|_| JwksError::NotAUrl(url.to_owned()))?;
    let loopback = || {
        u.host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| ip.is_loopback())
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback() => Ok(()),
        _ => Err(JwksError::Insecure(url.to_owned())),
    }
}

/// How tokens are checked: trusted issuer, audience and verification keys by `kid`, configured
/// (Ed25519 keys, a JWKS file) or fetched from the issuer's JWKS endpoint with rotation.
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    keys: RwLock<HashMap<String, Arc<TrustedKey>>>,
    jwks: Option<JwksSource>,
    /// Tokens that verified, by SHA-256 of the token: presented again (a client reuses its
    /// token for every call) they skip the signature check until they expire. Bounded; emptied
    /// whenever the trusted keys change, so a withdrawn key stops its tokens at once.
    verified: Mutex<HashMap<[u8; 32], Claims>>,
}

/// Verified tokens remembered at most; past it the memory starts afresh.
const VERIFIED_CAP: usize = 10_000;

/// The algorithm a JWK is for: its `alg` if given, else what its key type implies. Only
/// RS256, ES256 and EdDSA are accepted; symmetric and other keys are not.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(implied),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(implied),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(implied),
        Some(_) => None,
    }
}

/// The usable keys of a JWKS, by `kid` (keys without one, or of other kinds, are skipped).
fn keys_of(set: &JwkSet, fetched: bool) -> HashMap<String, Arc<TrustedKey>> {
    set.keys
        .iter()
        .filter(|k| {
            k.common
                .public_key_use
                .as_ref()
                .is_none_or(|u| *u == PublicKeyUse::Signature)
        })
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let alg = algorithm_of(jwk)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, Arc::new(TrustedKey { alg, key, fetched })))
        })
        .collect()
}

impl AuthConfig {
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: RwLock::new(HashMap::new()),
            jwks: None,
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn insert(&mut self, keys: HashMap<String, Arc<TrustedKey>>) {
        if let Ok(mut k) = self.keys.write() {
            k.extend(keys);
        }
        self.forget_verified();
    }

    fn forget_verified(&self) {
        if let Ok(mut v) = self.verified.lock() {
            v.clear();
        }
    }

    pub fn with_ed25519_key(mut self, kid: &str, public_key: &[u8; 32]) -> Self {
        let key = TrustedKey {
            alg: Algorithm::EdDSA,
            key: DecodingKey::from_ed_der(public_key),
            fetched: false,
        };
        self.insert(HashMap::from([(kid.to_owned(), Arc::new(key))]));
        self
    }

    /// Trusts the keys of a JWKS document (a file the deployment provides). Fails if it holds
    /// no usable key: a typo must not leave the gateway trusting nothing, silently.
    pub fn with_jwks(mut self, jwks: &str) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys = keys_of(&set, false);
        if keys.is_empty() {
            return Err("the JWKS has no RS256, ES256 or EdDSA signing key with a kid".into());
        }
        self.insert(keys);
        Ok(self)
    }

    /// Fetches keys from the issuer's JWKS endpoint (see [`Self::refresh`]); a token naming an
    /// unknown `kid` triggers a fetch at most once per `min_interval`.
    /// Only https, or http to a loopback address ([`check_jwks_url`]); redirects are not
    /// followed, so an https endpoint cannot hand the fetch on to plain http.
    pub fn with_jwks_url(mut self, url: &str, min_interval: Duration) -> Result<Self, JwksError> {
        check_jwks_url(url)?;
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            .connect_timeout(JWKS_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| JwksError::Client(e.to_string()))?;
        self.jwks = Some(JwksSource {
            url: url.to_owned(),
            client,
            min_interval,
            last_fetch: tokio::sync::Mutex::new(None),
            fresh_since: Mutex::new(Instant::now()),
        });
        Ok(self)
    }

    /// How long ago the issuer's keys were last fetched (since configuration if never); `None`
    /// without a JWKS URL. Served as a gauge, so stale keys raise an alert: a key the issuer
    /// withdrew stays trusted until a fetch succeeds.
    pub fn jwks_age(&self) -> Option<Duration> {
        let src = self.jwks.as_ref()?;
        let since = *src.fresh_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(since.elapsed())
    }

    /// Fetches the JWKS now and replaces every fetched key with its keys (a key the issuer
    /// dropped is no longer trusted); configured keys stay. Returns how many keys it holds. A
    /// failure keeps the keys fetched before, counted in `atp_gateway_jwks_refresh_failures`.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let Some(src) = &self.jwks else {
            return Ok(0);
        };
        let fetched = fetch_jwks(src).await;
        if fetched.is_err() {
            atp_telemetry::metrics::metrics()
                .jwks_refresh_failures
                .add(1, &[]);
        }
        let fresh = keys_of(&fetched?, true);
        let n = fresh.len();
        let mut keys = self.keys.write().map_err(|_| JwksError::Poisoned)?;
        keys.retain(|_, k| !k.fetched);
        keys.extend(fresh);
        drop(keys);
        *src.fresh_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.forget_verified();
        Ok(n)
    }

    /// Whether a token naming an unknown `kid` may fetch the JWKS now (and if so, counts it).
    async fn may_refetch(&self) -> bool {
        let Some(src) = &self.jwks else {
            return false;
        };
        let mut last = src.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < src.min_interval) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn lookup(&self, kid: &str) -> Option<Arc<TrustedKey>> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, Problem> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let remembered = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(&digest).cloned());
        if let Some(claims) = remembered
            && now <= claims.exp + LEEWAY_SECS
            && claims.nbf.is_none_or(|nbf| nbf <= now + LEEWAY_SECS)
        {
            return Ok(claims);
        }
        let claims = self.verify_signed(token).await?;
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= VERIFIED_CAP {
                v.clear();
            }
            v.insert(digest, claims.clone());
        }
        Ok(claims)
    }

    async fn verify_signed(&self, token: &str) -> Result<Claims, Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the bearer token is not a JWT"))?;
        let kid = header
            .kid
            .ok_or_else(|| Problem::unauthorized("the token names no key (kid)"))?;
        let mut found = self.lookup(&kid);
        if found.is_none() && self.may_refetch().await {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "refreshing the token signing keys failed");
            }
            found = self.lookup(&kid);
        }
        let trusted =
            found.ok_or_else(|| Problem::unauthorized("the token's key is not trusted"))?;
        let alg = trusted.alg;
        if header.alg != alg {
            return Err(Problem::unauthorized(
                "the token's algorithm is not its key's",
            ));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &trusted.key, &v).map_err(|e| {
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

/// One fetch of the issuer's JWKS, read at most [`JWKS_MAX_BYTES`] (refused as soon as the
/// answer says or shows it is longer: nothing past the cap is buffered).
async fn fetch_jwks(src: &JwksSource) -> Result<JwkSet, JwksError> {
    let url = &src.url;
    let fetch = |e: reqwest::Error| JwksError::Fetch {
        url: url.clone(),
        reason: e.without_url().to_string(),
    };
    let mut resp = src
        .client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fetch)?;
    let too_large = || JwksError::TooLarge {
        url: url.clone(),
        limit: JWKS_MAX_BYTES,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(fetch)? {
        if body.len() + chunk.len() > JWKS_MAX_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| JwksError::NotJwks {
        url: url.clone(),
        reason: e.to_string(),
    })
}

/// Mints a token (the dev issuer: `atp token mint`, the dev stack and tests).
pub fn mint(key: &SigningKey, kid: &str, claims: &Claims) -> Result<String, String> {
    let der = atp_core::keys::encode_private_key(key).map_err(|e| e.to_string())?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .map_err(|e| e.to_string())
}

/// Runs a request on behalf of its caller's tenant, once authenticated: the gateway's database
/// connections then see that tenant's rows only (row-level security, ADR 0009).
pub async fn scope_tenant(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match req
        .extensions()
        .get::<Principal>()
        .map(|p| p.tenant.to_string())
    {
        Some(tenant) => atp_store::as_tenant(&tenant, next.run(req)).await,
        None => next.run(req).await,
    }
}

/// A feature refused for the tenant's edition.
pub fn edition_problem(e: &EditionError) -> Problem {
    Problem::new(ProblemCode::EditionRequired, e.to_string())
}

/// ATP's own tenants (`atp`, `atp-…`; ADR 0010) are read through tokens, never written or
/// administered: only the auditor role is accepted for them. An issuer that gives a customer
/// the tenant id `atp` with a producer or admin role (a sign-up that lets customers pick their
/// tenant name, say) must not let that customer write on, export or configure ATP's trail.
pub fn reserved_tenant_roles(
    tenant: &atp_core::TenantId,
    roles: &[Permission],
) -> Result<(), String> {
    if tenant.is_reserved() && roles.iter().any(|r| *r != Permission::Auditor) {
        return Err(format!(
            "tenant {tenant} is ATP's own: tokens for it may hold the auditor role only"
        ));
    }
    Ok(())
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub tenant: atp_core::TenantId,
    pub roles: Vec<Permission>,
    pub edition: Edition,
}

impl Principal {
    /// The route's edition gate: 403 `EDITION_REQUIRED` when the tenant's edition lacks it.
    /// The use-case behind the route checks again with the edition it is handed.
    pub fn require_feature(&self, feature: Feature) -> Result<(), Problem> {
        self.edition
            .require(feature)
            .map_err(|e| edition_problem(&e).tenant(self.tenant.as_str()))
    }

    pub fn require(&self, any_of: &[Permission]) -> Result<(), Problem> {
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
        // Verified once per request: the rate-limit layer keeps the principal it verified.
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
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
        let claims = auth.verify(token.trim()).await?;
        let tenant = atp_core::TenantId::new(claims.tenant_id)
            .map_err(|_| Problem::unauthorized("bad tenant"))?;
        // The subject is copied into ingress headers and records (`producer.auth`): a token is
        // refused, not trusted, when it could forge a header line.
        if claims.sub.is_empty()
            || claims.sub.len() > 256
            || claims.sub.chars().any(char::is_control)
        {
            return Err(Problem::unauthorized(
                "the token's sub claim must be 1 to 256 characters with no control characters",
            ));
        }
        // `webhook:` subjects are what the gateway attests for verified webhooks.
        if claims
            .sub
            .starts_with(atp_core::webhook::RESERVED_SUBJECT_PREFIX)
        {
            return Err(Problem::unauthorized(
                "the token's sub claim may not start with `webhook:` (reserved for webhooks)",
            ));
        }
        reserved_tenant_roles(&tenant, &claims.roles)
            .map_err(|e| Problem::forbidden(e).tenant(tenant.as_str()))?;
        // The request's span (and so its log lines and trace) names the caller's tenant.
        tracing::Span::current().record("tenant.id", tenant.as_str());
        tracing::Span::current().record("edition", claims.edition.as_str());
        Ok(Principal {
            subject: claims.sub,
            tenant,
            roles: claims.roles,
            edition: claims.edition,
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
            roles: vec![Permission::Auditor],
            edition: Edition::Standard,
        }
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_and_forgets_its_key() {
        let k = SigningKey::from_bytes(&[3u8; 32]);
        let mut cfg = AuthConfig::new("atp-dev", "atp")
            .with_ed25519_key("dev-1", &k.verifying_key().to_bytes());
        let token = mint(&k, "dev-1", &claims(600)).unwrap();
        cfg.verify(&token).await.unwrap();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Remembered: change its claims in memory to see the memory answer.
        let mut remembered = cfg.verified.lock().unwrap()[&digest].clone();
        remembered.sub = "from-memory".into();
        cfg.verified
            .lock()
            .unwrap()
            .insert(digest, remembered.clone());
        assert_eq!(cfg.verify(&token).await.unwrap().sub, "from-memory");
        // Past its expiry (and the leeway) memory does not answer: the token is checked again.
        remembered.exp = 1;
        cfg.verified.lock().unwrap().insert(digest, remembered);
        assert_eq!(cfg.verify(&token).await.unwrap().sub, "alice");
        // New trusted keys empty the memory.
        cfg.insert(HashMap::new());
        assert!(cfg.verified.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn tokens_verify_only_with_the_right_key_issuer_audience_and_time() {
        let k = SigningKey::from_bytes(&[3u8; 32]);
        let cfg = AuthConfig::new("atp-dev", "atp")
            .with_ed25519_key("dev-1", &k.verifying_key().to_bytes());
        let ok = mint(&k, "dev-1", &claims(600)).unwrap();
        assert_eq!(cfg.verify(&ok).await.unwrap().tenant_id, "acme");
        assert_eq!(
            cfg.verify(&mint(&k, "dev-1", &claims(-3600)).unwrap())
                .await
                .unwrap_err()
                .detail,
            "the token has expired"
        );
        assert!(
            cfg.verify(&mint(&k, "other", &claims(600)).unwrap())
                .await
                .is_err()
        );
        let mallory = SigningKey::from_bytes(&[4u8; 32]);
        assert!(
            cfg.verify(&mint(&mallory, "dev-1", &claims(600)).unwrap())
                .await
                .is_err()
        );
        let mut wrong_aud = claims(600);
        wrong_aud.aud = "elsewhere".into();
        assert!(
            cfg.verify(&mint(&k, "dev-1", &wrong_aud).unwrap())
                .await
                .is_err()
        );
        assert!(cfg.verify("not.a.jwt").await.is_err());
    }

    /// A fresh key pair made by `openssl` (as an issuer would), and its public JWK.
    fn issuer_key(alg: Algorithm, kid: &str) -> (EncodingKey, Jwk) {
        let args: &[&str] = match alg {
            Algorithm::RS256 => &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            _ => &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
        };
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed (the export tests need it too)");
        assert!(out.status.success());
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&out.stdout),
            _ => EncodingKey::from_ec_pem(&out.stdout),
        }
        .unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        (key, jwk)
    }

    fn sign(key: &EncodingKey, alg: Algorithm, kid: &str) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims(600), key).unwrap()
    }

    #[tokio::test]
    async fn rs256_and_es256_keys_from_a_jwks_verify_and_no_token_picks_its_own_algorithm() {
        let (rsa, rsa_jwk) = issuer_key(Algorithm::RS256, "rsa-1");
        let (ec, ec_jwk) = issuer_key(Algorithm::ES256, "ec-1");
        let jwks = serde_json::json!({ "keys": [rsa_jwk, ec_jwk] }).to_string();
        let cfg = AuthConfig::new("atp-dev", "atp").with_jwks(&jwks).unwrap();
        assert_eq!(
            cfg.verify(&sign(&rsa, Algorithm::RS256, "rsa-1"))
                .await
                .unwrap()
                .sub,
            "alice"
        );
        assert!(
            cfg.verify(&sign(&ec, Algorithm::ES256, "ec-1"))
                .await
                .is_ok()
        );
        // A token signed by one key but naming the other's kid.
        assert!(
            cfg.verify(&sign(&ec, Algorithm::ES256, "rsa-1"))
                .await
                .is_err()
        );
        // The classic confusion: HS256 keyed with the RSA key's public modulus.
        let AlgorithmParameters::RSA(p) = &rsa_jwk.algorithm else {
            unreachable!()
        };
        let forged = sign(
            &EncodingKey::from_secret(p.n.as_bytes()),
            Algorithm::HS256,
            "rsa-1",
        );
        assert_eq!(
            cfg.verify(&forged).await.unwrap_err().detail,
            "the token's algorithm is not its key's"
        );
        // Symmetric keys are never trusted from a JWKS.
        let oct = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#;
        assert!(AuthConfig::new("atp-dev", "atp").with_jwks(oct).is_err());
    }

    #[tokio::test]
    async fn keys_rotate_with_the_issuers_jwks() {
        let (a, a_jwk) = issuer_key(Algorithm::ES256, "a");
        let (b, b_jwk) = issuer_key(Algorithm::ES256, "b");
        let served = Arc::new(std::sync::Mutex::new(
            serde_json::json!({ "keys": [a_jwk] }),
        ));
        let jwks = served.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let body = jwks.lock().unwrap().clone();
                async move { axum::Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = AuthConfig::new("atp-dev", "atp")
            .with_jwks_url(&url, Duration::ZERO)
            .unwrap();

        // Fetched on first use.
        assert!(cfg.verify(&sign(&a, Algorithm::ES256, "a")).await.is_ok());
        // The issuer rotates to b: a token naming b fetches again, and a is no longer trusted.
        *served.lock().unwrap() = serde_json::json!({ "keys": [b_jwk] });
        assert!(cfg.verify(&sign(&b, Algorithm::ES256, "b")).await.is_ok());
        assert_eq!(
            cfg.verify(&sign(&a, Algorithm::ES256, "a"))
                .await
                .unwrap_err()
                .detail,
            "the token's key is not trusted"
        );
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let fetches = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = fetches.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { axum::Json(serde_json::json!({ "keys": [] })) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cfg = AuthConfig::new("atp-dev", "atp")
            .with_jwks_url(&url, Duration::from_secs(3600))
            .unwrap();
        let k = SigningKey::from_bytes(&[5u8; 32]);
        for i in 0..5 {
            let t = mint(&k, &format!("random-{i}"), &claims(600)).unwrap();
            assert!(cfg.verify(&t).await.is_err());
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn atps_own_tenant_is_read_only_through_tokens() {
        let atp = atp_core::TenantId::new("atp").unwrap();
        assert!(reserved_tenant_roles(&atp, &[Permission::Auditor]).is_ok());
        for roles in [
            &[Permission::Admin][..],
            &[Permission::Producer],
            &[Permission::Auditor, Permission::Admin],
        ] {
            assert!(reserved_tenant_roles(&atp, roles).is_err(), "{roles:?}");
        }
        let own = atp_core::TenantId::new("atp-ops").unwrap();
        assert!(reserved_tenant_roles(&own, &[Permission::Admin]).is_err());
        let acme = atp_core::TenantId::new("acme").unwrap();
        assert!(reserved_tenant_roles(&acme, &[Permission::Admin, Permission::Producer]).is_ok());
    }

    #[test]
    fn keys_are_fetched_over_https_or_from_loopback_only() {
        for ok in [
            "https://idp.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://127.8.9.1/jwks.json",
            "http://[::1]:9000/jwks.json",
        ] {
            assert!(check_jwks_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.com/jwks.json",
            "http://localhost/jwks.json",
            "http://10.0.0.5/jwks.json",
            "http://[::ffff:127.0.0.1]/jwks.json",
            "ftp://idp.example.com/jwks.json",
            "file:///etc/jwks.json",
            "not a url",
        ] {
            assert!(
                AuthConfig::new("i", "a")
                    .with_jwks_url(bad, Duration::ZERO)
                    .is_err(),
                "{bad}"
            );
        }
    }

    /// Serves `body` at `/jwks.json` on loopback, with or without a `Content-Length`.
    async fn serve_jwks(body: Vec<u8>, chunked: bool) -> String {
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let body = body.clone();
                async move {
                    if chunked {
                        // A stream: no Content-Length, so only counting while reading stops it.
                        let chunks = body
                            .chunks(4096)
                            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                            .collect::<Vec<_>>();
                        axum::body::Body::from_stream(futures::stream::iter(chunks))
                    } else {
                        axum::body::Body::from(body)
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn a_jwks_over_the_size_cap_is_refused_and_the_old_keys_age() {
        let (_, jwk) = issuer_key(Algorithm::ES256, "a");
        let small = serde_json::to_vec(&serde_json::json!({ "keys": [jwk] })).unwrap();
        let cfg = AuthConfig::new("atp-dev", "atp")
            .with_jwks_url(&serve_jwks(small, true).await, Duration::ZERO)
            .unwrap();
        assert_eq!(cfg.refresh().await.unwrap(), 1);
        assert!(cfg.jwks_age().unwrap() < Duration::from_secs(5));

        // Padding past the cap: whitespace is valid JSON, so only the cap refuses it.
        let mut big = b"{\"keys\": []".to_vec();
        big.resize(JWKS_MAX_BYTES + 1, b' ');
        big.push(b'}');
        for chunked in [false, true] {
            let cfg = AuthConfig::new("atp-dev", "atp")
                .with_jwks_url(&serve_jwks(big.clone(), chunked).await, Duration::ZERO)
                .unwrap();
            let err = cfg.refresh().await.unwrap_err();
            assert!(matches!(err, JwksError::TooLarge { .. }), "{err}");
        }
        // Never fetched: the age counts from configuration, and grows.
        let cfg = AuthConfig::new("atp-dev", "atp")
            .with_jwks_url("http://127.0.0.1:1/jwks.json", Duration::ZERO)
            .unwrap();
        let before = cfg.jwks_age().unwrap();
        assert!(cfg.refresh().await.is_err());
        assert!(
            cfg.jwks_age().unwrap() >= before,
            "a failure does not make keys fresh"
        );
        assert!(AuthConfig::new("i", "a").jwks_age().is_none());
    }
}
