//! AWS Signature Version 4 verification, for requests signed in headers and
//! for presigned URLs.
//!
//! Verification recomputes the signature with `aws-sigv4` (the AWS SDK for
//! Rust's signer) over exactly the headers the client says it signed, with
//! the client's own date, region and service from its credential scope, and
//! compares in constant time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use http::HeaderMap;
use kinema_iam::session::SessionClaims;
use kinema_iam::{Policies, Policy};

use crate::sts::Sessions;
use subtle::ConstantTimeEq;

/// Largest clock difference accepted between client and server.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Largest validity of a presigned URL (the SigV4 limit).
pub const MAX_PRESIGN_EXPIRES: u64 = 7 * 24 * 3600;

pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("request is not signed: missing {0}")]
    Missing(&'static str),
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("the security token included in the request is invalid: unknown access key")]
    UnknownKey,
    #[error("the request signature we calculated does not match the signature you provided")]
    BadSignature,
    #[error("signature expired: the request date is more than 15 minutes from the server's time")]
    Stale,
    #[error("the presigned URL has expired")]
    Expired,
    #[error(
        "credential should be scoped to a valid region ({0}) and service (kinesisvideo, kinesis or sts)"
    )]
    Scope(String),
    #[error("the security token included in the request is expired")]
    TokenExpired,
    #[error("the security token included in the request is invalid")]
    TokenInvalid,
}

/// The services whose signatures Kinema accepts.
pub const SERVICES: &[&str] = &["kinesisvideo", "kinesis", "sts"];

/// Who signed a request, once verified, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
    pub policies: Arc<Policies>,
    /// For temporary credentials: what their session token says.
    pub session: Option<SessionClaims>,
}

/// What an access key may do.
#[derive(Debug, Clone)]
pub enum KeyPolicies {
    /// Resolved once (keys of the configuration file).
    Fixed(Arc<Policies>),
    /// Names of policies in the store's registry, resolved per request
    /// (keys made at run time; a changed policy applies at once).
    Named(Vec<String>),
}

/// One access key: its secret, its policies, and whether it was made at
/// run time (then the API may rotate or delete it).
#[derive(Debug, Clone)]
pub struct Key {
    pub secret: String,
    pub policies: KeyPolicies,
    pub managed: bool,
}

/// The access keys and named policies, shared by every clone; changed at
/// run time by the admin API.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    keys: Arc<std::sync::RwLock<HashMap<String, Key>>>,
    /// Named policies (`[policies.*]` and those put at run time), and
    /// whether each was put at run time.
    policies: Arc<std::sync::RwLock<std::collections::BTreeMap<String, (Policy, bool)>>>,
    /// The region signatures must be scoped to, with one of [`SERVICES`]
    /// (`None`: any scope, for tests of the signature itself).
    region: Option<String>,
    /// Temporary credentials (`ASIA...` keys with a session token).
    sessions: Option<Arc<Sessions>>,
    /// Serialises run-time changes of keys and policies and their saves;
    /// holds the revision of the saved document they came from.
    pub(crate) saved: Arc<tokio::sync::Mutex<u64>>,
}

