//! The ONNX Runtime adapter: the only crate that names `ort` types.
//!
//! ONNX Runtime is loaded at run time from a shared library (`ort`'s
//! `load-dynamic`; the library comes from the PyPI `onnxruntime` wheel, see
//! `models/README.md`). A [`Runtime`] is that library plus one environment;
//! it hands out [`Detector`]s, one per model file and thread setting, shared
//! by every stream that uses the model (a session is loaded once, not once
//! per camera). A detector takes an RGB frame already scaled to its input
//! size and returns detections after threshold and per-class NMS, decoded
//! by the sans-IO `kinema-detect` for the model's output layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kinema_core::sync::lock;
use kinema_detect::{Detection, decode_ssd, decode_yolo, nms};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Library { path: String, reason: String },
    #[error("cannot load model {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("model {path} does not have the {layout:?} layout: {reason}")]
    Layout {
        path: String,
        layout: Layout,
        reason: String,
    },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("frame of {got} bytes, the model wants {want} (RGB at its input size)")]
    FrameSize { got: usize, want: usize },
}

/// The output layouts the detector decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// TensorFlow COCO-SSD converted to ONNX: input `[1,H,W,3]` float
    /// 0-255 (NHWC); outputs `scores [1,N,C]` (sigmoid applied) and `boxes
    /// [1,N,1,4]` (ymin, xmin, ymax, xmax in 0..1).
    Ssd,
    /// YOLOv8/YOLO11 export: input `[1,3,H,W]` float 0-1 (NCHW); one
    /// output `[1,4+C,N]` of cx, cy, w, h in input pixels, then class scores.
    Yolo,
}

/// Which model to load and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelSpec {
    pub path: PathBuf,
    pub layout: Layout,
    /// ONNX Runtime's intra-op threads for this session.
    pub intra_threads: usize,
}

/// ONNX Runtime, loaded once per process, and the sessions it holds.
pub struct Runtime {
    env: ort::environment::Environment,
    detectors: Mutex<HashMap<ModelSpec, Arc<Detector>>>,
}

impl Runtime {
    /// Loads the ONNX Runtime shared library (once per process: later
    /// calls return the first runtime, whatever path they name).
    pub fn load(library: &Path) -> Result<Arc<Runtime>, InferError> {
        static RUNTIME: OnceLock<Result<Arc<Runtime>, InferError>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                let fail = |reason: String| InferError::Library {
                    path: library.display().to_string(),
                    reason,
                };
                if !library.exists() {
                    return Err(fail("no such file".into()));
                }
                let env = ort::init_from(library)
                    .map_err(|e| fail(e.to_string()))?
                    .with_name("kinema")
                    .with_telemetry(false)
                    .build()
                    .map_err(|e| fail(e.to_string()))?;
                Ok(Arc::new(Runtime {
                    env,
                    detectors: Mutex::new(HashMap::new()),
                }))
            })
            .clone()
    }

    /// The shared detector for `spec`, loading the model on first use.
    pub fn detector(&self, spec: &ModelSpec) -> Result<Arc<Detector>, InferError> {
        let mut cache = lock(&self.detectors);
        if let Some(d) = cache.get(spec) {
            return Ok(d.clone());
        }
        let d = Arc::new(Detector::load(&self.env, spec)?);
        cache.insert(spec.clone(), d.clone());
        Ok(d)
    }
}

/// One loaded model. Runs are serialised on its session (ONNX Runtime
/// parallelises inside a run with its intra-op threads).
pub struct Detector {
    spec: ModelSpec,
    session: Mutex<Session>,
    input_w: u32,
    input_h: u32,
    classes: usize,
    /// Output names: (scores, boxes) for SSD, (output, output) for YOLO.
    outputs: (String, String),
}

/// One frame's result.
#[derive(Debug, Clone)]
pub struct Inference {
    /// After threshold and per-class NMS, best first.
    pub detections: Vec<Detection>,
    /// Time inside ONNX Runtime's `run` (not counting waiting for the session).
    pub run_time: Duration,
}

fn dims(outlet: &ort::value::Outlet) -> Vec<i64> {
    outlet
        .dtype()
        .tensor_shape()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default()
}

