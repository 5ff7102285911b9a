//! The `kinema` GStreamer plugin: `kinemasink`, the camera-side element
//! that streams H.264 to Kinema with PutMedia (the counterpart of Kinesis
//! Video Streams' `kvssink`).
//!
//! Build it with `cargo build -p gst-plugin-kinema` and point
//! `GST_PLUGIN_PATH` at the directory holding `libgstkinema.so`.

mod buffer;
mod sink;
mod upload;

use gstreamer as gst;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    sink::register(plugin)
}

gst::plugin_define!(
    kinema,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "Apache 2.0",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    "kinema",
    env!("BUILD_REL_DATE")
);
