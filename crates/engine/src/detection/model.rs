//! The model seam: what detection needs from a loaded model, and who loads
//! models. The server uses ONNX Runtime ([`OnnxModels`]); engine tests run
//! the same pipeline (decoder, queues, tracker, publisher) with a stand-in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kinema_core::sync::lock;
use kinema_infer::{Inference, ModelSpec, Runtime};

use super::status::DetectorFailure;

/// A loaded model as detection uses it. Called from the inference worker
/// threads: `detect` may block.
pub trait Model: Send + Sync {
    /// The RGB frame size `detect` takes (decoded frames are scaled to it).
    fn input_size(&self) -> (u32, u32);
    /// Classes the model scores (its label list must be as long).
    fn classes(&self) -> usize;
    /// Detections of the `wanted` classes in one frame, after threshold and
    /// non-maximum suppression, best first.
    fn detect(
        &self,
        rgb: &[u8],
        wanted: &[usize],
        threshold: f32,
        iou: f32,
    ) -> Result<Inference, String>;
}

/// Loads models; called off the async threads (loading can take a while).
pub trait Models: Send + Sync {
    fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn Model>, DetectorFailure>;
}

impl Model for kinema_infer::Detector {
    fn input_size(&self) -> (u32, u32) {
        kinema_infer::Detector::input_size(self)
    }
    fn classes(&self) -> usize {
        kinema_infer::Detector::classes(self)
    }
    fn detect(
        &self,
        rgb: &[u8],
        wanted: &[usize],
        threshold: f32,
        iou: f32,
    ) -> Result<Inference, String> {
        kinema_infer::Detector::detect(self, rgb, wanted, threshold, iou).map_err(|e| e.to_string())
    }
}

/// Models through ONNX Runtime, whose library is loaded on first use (a
/// server with no detectors never loads it).
pub struct OnnxModels {
    library: PathBuf,
    runtime: Mutex<Option<Result<Arc<Runtime>, DetectorFailure>>>,
}

impl OnnxModels {
    pub fn new(library: PathBuf) -> OnnxModels {
        OnnxModels {
            library,
            runtime: Mutex::new(None),
        }
    }

    fn runtime(&self) -> Result<Arc<Runtime>, DetectorFailure> {
        lock(&self.runtime)
            .get_or_insert_with(|| {
                Runtime::load(&self.library).map_err(|e| DetectorFailure::Model(e.to_string()))
            })
            .clone()
    }
}

impl Models for OnnxModels {
    fn load(&self, spec: &ModelSpec) -> Result<Arc<dyn Model>, DetectorFailure> {
        let detector = self
            .runtime()?
            .detector(spec)
            .map_err(|e| DetectorFailure::Model(e.to_string()))?;
        Ok(detector)
    }
}
