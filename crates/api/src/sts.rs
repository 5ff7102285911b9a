//! An STS-compatible endpoint: `AssumeRole` and `GetSessionToken` in the
//! Query protocol boto3's `sts` client speaks (form-encoded POST to `/`,
//! XML answers). The credentials are stateless (`kinema_iam::session`):
//! a temporary key id, a secret derived from it, and a session token that
//! carries the role, the expiry and an optional session policy.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kinema_iam::session::{self, SessionClaims};
use kinema_iam::{Policies, Policy};

use crate::AppState;
use crate::sigv4::Principal;

/// A role that keys may assume (`[roles.<name>]`).
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// What the role may do.
    pub policies: Policies,
    /// Long-term access key ids that may assume it (`*`: any).
    pub trusted: Vec<String>,
    /// The longest session, seconds (at most 12 hours).
    pub max_session_seconds: u32,
}

/// Issues and checks temporary credentials.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub key: [u8; 32],
    pub roles: HashMap<String, Role>,
    pub account_id: String,
}

pub const MIN_SESSION_SECONDS: u32 = 900;
pub const MAX_SESSION_SECONDS: u32 = 43_200;
const DEFAULT_ASSUME_ROLE_SECONDS: u32 = 3600;

impl Sessions {
    pub fn role_arn(&self, name: &str) -> String {
        format!("arn:aws:iam::{}:role/{name}", self.account_id)
    }

    /// The policies a session's credentials carry: the role's (or the
    /// issuer's own), narrowed by the session policy.
    pub fn policies_of(
        &self,
        claims: &SessionClaims,
        issuer: Option<Arc<Policies>>,
    ) -> Option<Policies> {
        let identity = match &claims.role {
            Some(role) => self.roles.get(role)?.policies.identity.clone(),
            None => issuer?.identity.clone(),
        };
        let session = match &claims.policy {
            Some(p) => Some(vec![Policy::parse(p).ok()?]),
            None => None,
        };
        Some(Policies { identity, session })
    }
}

/// An STS error in the Query protocol's XML shape.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
         <Code>{}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
        xml(code),
        xml(message),
        request_id()
    );
    (status, [("content-type", "text/xml")], body).into_response()
}

/// An error of the edge (authentication, authorisation) in STS's shape,
/// with the codes the SDKs know for it.
pub(crate) fn from_api_error(e: crate::ApiError) -> Response {
    let code = match e.kind {
        "AccessDeniedException" => "AccessDenied",
        "ExpiredTokenException" => "ExpiredToken",
        "UnrecognizedClientException" => "InvalidClientTokenId",
        "NotAuthorizedException" => "SignatureDoesNotMatch",
        other => other,
    };
    error(e.status, code, &e.message)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Random bytes from the kernel. A server that cannot read them cannot
/// make credentials at all: that is an abort, not a key of zeros.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom is readable");
    b
}

fn request_id() -> String {
    hex::encode(random_bytes::<16>())
}

/// `prefix` and 16 random characters of [A-Z2-7], as AWS's key ids look
/// (`AKID` for keys, `ASIA` for temporary ones).
pub(crate) fn key_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let id: String = random_bytes::<16>()
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    format!("{prefix}{id}")
}

/// The form fields of a Query-protocol request.
pub(crate) fn form(body: &[u8]) -> HashMap<String, String> {
    crate::sigv4::query_pairs(std::str::from_utf8(body).unwrap_or_default())
        .into_iter()
        .collect()
}

/// The asked session length, or the refusal's message.
fn duration(f: &HashMap<String, String>, default: u32, max: u32) -> Result<u32, String> {
    match f.get("DurationSeconds") {
        None => Ok(default.min(max)),
        Some(d) => d
            .parse::<u32>()
            .ok()
            .filter(|d| (MIN_SESSION_SECONDS..=max).contains(d))
            .ok_or_else(|| {
                format!("DurationSeconds must be between {MIN_SESSION_SECONDS} and {max}")
            }),
    }
}

