//! What the server logs by default: Kinema at info, and of the libraries
//! only what an operator should act on.
//!
//! webrtc-rs warns about things that are normal in a working session (a
//! browser's mDNS candidate when mDNS is off, checks before the first
//! candidate pair, closing candidates of an agent already closed), so its
//! crates log errors only, whatever level `RUST_LOG` sets, unless
//! `RUST_LOG` names the crate itself (`RUST_LOG=info,webrtc_ice=debug`).

use tracing_subscriber::EnvFilter;

/// The level when `RUST_LOG` is unset or empty.
const DEFAULT_LEVEL: &str = "info";

/// Crates whose warnings are library noise, kept to errors.
const QUIET_CRATES: &[&str] = &[
    "webrtc",
    "webrtc_ice",
    "webrtc_dtls",
    "webrtc_srtp",
    "webrtc_sctp",
    "webrtc_mdns",
    "webrtc_data",
    "interceptor",
    "turn",
];

/// The filter directives for `rust_log` (the `RUST_LOG` value, if any).
pub fn directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_LEVEL);
    let named: Vec<&str> = base
        .split(',')
        .filter_map(|d| d.split(['=', '[']).next())
        .map(|t| t.split("::").next().unwrap_or(t).trim())
        .collect();
    let mut out = base.to_string();
    for krate in QUIET_CRATES {
        if !named.contains(krate) {
            out.push_str(&format!(",{krate}=error"));
        }
    }
    out
}

/// The tracing filter for `rust_log`; a malformed value falls back to the
/// default (with the libraries quiet) rather than logging nothing.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    EnvFilter::try_new(directives(rust_log)).unwrap_or_else(|e| {
        eprintln!("RUST_LOG is not a valid filter ({e}); logging at {DEFAULT_LEVEL}");
        EnvFilter::new(directives(None))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_noise_is_kept_to_errors_at_any_level() {
        for level in [None, Some(""), Some("info"), Some("debug")] {
            let d = directives(level);
            assert!(d.contains("webrtc_ice=error"), "{d}");
            assert!(d.contains("webrtc=error"), "{d}");
        }
        assert!(directives(None).starts_with("info,"));
    }

    #[test]
    fn a_crate_named_in_rust_log_keeps_its_level() {
        let d = directives(Some("info,webrtc_ice=debug"));
        assert!(d.contains("webrtc_ice=debug"), "{d}");
        assert!(!d.contains("webrtc_ice=error"), "{d}");
        assert!(d.contains("webrtc_dtls=error"), "{d}");
        let d = directives(Some("warn,webrtc_ice::agent=trace"));
        assert!(!d.contains("webrtc_ice=error"), "{d}");
    }

    #[test]
    fn a_malformed_filter_still_gives_one() {
        // Does not panic, and logs at the default level.
        let f = filter(Some("info,[[["));
        assert!(f.to_string().contains("webrtc_ice=error"), "{f}");
    }
}
