//! An in-process RTSP server (gstreamer-rtsp-server) for tests and
//! benchmarks: serves a GStreamer launch line as a camera on 127.0.0.1,
//! optionally behind Basic authentication.

use std::thread::JoinHandle;

use gstreamer::glib;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;

/// A synthetic H.264 camera: a moving test pattern with a burnt-in running
/// time, `fps` frames per second, a keyframe every `gop` frames.
pub fn test_pattern_launch(width: u32, height: u32, fps: u32, gop: u32, kbps: u32) -> String {
    format!(
        "( videotestsrc is-live=true pattern=ball ! timeoverlay ! \
         video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 ! \
         x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bitrate={kbps} ! \
         video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
}

/// A running RTSP server; dropping it disconnects every client and stops it.
pub struct RtspServer {
    port: u16,
    main_loop: glib::MainLoop,
    server: rtsp::RTSPServer,
    thread: Option<JoinHandle<()>>,
}

impl RtspServer {
    /// Serves `launch` at `rtsp://127.0.0.1:{port}{mount}`; `port` 0 lets
    /// the OS choose. `credentials` require Basic authentication. `shared`
    /// serves every client from one pipeline.
    pub fn start(
        port: u16,
        mount: &str,
        launch: &str,
        credentials: Option<(&str, &str)>,
        shared: bool,
    ) -> Result<RtspServer, String> {
        crate::init().map_err(|e| e.to_string())?;
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        let factory = rtsp::RTSPMediaFactory::new();
        factory.set_launch(launch);
        factory.set_shared(shared);
        if let Some((user, pass)) = credentials {
            let auth = rtsp::RTSPAuth::new();
            let token = rtsp::RTSPToken::builder()
                .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, user)
                .build();
            let basic = rtsp::RTSPAuth::make_basic(user, pass);
            auth.add_basic(basic.as_str(), &token);
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gstreamer::Structure::builder(user)
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build(),
            );
        }
        let mounts = server
            .mount_points()
            .ok_or("the RTSP server has no mount points")?;
        mounts.add_factory(mount, factory);
        let id = server
            .attach(Some(&ctx))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let bound = server.bound_port();
        let ml = main_loop.clone();
        let thread = std::thread::spawn(move || {
            ml.run();
            // Stop listening: the server's socket source leaves the context.
            if let Some(source) = ctx.find_source_by_id(&id) {
                source.destroy();
            }
        });
        Ok(RtspServer {
            port: bound.max(0) as u16,
            main_loop,
            server,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{mount}", self.port)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        // Close every session so clients see the camera go away.
        self.server
            .client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a small H.264 MP4 (176x144, 30 fps, constrained baseline) of
/// `frames` frames with a keyframe every `gop`: a file to loop as a camera.
pub fn write_test_clip(path: &std::path::Path, frames: u32, gop: u32) -> Result<(), String> {
    write_test_file(path, frames, gop, "mp4mux")
}

/// The same video as [`write_test_clip`] as a Matroska upload, a cluster
/// per keyframe: what a camera sends to `PutMedia`.
pub fn write_test_mkv(path: &std::path::Path, frames: u32, gop: u32) -> Result<(), String> {
    write_test_file(
        path,
        frames,
        gop,
        "h264parse ! video/x-h264,stream-format=avc ! matroskamux min-cluster-duration=0",
    )
}

fn write_test_file(path: &std::path::Path, frames: u32, gop: u32, mux: &str) -> Result<(), String> {
    use gstreamer::prelude::*;
    crate::init().map_err(|e| e.to_string())?;
    let launch = format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,format=I420,width=176,height=144,framerate=30/1 \
         ! x264enc key-int-max={gop} ! video/x-h264,profile=constrained-baseline ! {mux} \
         ! filesink name=out"
    );
    let pipeline = gstreamer::parse::launch(&launch).map_err(|e| e.to_string())?;
    let bin = pipeline
        .downcast_ref::<gstreamer::Bin>()
        .ok_or("not a bin")?;
    bin.by_name("out")
        .ok_or("no filesink")?
        .set_property("location", path.display().to_string());
    pipeline
        .set_state(gstreamer::State::Playing)
        .map_err(|e| e.to_string())?;
    let bus = pipeline.bus().ok_or("no bus")?;
    let result = match bus.timed_pop_filtered(
        gstreamer::ClockTime::from_seconds(60),
        &[gstreamer::MessageType::Eos, gstreamer::MessageType::Error],
    ) {
        Some(msg) => match msg.view() {
            gstreamer::MessageView::Eos(_) => Ok(()),
            gstreamer::MessageView::Error(e) => Err(e.error().to_string()),
            _ => Err("unexpected message".into()),
        },
        None => Err("encoding the test clip took over 60 s".into()),
    };
    let _ = pipeline.set_state(gstreamer::State::Null);
    result
}