impl KeyStore {
    /// Keys that may do everything.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::with_policies(pairs.into_iter().map(|(id, secret)| {
            let all = Policies {
                identity: vec![Policy::allow_all()],
                session: None,
            };
            (id, secret, all)
        }))
    }

    /// Keys with their policies.
    pub fn with_policies(keys: impl IntoIterator<Item = (String, String, Policies)>) -> Self {
        let keys = keys
            .into_iter()
            .map(|(id, secret, policies)| {
                (
                    id,
                    Key {
                        secret,
                        policies: KeyPolicies::Fixed(Arc::new(policies)),
                        managed: false,
                    },
                )
            })
            .collect();
        KeyStore {
            keys: Arc::new(std::sync::RwLock::new(keys)),
            ..KeyStore::default()
        }
    }

    /// Registers the configuration file's named policies.
    pub fn with_named_policies(self, named: impl IntoIterator<Item = (String, Policy)>) -> Self {
        kinema_core::sync::write(&self.policies)
            .extend(named.into_iter().map(|(n, p)| (n, (p, false))));
        self
    }

    /// The key `id`, if it exists.
    pub fn key(&self, id: &str) -> Option<Key> {
        kinema_core::sync::read(&self.keys).get(id).cloned()
    }

    /// Adds or replaces a key.
    pub fn put_key(&self, id: &str, key: Key) {
        kinema_core::sync::write(&self.keys).insert(id.to_string(), key);
    }

    /// Removes a key; whether it existed.
    pub fn remove_key(&self, id: &str) -> bool {
        kinema_core::sync::write(&self.keys).remove(id).is_some()
    }

    /// Every key's id, its policy names (`None`: fixed at start) and
    /// whether it was made at run time. Never the secrets.
    pub fn list_keys(&self) -> Vec<(String, Option<Vec<String>>, bool)> {
        let mut out: Vec<_> = kinema_core::sync::read(&self.keys)
            .iter()
            .map(|(id, k)| {
                let names = match &k.policies {
                    KeyPolicies::Named(n) => Some(n.clone()),
                    KeyPolicies::Fixed(_) => None,
                };
                (id.clone(), names, k.managed)
            })
            .collect();
        out.sort();
        out
    }

    /// Keys made at run time (for saving).
    pub fn managed_keys(&self) -> Vec<(String, Key)> {
        let mut out: Vec<_> = kinema_core::sync::read(&self.keys)
            .iter()
            .filter(|(_, k)| k.managed)
            .map(|(id, k)| (id.clone(), k.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A named policy, and whether it was put at run time.
    pub fn policy(&self, name: &str) -> Option<(Policy, bool)> {
        kinema_core::sync::read(&self.policies).get(name).cloned()
    }

    pub fn put_policy(&self, name: &str, policy: Policy, managed: bool) {
        kinema_core::sync::write(&self.policies).insert(name.to_string(), (policy, managed));
    }

    pub fn remove_policy(&self, name: &str) -> bool {
        kinema_core::sync::write(&self.policies)
            .remove(name)
            .is_some()
    }

    /// Policy names, with whether each was put at run time.
    pub fn list_policies(&self) -> Vec<(String, bool)> {
        kinema_core::sync::read(&self.policies)
            .iter()
            .map(|(n, (_, m))| (n.clone(), *m))
            .collect()
    }

    fn resolve(&self, policies: &KeyPolicies) -> Arc<Policies> {
        match policies {
            KeyPolicies::Fixed(p) => p.clone(),
            KeyPolicies::Named(names) => {
                let registry = kinema_core::sync::read(&self.policies);
                // A name no longer defined grants nothing.
                Arc::new(Policies {
                    identity: names
                        .iter()
                        .filter_map(|n| registry.get(n).map(|(p, _)| p.clone()))
                        .collect(),
                    session: None,
                })
            }
        }
    }

    /// Accepts temporary credentials issued by `sessions`.
    pub fn with_sessions(mut self, sessions: Sessions) -> Self {
        self.sessions = Some(Arc::new(sessions));
        self
    }

    pub fn sessions(&self) -> Option<&Sessions> {
        self.sessions.as_deref()
    }

    /// The secret and policies of `id`: a long-term key, or a temporary one
    /// whose session `token` is genuine, unexpired and from a key that
    /// still exists.
    fn credentials(
        &self,
        id: &str,
        token: Option<&str>,
        now: SystemTime,
    ) -> Result<(String, Arc<Policies>, Option<SessionClaims>), AuthError> {
        if let Some(k) = self.key(id) {
            return Ok((k.secret.clone(), self.resolve(&k.policies), None));
        }
        let (Some(sessions), Some(token)) = (&self.sessions, token) else {
            return Err(AuthError::UnknownKey);
        };
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let claims =
            kinema_iam::session::open(&sessions.key, token, now_ms).map_err(|e| match e {
                kinema_iam::session::SessionError::Expired => AuthError::TokenExpired,
                kinema_iam::session::SessionError::Invalid => AuthError::TokenInvalid,
            })?;
        if claims.access_key_id != id {
            return Err(AuthError::TokenInvalid);
        }
        // A session ends with the key that made it (revocation).
        let issuer = self.key(&claims.issuer).ok_or(AuthError::TokenInvalid)?;
        // A rotated issuer secret ends its sessions too.
        if kinema_iam::session::issuer_mark(&sessions.key, &issuer.secret) != claims.issuer_mark {
            return Err(AuthError::TokenInvalid);
        }
        let policies = sessions
            .policies_of(&claims, Some(self.resolve(&issuer.policies)))
            .ok_or(AuthError::TokenInvalid)?;
        let secret = kinema_iam::session::secret_of(&sessions.key, id);
        Ok((secret, Arc::new(policies), Some(claims)))
    }

    /// Accepts only signatures scoped to `region` (the server's).
    pub fn in_region(mut self, region: &str) -> Self {
        self.region = Some(region.to_string());
        self
    }

    /// Whether a credential scope names this server's region and one of
    /// the services it speaks (a signature made for another service or
    /// region is not one for Kinema).
    fn check_scope(&self, region: &str, service: &str) -> Result<(), AuthError> {
        match &self.region {
            Some(r) if r != region || !SERVICES.contains(&service) => {
                Err(AuthError::Scope(r.clone()))
            }
            _ => Ok(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        kinema_core::sync::read(&self.keys).is_empty()
    }
}

/// The parts of a request verification needs.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    pub payload_hash: &'a str,
}

struct Scope<'a> {
    key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
}

fn parse_credential(cred: &str) -> Result<Scope<'_>, AuthError> {
    let mut it = cred.split('/');
    let (Some(key), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(AuthError::Malformed(
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    Ok(Scope {
        key,
        date,
        region,
        service,
    })
}

/// Parses `YYYYMMDD'T'HHMMSS'Z'`.
pub fn parse_amz_date(s: &str) -> Result<SystemTime, AuthError> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = time::PrimitiveDateTime::parse(s, format)
        .map_err(|_| AuthError::Malformed("X-Amz-Date"))?;
    Ok(dt.assume_utc().into())
}

fn check_skew(t: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    let skew = now
        .duration_since(t)
        .or_else(|_| t.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        Err(AuthError::Stale)
    } else {
        Ok(())
    }
}

/// A query-string value decoded: `%XX` escapes and `+` as a space.
pub(crate) fn decode_query_value(v: &str) -> String {
    percent_decode(v, true)
}

/// Percent-decoding: each valid `%XX` becomes its byte (an invalid or cut
/// escape stays as it is), `+` becomes a space where `plus_as_space`
/// (query strings and forms, not path segments).
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of a query string or form body, decoded, in order
/// (repeated keys kept).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_query_value(k), decode_query_value(v))
        })
        .collect()
}

