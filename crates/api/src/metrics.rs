//! Prometheus metrics served at `GET /metrics`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceStateLabel {
    source: String,
    state: &'static str,
}

/// Camera source status, read from the sources at each scrape.
#[derive(Debug)]
struct SourceCollector(kinema_engine::sources::Sources);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use kinema_engine::sources::SourceState;
        let statuses = self.0.snapshot();
        let mut e = encoder.encode_descriptor(
            "source_state",
            "1 for the state each camera source is in (connecting, streaming, retrying, stopped)",
            None,
            MetricType::Gauge,
        )?;
        for s in &statuses {
            for state in SourceState::ALL {
                let label = SourceStateLabel {
                    source: s.name.clone(),
                    state: state.as_str(),
                };
                ConstGauge::new((s.state == state) as i64).encode(e.encode_family(&label)?)?;
            }
        }
        type Get = fn(&kinema_engine::sources::SourceStatus) -> u64;
        let counters: [(&str, &str, Get); 4] = [
            (
                "source_frames",
                "Frames received from camera sources",
                |s| s.frames,
            ),
            (
                "source_fragments",
                "Fragments persisted from camera sources",
                |s| s.fragments,
            ),
            (
                "source_bytes",
                "Matroska bytes ingested from camera sources",
                |s| s.bytes,
            ),
            (
                "source_reconnects",
                "Failed camera connections (each is retried)",
                |s| s.reconnects,
            ),
        ];
        for (name, help, get) in counters {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &statuses {
                let label = SourceLabel {
                    source: s.name.clone(),
                    stream: s.stream.clone(),
                };
                ConstCounter::new(get(s)).encode(e.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectorLabel {
    stream: String,
    model: String,
}

/// Detector figures, read from the detectors at each scrape.
struct DetectorCollector(kinema_engine::detection::Detectors);

/// Live WebRTC: viewers per stream, frames sent and skipped, and the delay
/// from a frame's arrival to its hand-over to a viewer's peer.
struct LiveCollector(kinema_engine::live::Live);

impl std::fmt::Debug for LiveCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCollector")
    }
}

/// A histogram read from counters kept elsewhere.
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl prometheus_client::encoding::EncodeMetric for ConstHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut e = encoder.encode_descriptor(
            "webrtc_viewers",
            "Live WebRTC viewers served by the server, per stream",
            None,
            MetricType::Gauge,
        )?;
        for (stream, n) in self.0.viewers() {
            ConstGauge::new(n as i64).encode(e.encode_family(&StreamLabel { stream })?)?;
        }
        let stats = self.0.stats();
        for (name, help, v) in [
            (
                "webrtc_frames_sent",
                "Frames handed to viewers' peers",
                stats.frames_sent.load(Relaxed),
            ),
            (
                "webrtc_frames_skipped",
                "Frames a slow viewer skipped to catch up at a keyframe",
                stats.frames_skipped.load(Relaxed),
            ),
        ] {
            ConstCounter::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let bounds = kinema_engine::live::DELAY_BUCKETS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain([f64::MAX]);
        let histogram = ConstHistogram {
            sum: stats.delay_sum_us.load(Relaxed) as f64 / 1e6,
            count: stats.delay_count.load(Relaxed),
            buckets: bounds
                .zip(stats.delay_buckets.iter().map(|b| b.load(Relaxed)))
                .collect(),
        };
        histogram.encode(encoder.encode_descriptor(
            "webrtc_send_delay_seconds",
            "From a frame's arrival at the server to its hand-over to a viewer's peer",
            None,
            MetricType::Histogram,
        )?)
    }
}

impl std::fmt::Debug for DetectorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DetectorCollector")
    }
}

impl Collector for DetectorCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use kinema_engine::detection::DetectorStatus;
        let statuses = self.0.list();
        let label = |s: &DetectorStatus| DetectorLabel {
            stream: s.stream.clone(),
            model: s.model.clone(),
        };
        type Get = fn(&DetectorStatus) -> u64;
        let counters: [(&str, &str, Get); 6] = [
            (
                "detector_fragments",
                "Persisted fragments handed to the detector",
                |s| s.fragments,
            ),
            (
                "detector_fragments_dropped",
                "Fragments skipped because the decoder was behind",
                |s| s.fragments_dropped,
            ),
            (
                "detector_frames_sampled",
                "Decoded frames kept under the detection budget",
                |s| s.frames_sampled,
            ),
            (
                "detector_frames_inferred",
                "Frames run through the model",
                |s| s.frames_inferred,
            ),
            (
                "detector_frames_dropped",
                "Frames of waiting fragments dropped because inference fell behind",
                |s| s.frames_dropped,
            ),
            ("detector_events", "Detection events published", |s| {
                s.events
            }),
        ];
        for (name, help, get) in counters {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &statuses {
                ConstCounter::new(get(s)).encode(e.encode_family(&label(s))?)?;
            }
        }
        type GetF = fn(&DetectorStatus) -> f64;
        let gauges: [(&str, &str, GetF); 4] = [
            ("detector_fps", "Frames analysed per second (recent)", |s| {
                s.achieved_fps
            }),
            (
                "detector_inference_ms",
                "Mean ONNX Runtime time per analysed frame, ms",
                |s| s.mean_inference_ms,
            ),
            (
                "detector_pipeline_ms",
                "Mean time from decoded frame to analysis done, ms",
                |s| s.mean_pipeline_ms,
            ),
            (
                "detector_in_view",
                "Tracked objects of the counted classes in view",
                |s| s.in_view as f64,
            ),
        ];
        for (name, help, get) in gauges {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &statuses {
                ConstGauge::new(get(s)).encode(e.encode_family(&label(s))?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new(
        sources: kinema_engine::sources::Sources,
        detectors: kinema_engine::detection::Detectors,
        live: kinema_engine::live::Live,
    ) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kinema");
        registry.register_collector(Box::new(LiveCollector(live)));
        registry.register_collector(Box::new(SourceCollector(sources)));
        registry.register_collector(Box::new(DetectorCollector(detectors)));
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