/// Answers one STS call from an authenticated (and authorised) caller.
pub(crate) async fn dispatch(st: &AppState, caller: &Principal, body: &[u8]) -> Response {
    let Some(sessions) = st.keys.sessions() else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "temporary credentials are not enabled on this server",
        );
    };
    let f = form(body);
    let now_ms = kinema_engine::now_ms();
    let issuer = match &caller.session {
        // A session's own caller, for GetSessionToken refusals and chains.
        Some(claims) => claims.issuer.clone(),
        None => caller.access_key_id.clone(),
    };
    let Some(issuer_key) = st.keys.key(&issuer) else {
        return error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "the calling key no longer exists",
        );
    };
    let issuer_mark = session::issuer_mark(&sessions.key, &issuer_key.secret);
    let (action, claims) = match f.get("Action").map(String::as_str) {
        Some("AssumeRole") if caller.session.is_some() => {
            // No chains: a session cannot outlive or widen through another.
            return error(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "Cannot call AssumeRole with session credentials",
            );
        }
        Some("AssumeRole") => {
            let Some(name) = f
                .get("RoleArn")
                .and_then(|a| a.strip_prefix(&sessions.role_arn("")))
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    "RoleArn must name a role of this server",
                );
            };
            let Some(role) = sessions.roles.get(name) else {
                return error(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    &format!("no role {name} can be assumed"),
                );
            };
            if !role.trusted.iter().any(|t| t == "*" || *t == issuer) {
                return error(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    &format!(
                        "User: {} is not authorized to perform: sts:AssumeRole on resource: {}",
                        caller.access_key_id,
                        sessions.role_arn(name)
                    ),
                );
            }
            let session_name = f.get("RoleSessionName").cloned().unwrap_or_default();
            let valid_name = (2..=64).contains(&session_name.len())
                && session_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
            if !valid_name {
                return error(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    "RoleSessionName must be 2-64 characters of [\\w+=,.@-]",
                );
            }
            let seconds = match duration(
                &f,
                DEFAULT_ASSUME_ROLE_SECONDS,
                role.max_session_seconds
                    .clamp(MIN_SESSION_SECONDS, MAX_SESSION_SECONDS),
            ) {
                Ok(s) => s,
                Err(m) => return error(StatusCode::BAD_REQUEST, "ValidationError", &m),
            };
            let policy = f.get("Policy").cloned();
            if let Some(p) = &policy
                && let Err(e) = Policy::parse(p)
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "MalformedPolicyDocument",
                    &e.to_string(),
                );
            }
            (
                "AssumeRole",
                SessionClaims {
                    access_key_id: key_id("ASIA"),
                    issuer,
                    role: Some(name.to_string()),
                    session_name: Some(session_name),
                    expires_ms: now_ms + i64::from(seconds) * 1000,
                    policy,
                    issuer_mark: issuer_mark.clone(),
                },
            )
        }
        Some("GetSessionToken") => {
            if caller.session.is_some() {
                return error(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    "Cannot call GetSessionToken with session credentials",
                );
            }
            let seconds = match duration(&f, MAX_SESSION_SECONDS, MAX_SESSION_SECONDS) {
                Ok(s) => s,
                Err(m) => return error(StatusCode::BAD_REQUEST, "ValidationError", &m),
            };
            (
                "GetSessionToken",
                SessionClaims {
                    access_key_id: key_id("ASIA"),
                    issuer,
                    role: None,
                    session_name: None,
                    expires_ms: now_ms + i64::from(seconds) * 1000,
                    policy: None,
                    issuer_mark,
                },
            )
        }
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                &format!("unknown STS action {:?}", other.unwrap_or_default()),
            );
        }
    };
    let token = session::token(&sessions.key, &claims);
    let secret = session::secret_of(&sessions.key, &claims.access_key_id);
    let expiration = time::OffsetDateTime::from_unix_timestamp(claims.expires_ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let credentials = format!(
        "<Credentials><AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
         <SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>",
        claims.access_key_id,
        xml(&secret),
        xml(&token),
        expiration
    );
    let user = match (&claims.role, &claims.session_name) {
        (Some(role), Some(name)) => format!(
            "<AssumedRoleUser><AssumedRoleId>AROA{}:{}</AssumedRoleId>\
             <Arn>arn:aws:sts::{}:assumed-role/{}/{}</Arn></AssumedRoleUser>",
            xml(&role.to_ascii_uppercase()),
            xml(name),
            sessions.account_id,
            xml(role),
            xml(name)
        ),
        _ => String::new(),
    };
    tracing::info!(
        target: "kinema::audit",
        key = %caller.access_key_id,
        action = %format!("sts:{action}"),
        temporary_key = %claims.access_key_id,
        role = ?claims.role,
        expires_ms = claims.expires_ms,
        "issued temporary credentials"
    );
    let body = format!(
        "<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <{action}Result>{credentials}{user}</{action}Result>\
         <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
        request_id()
    );
    (StatusCode::OK, [("content-type", "text/xml")], body).into_response()
}