/// Verifies a request signed in its `Authorization` header, or presigned in
/// its query string. `now` is the server's wall clock.
pub fn verify(
    keys: &KeyStore,
    req: &RequestParts<'_>,
    now: SystemTime,
) -> Result<Principal, AuthError> {
    check(keys, req, now, true)
}

/// Everything [`verify`] checks but the signature itself: the form of the
/// credential, a known key, the date and expiry. For deciding whether a
/// request whose body must be read before its signature can be checked is
/// worth reading at all.
pub fn precheck(
    keys: &KeyStore,
    req: &RequestParts<'_>,
    now: SystemTime,
) -> Result<Principal, AuthError> {
    check(keys, req, now, false)
}

fn check(
    keys: &KeyStore,
    req: &RequestParts<'_>,
    now: SystemTime,
    signature: bool,
) -> Result<Principal, AuthError> {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presigned = req
        .query
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Signature=")));
    match (auth, presigned) {
        (Some(auth), _) => verify_header(keys, req, auth, now, signature),
        (None, true) => verify_presigned(keys, req, now, signature),
        (None, false) => Err(AuthError::Missing(
            "the Authorization header or a presigned query",
        )),
    }
}

fn verify_header(
    keys: &KeyStore,
    req: &RequestParts<'_>,
    auth: &str,
    now: SystemTime,
    check_signature: bool,
) -> Result<Principal, AuthError> {
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or(AuthError::Malformed("only AWS4-HMAC-SHA256 is supported"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let scope = parse_credential(credential.ok_or(AuthError::Malformed("Credential"))?)?;
    keys.check_scope(scope.region, scope.service)?;
    let signed_headers = signed_headers.ok_or(AuthError::Malformed("SignedHeaders"))?;
    if !signed_headers.split(';').any(|h| h == "host") {
        return Err(AuthError::Malformed("SignedHeaders must include host"));
    }
    let signature = signature.ok_or(AuthError::Malformed("Signature"))?;
    let date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing("X-Amz-Date"))?;
    let time = parse_amz_date(date)?;
    if scope.date.len() != 8 || date.get(..8) != Some(scope.date) {
        return Err(AuthError::Malformed(
            "credential scope date differs from X-Amz-Date",
        ));
    }
    check_skew(time, now)?;
    let token = req
        .headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    let (secret, policies, session) = keys.credentials(scope.key, token, now)?;
    let secret = secret.as_str();
    if check_signature {
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(Vec::new());
        settings.signature_location = SignatureLocation::Headers;
        let query = req.query.map(Cow::Borrowed);
        let expected = compute(req, query, signed_headers, &scope, secret, time, settings)?;
        compare(&expected, signature)?;
    }
    Ok(Principal {
        access_key_id: scope.key.to_string(),
        region: scope.region.to_string(),
        service: scope.service.to_string(),
        policies,
        session,
    })
}

fn verify_presigned(
    keys: &KeyStore,
    req: &RequestParts<'_>,
    now: SystemTime,
    check_signature: bool,
) -> Result<Principal, AuthError> {
    let query = req.query.unwrap_or_default();
    let mut params: HashMap<&str, String> = HashMap::new();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "X-Amz-Algorithm"
            | "X-Amz-Credential"
            | "X-Amz-Date"
            | "X-Amz-Expires"
            | "X-Amz-SignedHeaders"
            | "X-Amz-Signature" => {
                params.insert(k, decode_query_value(v));
            }
            _ => rest.push(pair),
        }
    }
    if params.get("X-Amz-Algorithm").map(String::as_str) != Some("AWS4-HMAC-SHA256") {
        return Err(AuthError::Malformed(
            "X-Amz-Algorithm must be AWS4-HMAC-SHA256",
        ));
    }
    let credential = params
        .get("X-Amz-Credential")
        .ok_or(AuthError::Malformed("X-Amz-Credential"))?;
    let scope = parse_credential(credential)?;
    keys.check_scope(scope.region, scope.service)?;
    let date = params
        .get("X-Amz-Date")
        .ok_or(AuthError::Malformed("X-Amz-Date"))?;
    let time = parse_amz_date(date)?;
    let expires: u64 = params
        .get("X-Amz-Expires")
        .and_then(|e| e.parse().ok())
        .filter(|e| *e >= 1 && *e <= MAX_PRESIGN_EXPIRES)
        .ok_or(AuthError::Malformed("X-Amz-Expires"))?;
    let signed_headers = params
        .get("X-Amz-SignedHeaders")
        .ok_or(AuthError::Malformed("X-Amz-SignedHeaders"))?;
    let signature = params
        .get("X-Amz-Signature")
        .ok_or(AuthError::Malformed("X-Amz-Signature"))?;
    if time > now + MAX_SKEW {
        return Err(AuthError::Stale);
    }
    if now > time + Duration::from_secs(expires) {
        return Err(AuthError::Expired);
    }
    let token = rest
        .iter()
        .find_map(|p| p.strip_prefix("X-Amz-Security-Token="))
        .map(decode_query_value);
    let (secret, policies, session) = keys.credentials(scope.key, token.as_deref(), now)?;
    let secret = secret.as_str();
    if check_signature {
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(Vec::new());
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(expires));
        let remaining = (!rest.is_empty()).then(|| Cow::Owned(rest.join("&")));
        let expected = compute(
            req,
            remaining,
            signed_headers,
            &scope,
            secret,
            time,
            settings,
        )?;
        compare(&expected, signature)?;
    }
    Ok(Principal {
        access_key_id: scope.key.to_string(),
        region: scope.region.to_string(),
        service: scope.service.to_string(),
        policies,
        session,
    })
}

