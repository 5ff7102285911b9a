//! Identities at run time: access keys made, rotated and deleted, and
//! named policies put and deleted, by an administrator through the JSON
//! API (`kinema keys`, `kinema policies`), without a restart. Keys and
//! policies of the configuration file are listed but not changed here.
//!
//! What is made at run time is saved in the `identities` metadata
//! document with each secret sealed (ChaCha20-Poly1305 under a key
//! derived from the server's key file), so the document alone reveals no
//! secret. A secret is shown once, when it is made; it is never logged.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kinema_iam::Policy;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::sigv4::{Key, KeyPolicies, KeyStore};
use crate::{ApiError, AppState};

pub const META_DOC: &str = "identities";

type St = State<Arc<AppState>>;

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    keys: Vec<SavedKey>,
    /// Policy name to IAM JSON.
    policies: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct SavedKey {
    id: String,
    /// base64(nonce || ciphertext) of the secret.
    sealed_secret: String,
    policies: Vec<String>,
}

/// The key that seals saved secrets, derived from the server's key.
fn sealing_key(server_key: &[u8; 32]) -> LessSafeKey {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(server_key).expect("any key length");
    m.update(b"kinema-secret-sealing");
    let k = m.finalize().into_bytes();
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("a 32-byte key"))
}

fn seal(key: &LessSafeKey, id: &str, secret: &str) -> String {
    let nonce = crate::sts::random_bytes::<12>();
    let mut data = secret.as_bytes().to_vec();
    // Sealing in place cannot fail for a buffer this size.
    let _ = key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(id.as_bytes()),
        &mut data,
    );
    let mut out = nonce.to_vec();
    out.extend(data);
    base64::engine::general_purpose::STANDARD.encode(out)
}

fn open(key: &LessSafeKey, id: &str, sealed: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .ok()?;
    if raw.len() < 12 {
        return None;
    }
    let (nonce, rest) = raw.split_at(12);
    let mut data = rest.to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::from(id.as_bytes()),
            &mut data,
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// Loads the keys and policies saved by earlier runs (in a cluster: by
/// any node) into `keys`, replacing the ones made at run time.
pub async fn load(
    keys: &KeyStore,
    engine: &kinema_engine::Engine,
    server_key: &[u8; 32],
) -> Result<(), String> {
    let mut revision = keys.saved.lock().await;
    let (saved, rev) = engine
        .load_shared_document::<Saved>(META_DOC)
        .await
        .map_err(|e| e.to_string())?;
    let saved = saved.unwrap_or_default();
    let sealing = sealing_key(server_key);
    // Parse everything before changing anything.
    let mut policies = Vec::new();
    for (name, json) in &saved.policies {
        let policy = Policy::parse(json).map_err(|e| format!("saved policy {name}: {e}"))?;
        policies.push((name.clone(), policy));
    }
    for (id, _) in keys.managed_keys() {
        if !saved.keys.iter().any(|k| k.id == id) {
            keys.remove_key(&id);
        }
    }
    for (name, managed) in keys.list_policies() {
        if managed && !saved.policies.iter().any(|(n, _)| *n == name) {
            keys.remove_policy(&name);
        }
    }
    for (name, policy) in policies {
        keys.put_policy(&name, policy, true);
    }
    for k in saved.keys {
        let secret = open(&sealing, &k.id, &k.sealed_secret)
            .ok_or_else(|| format!("the saved secret of {} cannot be opened", k.id))?;
        keys.put_key(
            &k.id,
            Key {
                secret,
                policies: KeyPolicies::Named(k.policies),
                managed: true,
            },
        );
    }
    *revision = rev;
    Ok(())
}

/// Saves the keys and policies made at run time. The caller holds
/// `st.keys.saved` (the revision they were loaded or last saved at) across
/// its change and this save: when another node saved first, the save is
/// refused and the caller undoes its change.
async fn save(st: &AppState, revision: &mut u64) -> Result<(), ApiError> {
    let Some(server_key) = st.keys.sessions().map(|s| s.key) else {
        return Err(ApiError::internal());
    };
    let sealing = sealing_key(&server_key);
    let saved = Saved {
        keys: st
            .keys
            .managed_keys()
            .into_iter()
            .map(|(id, k)| SavedKey {
                sealed_secret: seal(&sealing, &id, &k.secret),
                policies: match k.policies {
                    KeyPolicies::Named(n) => n,
                    KeyPolicies::Fixed(_) => Vec::new(),
                },
                id,
            })
            .collect(),
        policies: st
            .keys
            .list_policies()
            .into_iter()
            .filter(|(_, managed)| *managed)
            .filter_map(|(name, _)| {
                let (p, _) = st.keys.policy(&name)?;
                Some((name, p.source().to_string()))
            })
            .collect(),
    };
    *revision = st
        .engine
        .save_shared_document(META_DOC, &saved, *revision)
        .await?;
    Ok(())
}

fn new_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(crate::sts::random_bytes::<30>())
}

fn check_policies(st: &AppState, names: &[String]) -> Result<(), ApiError> {
    match names.iter().find(|n| st.keys.policy(n).is_none()) {
        Some(missing) => Err(ApiError::not_found(format!("no policy named {missing}"))),
        None => Ok(()),
    }
}

