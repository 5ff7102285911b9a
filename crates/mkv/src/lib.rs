//! Sans-IO Matroska (RFC 9559) on top of EBML (RFC 8794): a push reader for
//! live camera uploads and a writer for stored fragments and GetMedia chunks.
//!
//! Nothing here performs I/O or reads a clock: the reader is handed bytes and
//! hands back [`Event`]s; the writer returns byte vectors.

pub mod ids;
pub mod mux;
mod reader;
pub mod vint;
mod writer;

pub use reader::{Block, Event, Reader, ReaderError, ReaderLimits, TrackInfo};
pub use writer::{
    UNKNOWN_SIZE, cluster, ebml_header, element, info, segment_header, simple_block, tags,
    uint_element,
};
