//! Vocabulary shared by every Kinema crate, each piece written once: the
//! AWS defaults and service limits several crates enforce, resource-name
//! rules, what an address reaches, time conversions and a poison-tolerant
//! lock. No I/O, no clock.

pub mod aws;
pub mod names;
pub mod net;
pub mod sync;
pub mod time;