fn compare(expected: &str, given: &str) -> Result<(), AuthError> {
    if expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::BadSignature)
    }
}

fn compute(
    req: &RequestParts<'_>,
    query: Option<Cow<'_, str>>,
    signed_headers: &str,
    scope: &Scope<'_>,
    secret: &str,
    time: SystemTime,
    settings: SigningSettings,
) -> Result<String, AuthError> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing("Host"))?;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in signed_headers.split(';').filter(|n| !n.is_empty()) {
        if name == "x-amz-date" && settings.signature_location == SignatureLocation::Headers {
            // The signer adds X-Amz-Date itself from `time`.
            continue;
        }
        let values: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            return Err(AuthError::Malformed(
                "a signed header is missing from the request",
            ));
        }
        for v in values {
            headers.push((name, v));
        }
    }
    let uri = match &query {
        Some(q) => format!("http://{host}{}?{q}", req.path),
        None => format!("http://{host}{}", req.path),
    };
    let identity = Credentials::new(scope.key, secret, None, None, "kinema").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| AuthError::Malformed("signing parameters"))?
        .into();
    let body = if req.payload_hash == UNSIGNED_PAYLOAD {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Precomputed(req.payload_hash.to_string())
    };
    let signable = SignableRequest::new(req.method, uri, headers.into_iter(), body)
        .map_err(|_| AuthError::Malformed("request cannot be canonicalised"))?;
    let output = sign(signable, &params)
        .map_err(|_| AuthError::Malformed("request cannot be canonicalised"))?;
    Ok(output.signature().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the AWS General Reference ("Signature Version 4 test
    /// suite", get-vanilla): a GET of `/` signed for service `service` in
    /// `us-east-1` at 20150830T123600Z.
    #[test]
    fn verifies_the_aws_test_suite_vanilla_request() {
        let keys = KeyStore::new([(
            "AKIDEXAMPLE".to_string(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
        )]);
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
                .parse()
                .unwrap(),
        );
        let req = RequestParts {
            method: "GET",
            path: "/",
            query: None,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let now = parse_amz_date("20150830T123600Z").unwrap();
        let p = verify(&keys, &req, now).unwrap();
        assert_eq!(p.service, "service");

        // The same request with a different secret, key, body or clock fails.
        let other = KeyStore::new([("AKIDEXAMPLE".to_string(), "wrong".to_string())]);
        assert_eq!(verify(&other, &req, now), Err(AuthError::BadSignature));
        assert_eq!(
            verify(&KeyStore::default(), &req, now),
            Err(AuthError::UnknownKey)
        );
        let tampered = RequestParts {
            payload_hash: "00",
            ..req
        };
        assert_eq!(verify(&keys, &tampered, now), Err(AuthError::BadSignature));
        let late = now + Duration::from_secs(16 * 60);
        assert_eq!(verify(&keys, &req, late), Err(AuthError::Stale));
    }

    /// A URL presigned by the AWS SDK's signer verifies until it expires,
    /// and not with another secret or a changed query.
    #[test]
    fn only_this_servers_region_and_services_are_accepted() {
        let keys = KeyStore::new([("AKID".to_string(), "s".to_string())]).in_region("us-east-1");
        assert_eq!(keys.check_scope("us-east-1", "kinesisvideo"), Ok(()));
        assert_eq!(keys.check_scope("us-east-1", "kinesis"), Ok(()));
        assert!(keys.check_scope("eu-west-1", "kinesisvideo").is_err());
        assert!(keys.check_scope("us-east-1", "s3").is_err());
        let any = KeyStore::new([("AKID".to_string(), "s".to_string())]);
        assert_eq!(any.check_scope("eu-west-1", "service"), Ok(()));
    }

    #[test]
    fn presigned_urls_verify_until_they_expire() {
        let keys = KeyStore::new([("AKIDP".to_string(), "presign-secret".to_string())]);
        let signed_at = SystemTime::now();
        let identity = Credentials::new("AKIDP", "presign-secret", None, None, "test").into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(300));
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-west-2")
            .name("kinesisvideo")
            .time(signed_at)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let url = "http://127.0.0.1:4566/?X-Amz-ChannelARN=arn%3Aaws%3Akinesisvideo%3Aus-west-2%3A1%3Achannel%2Fc%2F1";
        let host = [("host", "127.0.0.1:4566")];
        let signable =
            SignableRequest::new("GET", url, host.into_iter(), SignableBody::Bytes(&[])).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut query = url.split_once('?').unwrap().1.to_string();
        for (k, v) in instructions.params() {
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            query.push_str(&format!("&{k}={v}"));
        }
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:4566".parse().unwrap());
        let req = |q: &str| -> Result<Principal, AuthError> {
            verify(
                &keys,
                &RequestParts {
                    method: "GET",
                    path: "/",
                    query: Some(q),
                    headers: &headers,
                    payload_hash: EMPTY_SHA256,
                },
                signed_at + Duration::from_secs(10),
            )
        };
        let p = req(&query).unwrap();
        assert_eq!(
            (p.region.as_str(), p.service.as_str()),
            ("us-west-2", "kinesisvideo")
        );
        let tampered = query.replace("channel%2Fc%2F1", "channel%2Fc%2F2");
        assert_eq!(req(&tampered), Err(AuthError::BadSignature));
        let late = verify(
            &keys,
            &RequestParts {
                method: "GET",
                path: "/",
                query: Some(&query),
                headers: &headers,
                payload_hash: EMPTY_SHA256,
            },
            signed_at + Duration::from_secs(301),
        );
        assert_eq!(late, Err(AuthError::Expired));
    }

    #[test]
    fn unsigned_requests_are_refused() {
        let headers = HeaderMap::new();
        let req = RequestParts {
            method: "POST",
            path: "/",
            query: None,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        assert!(matches!(
            verify(&KeyStore::default(), &req, SystemTime::now()),
            Err(AuthError::Missing(_))
        ));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            decode_query_value("AKID%2F20150830%2Fus-east-1"),
            "AKID/20150830/us-east-1"
        );
        assert_eq!(decode_query_value("a%2"), "a%2");
        assert_eq!(percent_decode("a+b%20c%zz", true), "a b c%zz");
        assert_eq!(
            percent_decode("a+b%20c", false),
            "a+b c",
            "a path keeps '+'"
        );
        assert_eq!(
            query_pairs("X=1&&Y=a%2Fb&Z&X=2"),
            [("X", "1"), ("Y", "a/b"), ("Z", ""), ("X", "2")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
