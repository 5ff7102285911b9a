//! Temporary credentials, stateless: the session token carries its claims
//! (who issued it, which role, until when, an optional session policy)
//! under an HMAC of the server's session key, and the temporary secret is
//! derived from the key and the access key id, so the server stores
//! nothing per session and a token cannot be altered or made without the
//! key. Time is a parameter (sans-IO).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The temporary access key id (`ASIA...`).
    pub access_key_id: String,
    /// The long-term key that asked for the session (the session ends
    /// when that key is removed).
    pub issuer: String,
    /// The assumed role, if any (else the issuer's own policies apply).
    pub role: Option<String>,
    pub session_name: Option<String>,
    /// Expiry, Unix milliseconds.
    pub expires_ms: i64,
    /// A session policy (IAM JSON) that narrows the role's.
    pub policy: Option<String>,
    /// A fingerprint of the issuer's secret when the session was made
    /// ([`issuer_mark`]): rotating the secret ends the session.
    #[serde(default)]
    pub issuer_mark: String,
}

/// A short fingerprint of an issuing key's secret, for
/// [`SessionClaims::issuer_mark`].
pub fn issuer_mark(key: &[u8; 32], issuer_secret: &str) -> String {
    B64.encode(&mac(key, b"kinema-session-issuer\0", issuer_secret.as_bytes())[..12])
}

/// Why a session token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the security token included in the request is invalid")]
    Invalid,
    #[error("the security token included in the request is expired")]
    Expired,
}

type Mac256 = Hmac<Sha256>;

fn mac(key: &[u8; 32], label: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Mac256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The secret access key of a temporary access key id.
pub fn secret_of(key: &[u8; 32], access_key_id: &str) -> String {
    B64.encode(&mac(key, b"kinema-session-secret\0", access_key_id.as_bytes())[..30])
}

/// The session token for `claims`.
pub fn token(key: &[u8; 32], claims: &SessionClaims) -> String {
    // Serialising plain strings and integers cannot fail.
    let body = serde_json::to_vec(claims).unwrap_or_default();
    let tag = mac(key, b"kinema-session-token\0", &body);
    format!("{}.{}", B64.encode(&body), B64.encode(tag))
}

/// The claims of a session token made with `key`, if it is genuine and
/// not expired at `now_ms`.
pub fn open(key: &[u8; 32], token: &str, now_ms: i64) -> Result<SessionClaims, SessionError> {
    let (body, tag) = token.split_once('.').ok_or(SessionError::Invalid)?;
    let body = B64.decode(body).map_err(|_| SessionError::Invalid)?;
    let tag = B64.decode(tag).map_err(|_| SessionError::Invalid)?;
    let mut m = <Mac256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"kinema-session-token\0");
    m.update(&body);
    m.verify_slice(&tag).map_err(|_| SessionError::Invalid)?;
    let claims: SessionClaims = serde_json::from_slice(&body).map_err(|_| SessionError::Invalid)?;
    if now_ms >= claims.expires_ms {
        return Err(SessionError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> SessionClaims {
        SessionClaims {
            access_key_id: "ASIAKINEMA1".into(),
            issuer: "AKIDADMIN".into(),
            role: Some("camera".into()),
            session_name: Some("front-door".into()),
            expires_ms: 2_000,
            policy: None,
            issuer_mark: String::new(),
        }
    }

    #[test]
    fn tokens_open_until_they_expire_and_only_with_their_key() {
        let key = [1; 32];
        let t = token(&key, &claims());
        assert_eq!(open(&key, &t, 1_999), Ok(claims()));
        assert_eq!(open(&key, &t, 2_000), Err(SessionError::Expired));
        assert_eq!(open(&[2; 32], &t, 0), Err(SessionError::Invalid));
        // Any change to the claims breaks the tag.
        let (body, tag) = t.split_once('.').unwrap();
        let mut longer = claims();
        longer.expires_ms = i64::MAX;
        let forged_body = B64.encode(serde_json::to_vec(&longer).unwrap());
        assert_ne!(forged_body, body);
        assert_eq!(
            open(&key, &format!("{forged_body}.{tag}"), 0),
            Err(SessionError::Invalid)
        );
        assert_eq!(open(&key, "garbage", 0), Err(SessionError::Invalid));
        assert_eq!(open(&key, "a.b.c", 0), Err(SessionError::Invalid));
    }

    #[test]
    fn secrets_are_derived_per_key_id() {
        let key = [1; 32];
        assert_eq!(secret_of(&key, "ASIA1"), secret_of(&key, "ASIA1"));
        assert_ne!(secret_of(&key, "ASIA1"), secret_of(&key, "ASIA2"));
        assert_ne!(secret_of(&key, "ASIA1"), secret_of(&[2; 32], "ASIA1"));
        assert_eq!(secret_of(&key, "ASIA1").len(), 40);
    }
}