impl Detector {
    fn load(env: &ort::environment::Environment, spec: &ModelSpec) -> Result<Detector, InferError> {
        let path = spec.path.display().to_string();
        let fail = |reason: String| InferError::Model {
            path: path.clone(),
            reason,
        };
        if !spec.path.exists() {
            return Err(fail("no such file".into()));
        }
        let session = Session::builder(env)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(spec.intra_threads.max(1))
            .map_err(|e| fail(e.to_string()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.to_string()))?
            .commit_from_file(&spec.path)
            .map_err(|e| fail(e.to_string()))?;
        let layout_err = |reason: String| InferError::Layout {
            path: path.clone(),
            layout: spec.layout,
            reason,
        };
        let input = session
            .inputs()
            .first()
            .ok_or_else(|| layout_err("no input".into()))?;
        let shape = dims(input);
        if shape.len() != 4 {
            return Err(layout_err(format!("input shape {shape:?} is not 4-D")));
        }
        let (h, w) = match spec.layout {
            Layout::Ssd => (shape[1], shape[2]),
            Layout::Yolo => (shape[2], shape[3]),
        };
        if h <= 0 || w <= 0 {
            return Err(layout_err(format!(
                "input shape {shape:?} needs a fixed height and width"
            )));
        }
        let names: Vec<(String, Vec<i64>)> = session
            .outputs()
            .iter()
            .map(|o| (o.name().to_string(), dims(o)))
            .collect();
        let (outputs, classes) = match spec.layout {
            Layout::Ssd => {
                let find = |n: &str| names.iter().find(|(name, _)| name == n);
                let (Some(scores), Some(_boxes)) = (find("scores"), find("boxes")) else {
                    return Err(layout_err(format!(
                        "outputs {:?}: want `scores` and `boxes`",
                        names.iter().map(|n| &n.0).collect::<Vec<_>>()
                    )));
                };
                let c = scores.1.last().copied().unwrap_or(0);
                (("scores".to_string(), "boxes".to_string()), c)
            }
            Layout::Yolo => {
                let Some((name, shape)) = names.first() else {
                    return Err(layout_err("no output".into()));
                };
                if shape.len() != 3 || shape[1] <= 4 {
                    return Err(layout_err(format!(
                        "output shape {shape:?}: want [1, 4 + classes, N]"
                    )));
                }
                ((name.clone(), name.clone()), shape[1] - 4)
            }
        };
        if classes <= 0 {
            return Err(layout_err("cannot tell the number of classes".into()));
        }
        tracing::info!(model = %path, ?spec.layout, w, h, classes, threads = spec.intra_threads, "model loaded");
        Ok(Detector {
            spec: spec.clone(),
            session: Mutex::new(session),
            input_w: w as u32,
            input_h: h as u32,
            classes: classes as usize,
            outputs,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Input width and height: frames must be RGB at this size.
    pub fn input_size(&self) -> (u32, u32) {
        (self.input_w, self.input_h)
    }

    /// Number of score columns the model outputs.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Converts an RGB frame (`input_w * input_h * 3` bytes) into the
    /// model's input tensor.
    pub fn tensor(&self, rgb: &[u8]) -> Result<Vec<f32>, InferError> {
        let (w, h) = (self.input_w as usize, self.input_h as usize);
        let want = w * h * 3;
        if rgb.len() != want {
            return Err(InferError::FrameSize {
                got: rgb.len(),
                want,
            });
        }
        Ok(match self.spec.layout {
            Layout::Ssd => rgb.iter().map(|&v| f32::from(v)).collect(),
            Layout::Yolo => {
                let mut t = vec![0f32; want];
                let plane = w * h;
                for (i, px) in rgb.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        t[c * plane + i] = f32::from(px[c]) / 255.0;
                    }
                }
                t
            }
        })
    }

    /// Runs the model on one input tensor (from [`Detector::tensor`]) and
    /// decodes the classes in `wanted` at `threshold` or above, then NMS.
    pub fn run(
        &self,
        tensor: &[f32],
        wanted: &[usize],
        threshold: f32,
        iou: f32,
    ) -> Result<Inference, InferError> {
        let (w, h) = (self.input_w as usize, self.input_h as usize);
        let shape = match self.spec.layout {
            Layout::Ssd => [1, h, w, 3],
            Layout::Yolo => [1, 3, h, w],
        };
        let run = |e: ort::Error| InferError::Run(e.to_string());
        let input = TensorRef::from_array_view((shape, tensor)).map_err(run)?;
        let mut session = lock(&self.session);
        let started = Instant::now();
        let outputs = session.run(ort::inputs![input]).map_err(run)?;
        let run_time = started.elapsed();
        let get = |name: &str| -> Result<&[f32], InferError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| InferError::Run(format!("no output {name}")))?;
            value
                .try_extract_tensor::<f32>()
                .map(|(_, data)| data)
                .map_err(run)
        };
        let detections = match self.spec.layout {
            Layout::Ssd => decode_ssd(
                get(&self.outputs.0)?,
                get(&self.outputs.1)?,
                self.classes,
                wanted,
                threshold,
            ),
            Layout::Yolo => decode_yolo(
                get(&self.outputs.0)?,
                self.classes,
                w as f32,
                h as f32,
                wanted,
                threshold,
            ),
        };
        Ok(Inference {
            detections: nms(detections, iou),
            run_time,
        })
    }

    /// [`Detector::tensor`] then [`Detector::run`].
    pub fn detect(
        &self,
        rgb: &[u8],
        wanted: &[usize],
        threshold: f32,
        iou: f32,
    ) -> Result<Inference, InferError> {
        let t = self.tensor(rgb)?;
        self.run(&t, wanted, threshold, iou)
    }
}
