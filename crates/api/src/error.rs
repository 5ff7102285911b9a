//! Errors at the HTTP edge, rendered in the shape AWS SDKs parse: the status
//! of the modeled error, an `x-amzn-ErrorType` header and a JSON body with
//! `__type` and `message`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kinema_engine::EngineError;

use crate::sigv4::AuthError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgumentException", message)
    }

    /// What the model's validation refuses (`ValidationException`).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ValidationException", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "the server failed to process the request",
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use StatusCode as S;
        match e {
            EngineError::ResourceNotFound(m) => {
                Self::new(S::NOT_FOUND, "ResourceNotFoundException", m)
            }
            EngineError::ResourceInUse(m) => Self::new(S::BAD_REQUEST, "ResourceInUseException", m),
            EngineError::InvalidArgument(m) => {
                Self::new(S::BAD_REQUEST, "InvalidArgumentException", m)
            }
            EngineError::Validation(m) => Self::new(S::BAD_REQUEST, "ValidationException", m),
            EngineError::VersionMismatch(m) => {
                Self::new(S::BAD_REQUEST, "VersionMismatchException", m)
            }
            EngineError::NoDataRetention(m) => {
                Self::new(S::BAD_REQUEST, "NoDataRetentionException", m)
            }
            EngineError::ClientLimitExceeded(m) => {
                Self::new(S::BAD_REQUEST, "ClientLimitExceededException", m)
            }
            EngineError::LeaseLost(m) => Self::new(S::CONFLICT, "LeaseLostException", m),
            EngineError::NotAuthorized(m) => Self::new(S::FORBIDDEN, "NotAuthorizedException", m),
            EngineError::Media(e) => {
                use kinema_remux::RemuxError as R;
                let kind = match e {
                    R::UnsupportedCodec(_) | R::NoVideoTrack => {
                        "UnsupportedStreamMediaTypeException"
                    }
                    R::MissingCodecPrivate => "MissingCodecPrivateDataException",
                    R::InvalidCodecPrivate => "InvalidCodecPrivateDataException",
                    R::InvalidFrame(_) | R::Empty | R::Malformed(_) => "InvalidMediaFrameException",
                };
                Self::new(S::BAD_REQUEST, kind, e.to_string())
            }
            EngineError::LimitExceeded(m) => Self::new(S::BAD_REQUEST, "LimitExceededException", m),
            EngineError::ExpiredIterator(m) => {
                Self::new(S::BAD_REQUEST, "ExpiredIteratorException", m)
            }
            EngineError::Internal(m) => {
                tracing::error!(error = %m, "internal failure");
                Self::internal()
            }
            EngineError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                Self::internal()
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        // The errors the SDKs know for temporary credentials (they refresh
        // on an expired token).
        match e {
            AuthError::TokenExpired => {
                return Self::new(
                    StatusCode::FORBIDDEN,
                    "ExpiredTokenException",
                    e.to_string(),
                );
            }
            AuthError::TokenInvalid => {
                return Self::new(
                    StatusCode::FORBIDDEN,
                    "UnrecognizedClientException",
                    e.to_string(),
                );
            }
            _ => {}
        }
        // The Kinesis Video services model NotAuthorizedException for
        // callers they cannot authenticate; we answer it with 403.
        Self::new(
            StatusCode::FORBIDDEN,
            "NotAuthorizedException",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(kind = self.kind, message = %self.message, "request failed");
        } else {
            tracing::debug!(kind = self.kind, message = %self.message, "request refused");
        }
        let body = serde_json::json!({ "__type": self.kind, "message": self.message, "Message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        resp.headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(self.kind));
        resp
    }
}
