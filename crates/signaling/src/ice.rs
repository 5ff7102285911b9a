//! TURN credentials in the "TURN REST API" style (draft-uberti-behave-turn-rest,
//! as coturn's `use-auth-secret` implements it): the username is
//! `<expiry unix seconds>:<client id>` and the password is
//! `base64(HMAC-SHA1(shared secret, username))`. GetIceServerConfig vends
//! them; the embedded TURN server (and coturn) accept them until expiry.

use base64::Engine as _;
use hmac::{Hmac, Mac};

/// A username and password for a TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
}

/// Credentials for `client_id` valid from `now_s` for `ttl_s` seconds.
pub fn turn_credentials(secret: &str, client_id: &str, now_s: u64, ttl_s: u64) -> TurnCredentials {
    let username = format!("{}:{client_id}", now_s.saturating_add(ttl_s));
    TurnCredentials {
        password: turn_password(secret, &username),
        username,
    }
}

/// The password the shared secret gives `username`.
pub fn turn_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `username` is a TURN REST username that has not expired at
/// `now_s` (the expiry is the part before the first `:`).
pub fn turn_username_current(username: &str, now_s: u64) -> bool {
    let expiry = username.split(':').next().unwrap_or_default();
    expiry.parse::<u64>().is_ok_and(|e| e > now_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let c = turn_credentials("north", "viewer-1", 1_700_000_000, 300);
        assert_eq!(c.username, "1700000300:viewer-1");
        // Reference: python3 -c "import hmac,hashlib,base64; print(base64.b64encode(
        //   hmac.new(b'north', b'1700000300:viewer-1', hashlib.sha1).digest()).decode())"
        assert_eq!(c.password, "2gUv8OR95TurKDk9eIIqXwAf3Ac=");
        assert!(turn_username_current(&c.username, 1_700_000_299));
        assert!(!turn_username_current(&c.username, 1_700_000_300));
        assert!(!turn_username_current("viewer-1", 0));
        assert_ne!(turn_password("south", &c.username), c.password);
    }
}
