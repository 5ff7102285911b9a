//! Prometheus metrics served at `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub stream: String,
    pub code: u32,
}

pub struct Metrics {
    registry: Registry,
    pub incoming_bytes: Family<StreamLabel, Counter>,
    pub incoming_fragments: Family<StreamLabel, Counter>,
    pub put_media_errors: Family<ErrorLabel, Counter>,
    pub put_media_sessions: Family<StreamLabel, Gauge>,
    pub persisted_ack_latency: Histogram,
    pub outgoing_bytes: Family<StreamLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kinema");
        let incoming_bytes = Family::<StreamLabel, Counter>::default();
        let incoming_fragments = Family::<StreamLabel, Counter>::default();
        let put_media_errors = Family::<ErrorLabel, Counter>::default();
        let put_media_sessions = Family::<StreamLabel, Gauge>::default();
        let outgoing_bytes = Family::<StreamLabel, Counter>::default();
        // Seconds from a fragment's last byte to its PERSISTED ack: 0.5 ms .. ~4 s.
        let persisted_ack_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
        );
        registry.register(
            "incoming_bytes",
            "PutMedia bytes received",
            incoming_bytes.clone(),
        );
        registry.register(
            "incoming_fragments",
            "Fragments persisted",
            incoming_fragments.clone(),
        );
        registry.register(
            "put_media_errors",
            "PutMedia ERROR acks by code",
            put_media_errors.clone(),
        );
        registry.register(
            "put_media_sessions",
            "Open PutMedia uploads",
            put_media_sessions.clone(),
        );
        registry.register(
            "outgoing_bytes",
            "GetMedia bytes sent",
            outgoing_bytes.clone(),
        );
        registry.register(
            "persisted_ack_latency_seconds",
            "Time from a fragment's last byte to its PERSISTED ack",
            persisted_ack_latency.clone(),
        );
        Arc::new(Metrics {
            registry,
            incoming_bytes,
            incoming_fragments,
            put_media_errors,
            put_media_sessions,
            persisted_ack_latency,
            outgoing_bytes,
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub fn stream(name: &str) -> StreamLabel {
    StreamLabel {
        stream: name.to_string(),
    }
}