fn created(v: serde_json::Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

#[derive(Deserialize)]
struct CreateKey {
    #[serde(default)]
    policies: Vec<String>,
}

/// `POST /v1/keys {"policies": [...]}`: a new key; its secret is in this
/// answer only.
pub(crate) async fn create_key(State(st): St, body: Bytes) -> Result<Response, ApiError> {
    let input: CreateKey = crate::video::parse(&body)?;
    let mut saved = st.keys.saved.lock().await;
    check_policies(&st, &input.policies)?;
    let id = crate::sts::key_id("AKID");
    let secret = new_secret();
    st.keys.put_key(
        &id,
        Key {
            secret: secret.clone(),
            policies: KeyPolicies::Named(input.policies.clone()),
            managed: true,
        },
    );
    if let Err(e) = save(&st, &mut saved).await {
        st.keys.remove_key(&id);
        return Err(e);
    }
    Ok(created(json!({
        "AccessKeyId": id,
        "SecretAccessKey": secret,
        "Policies": input.policies,
    })))
}

/// `GET /v1/keys`: every key, without secrets.
pub(crate) async fn list_keys(State(st): St) -> Response {
    let keys: Vec<_> = st
        .keys
        .list_keys()
        .into_iter()
        .map(|(id, policies, managed)| {
            json!({
                "AccessKeyId": id,
                "Policies": policies,
                "Origin": if managed { "api" } else { "config" },
            })
        })
        .collect();
    created(json!({ "Keys": keys }))
}

fn managed_key(st: &AppState, id: &str) -> Result<Key, ApiError> {
    let key = st
        .keys
        .key(id)
        .ok_or_else(|| ApiError::not_found(format!("no access key {id}")))?;
    if !key.managed {
        return Err(ApiError::invalid(format!(
            "{id} is defined in the configuration file; change it there"
        )));
    }
    Ok(key)
}

/// `DELETE /v1/keys/{id}`: the key stops working at once, and so do the
/// temporary credentials it made.
pub(crate) async fn delete_key(
    State(st): St,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut saved = st.keys.saved.lock().await;
    let key = managed_key(&st, &id)?;
    st.keys.remove_key(&id);
    if let Err(e) = save(&st, &mut saved).await {
        st.keys.put_key(&id, key);
        return Err(e);
    }
    Ok(created(json!({ "AccessKeyId": id })))
}

/// `POST /v1/keys/{id}/rotate`: a new secret; the old one stops working.
pub(crate) async fn rotate_key(
    State(st): St,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut saved = st.keys.saved.lock().await;
    let old = managed_key(&st, &id)?;
    let secret = new_secret();
    st.keys.put_key(
        &id,
        Key {
            secret: secret.clone(),
            ..old.clone()
        },
    );
    if let Err(e) = save(&st, &mut saved).await {
        st.keys.put_key(&id, old);
        return Err(e);
    }
    Ok(created(
        json!({ "AccessKeyId": id, "SecretAccessKey": secret }),
    ))
}

/// `GET /v1/policies`: the named policies, with their documents.
pub(crate) async fn list_policies(State(st): St) -> Response {
    let policies: Vec<_> = st
        .keys
        .list_policies()
        .into_iter()
        .filter_map(|(name, managed)| {
            let (p, _) = st.keys.policy(&name)?;
            Some(json!({
                "PolicyName": name,
                "Origin": if managed { "api" } else { "config" },
                "PolicyDocument": p.source(),
            }))
        })
        .collect();
    created(json!({ "Policies": policies }))
}

/// `PUT /v1/policies/{name}` with an IAM policy document: made or
/// replaced; keys naming it get the new rights with their next request.
pub(crate) async fn put_policy(
    State(st): St,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !kinema_core::names::valid(&name, 128) {
        return Err(ApiError::invalid(
            "a policy name is 1-128 characters of [a-zA-Z0-9_.-]",
        ));
    }
    if st.keys.policy(&name).is_some_and(|(_, managed)| !managed) {
        return Err(ApiError::invalid(format!(
            "{name} is defined in the configuration file; change it there"
        )));
    }
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::invalid("not UTF-8"))?;
    let policy = Policy::parse(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "MalformedPolicyDocumentException",
            e.to_string(),
        )
    })?;
    let mut saved = st.keys.saved.lock().await;
    let before = st.keys.policy(&name);
    st.keys.put_policy(&name, policy, true);
    if let Err(e) = save(&st, &mut saved).await {
        match before {
            Some((p, m)) => st.keys.put_policy(&name, p, m),
            None => {
                st.keys.remove_policy(&name);
            }
        }
        return Err(e);
    }
    Ok(created(json!({ "PolicyName": name })))
}

pub(crate) async fn delete_policy(
    State(st): St,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let mut saved = st.keys.saved.lock().await;
    let (p, m) = match st.keys.policy(&name) {
        None => return Err(ApiError::not_found(format!("no policy named {name}"))),
        Some((_, false)) => {
            return Err(ApiError::invalid(format!(
                "{name} is defined in the configuration file; change it there"
            )));
        }
        Some(found) => found,
    };
    st.keys.remove_policy(&name);
    if let Err(e) = save(&st, &mut saved).await {
        st.keys.put_policy(&name, p, m);
        return Err(e);
    }
    Ok(created(json!({ "PolicyName": name })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_id() {
        let key = sealing_key(&[9; 32]);
        let sealed = seal(&key, "AKID1", "very-secret");
        assert!(!sealed.contains("very-secret"));
        assert_eq!(open(&key, "AKID1", &sealed).as_deref(), Some("very-secret"));
        assert_eq!(open(&key, "AKID2", &sealed), None, "bound to its key id");
        assert_eq!(open(&sealing_key(&[8; 32]), "AKID1", &sealed), None);
        assert_eq!(open(&key, "AKID1", "AAAA"), None);
    }
}
