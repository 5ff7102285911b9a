//! End-to-end tests: the real `kinema` binary on 127.0.0.1 with a temp data
//! directory, driven by clients nobody here wrote (boto3, the AWS CLI, curl,
//! GStreamer) and checked by independent readers (ffprobe, matroskademux).

mod architecture;
mod cluster;
mod datastreams;
mod deliveries;
mod detection;
mod groups;
mod kinemasink;
mod playback;
mod queues;
mod readme;
mod security;
mod sources;
mod support;
mod video;
mod webrtc;
