//! The running video system: streams and their metadata, ingest sessions
//! that persist fragments, live notification of new fragments, reads by
//! selector, and retention. It knows nothing of HTTP: the API crate turns
//! requests into calls here and [`EngineError`]s into responses.

pub mod channels;
pub mod clock;
pub mod datastreams;
pub mod detection;
pub mod live;
pub mod playback;
pub mod signaling;
pub mod sources;
mod streams;

pub use clock::{Clock, now_ms};
pub use kinema_archive::ingest::{
    AckError, CompletedFragment, IngestEvent, IngestLimits, TimecodeType,
};
pub use kinema_archive::{FragmentMeta, TimeKind, fragment_number_string, parse_fragment_number};
pub use streams::{
    Engine, EngineConfig, FragmentReader, ListFragmentsPage, LiveFragment, LiveFrame, PlaybackSpan,
    PutMediaSession, StartSelector, StreamInfo, StreamUpdate,
};

/// Errors of the engine, each a condition the API maps to an AWS error shape.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A request the model's validation refuses (`ValidationException`).
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    VersionMismatch(String),
    #[error("{0}")]
    NoDataRetention(String),
    #[error("{0}")]
    ClientLimitExceeded(String),
    #[error("{0}")]
    ExpiredIterator(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    LeaseLost(String),
    /// A playback session token that is missing, forged, expired or for
    /// the other protocol.
    #[error("{0}")]
    NotAuthorized(String),
    /// A stored fragment whose track or frames cannot be remuxed.
    #[error("{0}")]
    Media(#[from] kinema_remux::RemuxError),
    #[error("internal: {0}")]
    Internal(String),
    #[error("storage: {0}")]
    Storage(#[from] kinema_store::StoreError),
}
