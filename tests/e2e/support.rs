//! Test support: a real `kinema` server process on 127.0.0.1 with a temp
//! data directory, the Python clients (boto3) and the GStreamer producer.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const KEY_ID: &str = "AKIDKINEMATEST";
pub const SECRET: &str = "kinema-test-secret";

/// A running server process. Killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// `https` when the server was started with TLS.
    pub scheme: &'static str,
    /// Whether it runs in a network namespace of its own (loopback only):
    /// clients then run through [`Server::command`].
    pub netns: bool,
    /// The self-signed certificate a TLS server made at start.
    pub ca: Option<PathBuf>,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Self::start_args(data_dir, &[])
    }

    /// Starts the server with `config` (TOML) as its configuration file.
    pub fn start_with_config(data_dir: &Path, config: &str) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        Self::start_args(data_dir, &["--config", path.to_str().unwrap()])
    }

    /// Starts the server on a given port (0: any), e.g. to restart it
    /// where its producers expect it.
    pub fn start_on(data_dir: &Path, port: u16) -> Server {
        Self::start_args(data_dir, &["--listen", &format!("127.0.0.1:{port}")])
    }

    pub fn start_args(data_dir: &Path, args: &[&str]) -> Server {
        Self::spawn(data_dir, args, false)
    }

    /// Starts the server alone in a new network namespace where only
    /// loopback exists (WebRTC peers offer candidates on every interface
    /// they see), with `config`. Its clients run through [`Server::command`].
    pub fn start_in_netns(data_dir: &Path, config: &str) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn(data_dir, &["--config", path.to_str().unwrap()], true)
    }

    /// Starts the server with `config` under an open-file limit of
    /// `open_files` (soft and hard, so it cannot raise it).
    pub fn start_with_open_files(data_dir: &Path, config: &str, open_files: u64) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        Self::spawn_in(
            data_dir,
            &["--config", path.to_str().unwrap()],
            false,
            Some(open_files),
        )
    }

    fn spawn(data_dir: &Path, args: &[&str], netns: bool) -> Server {
        Self::spawn_in(data_dir, args, netns, None)
    }

    fn spawn_in(data_dir: &Path, args: &[&str], netns: bool, open_files: Option<u64>) -> Server {
        // `unshare`, `sh` and `prlimit` exec in place, so the child's pid is
        // the server's: its namespace is /proc/<pid>/ns/net.
        let mut cmd = if let Some(n) = open_files {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_kinema"));
            c
        } else if netns {
            let mut c = Command::new("unshare");
            c.args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" \"$@\"",
            ])
            .arg(env!("CARGO_BIN_EXE_kinema"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_kinema"))
        };
        let listen = if args.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        cmd.arg("serve")
            .args(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("KINEMA_ACCESS_KEY_ID", KEY_ID)
            .env("KINEMA_SECRET_ACCESS_KEY", SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kinema");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel::<(u16, &'static str)>();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                for scheme in ["http", "https"] {
                    let marker = format!("listening on {scheme}://127.0.0.1:");
                    if !sent && let Some(rest) = line.split(&marker).nth(1) {
                        let port: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        let scheme = if scheme == "https" { "https" } else { "http" };
                        let _ = tx.send((port.parse::<u16>().expect("port"), scheme));
                        sent = true;
                    }
                }
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let Ok((port, scheme)) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "the server did not log its address within 30 s:\n{}",
                log.lock().unwrap()
            );
        };
        Server {
            child,
            port,
            scheme,
            netns,
            ca: (scheme == "https").then(|| data_dir.join("self-signed.pem")),
            log,
        }
    }

    /// A process that serves Kinema's API on `port` without being a
    /// Kinema server itself (a load balancer in front of several).
    pub fn adopt(child: Child, port: u16) -> Server {
        Server {
            child,
            port,
            scheme: "http",
            netns: false,
            ca: None,
            log: Default::default(),
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// A command that runs where the server is reachable (inside its
    /// network namespace, if it has one).
    pub fn command(&self, program: &str) -> Command {
        if self.netns {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/proc/{}/ns/net", self.child.id()))
                .arg("--")
                .arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Where cargo put `libgstkinema.so` (the Makefile builds it before tests).
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(
        dir.join("libgstkinema.so").exists(),
        "{} has no libgstkinema.so: run `cargo build -p gst-plugin-kinema` first (make test does)",
        dir.display()
    );
    dir
}

pub fn repo_root() -> PathBuf {
    // Read at run time: a binary built from another checkout sharing the
    // target directory would otherwise point at that checkout.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest).join("../..").canonicalize().unwrap()
}

/// The Python with boto3 installed by `scripts/setup.sh` (KINEMA_PYTHON).
pub fn python() -> String {
    std::env::var("KINEMA_PYTHON").unwrap_or_else(|_| {
        let venv = PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/kinema/venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    })
}

fn aws_cli() -> String {
    let py = PathBuf::from(python());
    py.with_file_name("aws").display().to_string()
}

/// Runs the AWS CLI against the server: (succeeded, stdout, stderr).
pub fn run_aws(server: &Server, args: &[&str]) -> (bool, String, String) {
    run_aws_as(server, (KEY_ID, SECRET), args)
}

/// [`run_aws`] with another access key.
pub fn run_aws_as(
    server: &Server,
    (key, secret): (&str, &str),
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new(aws_cli())
        .args(args)
        .args(["--endpoint-url", &server.url(), "--output", "json"])
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run aws");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Runs a script from tests/python with the server's endpoint and keys;
/// panics with its output unless it exits 0. Returns its stdout.
/// `tests/python/<script> args...` pointed at `server` with the test key
/// (to run in the background: the caller spawns it).
pub fn python_command(server: &Server, script: &str, args: &[&str]) -> Command {
    let path = repo_root().join("tests/python").join(script);
    let mut cmd = server.command(&python());
    if let Some(ca) = &server.ca {
        // boto3 and the AWS CLI trust the server's self-signed certificate.
        cmd.env("KINEMA_CA", ca).env("AWS_CA_BUNDLE", ca);
    }
    cmd.arg(&path)
        .args(args)
        .env("KINEMA_ENDPOINT", server.url())
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", "us-east-1");
    cmd
}

pub fn run_python(server: &Server, script: &str, args: &[&str]) -> String {
    let out = python_command(server, script, args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    stdout
}

/// The GStreamer producer of the README: `frames` frames of 320x240 at
/// 30 fps, a keyframe every `gop` frames, Matroska on stdout.
pub fn gst_producer(frames: u32, gop: u32, live: bool) -> String {
    format!(
        "gst-launch-1.0 -q videotestsrc is-live={live} num-buffers={frames} \
         ! video/x-raw,width=320,height=240,framerate=30/1,format=I420 \
         ! x264enc tune=zerolatency key-int-max={gop} ! video/x-h264,profile=constrained-baseline \
         ! h264parse ! matroskamux streamable=true ! fdsink fd=1"
    )
}

/// A shell pipeline: the GStreamer producer piped into curl's SigV4 PutMedia.
pub fn gst_curl_command(
    server: &Server,
    stream: &str,
    frames: u32,
    gop: u32,
    live: bool,
) -> String {
    format!(
        "{} | curl -sS -N --aws-sigv4 'aws:amz:us-east-1:kinesisvideo' --user {KEY_ID}:{SECRET} \
         -X POST -T - -H 'x-amzn-stream-name: {stream}' -H 'x-amzn-fragment-timecode-type: RELATIVE' \
         -H \"x-amzn-producer-start-timestamp: $(date +%s.%N | cut -c1-14)\" {}/putMedia",
        gst_producer(frames, gop, live),
        server.url()
    )
}

/// Runs the gst | curl producer to completion; returns the ACK lines.
pub fn put_with_gst_curl(
    server: &Server,
    stream: &str,
    frames: u32,
    gop: u32,
    live: bool,
) -> Vec<serde_json::Value> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(gst_curl_command(server, stream, frames, gop, live))
        .output()
        .expect("run gst | curl");
    assert!(
        out.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_acks(&out.stdout)
}

pub fn parse_acks(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("ack line {l:?}: {e}")))
        .collect()
}

pub fn acks_of<'a>(acks: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    acks.iter().filter(|a| a["EventType"] == kind).collect()
}

/// Creates a stream with boto3.
pub fn create_stream(server: &Server, name: &str, retention_hours: u32) {
    run_python(
        server,
        "kv.py",
        &["create", name, &retention_hours.to_string()],
    );
}

/// Frames and their presentation times as GStreamer's matroskademux reads a file.
pub fn gst_demux_pts(file: &Path) -> Vec<String> {
    let out = Command::new("gst-launch-1.0")
        .args(["-v", "filesrc"])
        .arg(format!("location={}", file.display()))
        .args(["!", "matroskademux", "!", "fakesink", "silent=false"])
        .output()
        .expect("run gst-launch");
    assert!(
        out.status.success(),
        "matroskademux failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("chain"))
        .filter_map(|l| {
            l.split("pts: ")
                .nth(1)?
                .split(',')
                .next()
                .map(str::to_string)
        })
        .collect()
}

/// Frames counted by ffprobe (decoding every frame).
pub fn ffprobe_frames(file: &Path) -> u64 {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(file)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_end_matches(',')
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe output {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// Waits until `f` returns Some, polling every 50 ms, at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

pub fn read_to_string(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// A request to Kinema's own JSON API, signed by curl's `--aws-sigv4`:
/// (HTTP status, parsed JSON body or `null`).
pub fn api(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut cmd = server.command("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(["--aws-sigv4", "aws:amz:us-east-1:kinesisvideo"])
        .args(["--user", &format!("{KEY_ID}:{SECRET}"), "-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("{}{path}", server.url())).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status.trim().parse().unwrap_or(0), value)
}

/// A small H.264 MP4 clip made with GStreamer: 176x144 at 30 fps.
pub fn make_mp4(path: &Path, frames: u32, gop: u32) {
    kinema_media::rtsp_server::write_test_clip(path, frames, gop).unwrap();
}

/// How [`signed_raw`] signs: a key, the scope, and whether the body's hash
/// is signed (else `UNSIGNED-PAYLOAD`).
pub struct Signer<'a> {
    pub key: &'a str,
    pub secret: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub sign_body: bool,
}

impl<'a> From<(&'a str, &'a str, &'a str)> for Signer<'a> {
    /// `(key, secret, service)` in us-east-1, body signed.
    fn from((key, secret, service): (&'a str, &'a str, &'a str)) -> Self {
        Signer {
            key,
            secret,
            region: "us-east-1",
            service,
            sign_body: true,
        }
    }
}

/// A SigV4-signed request written by hand on a fresh connection (so a
/// test controls every header and byte); returns the status and the whole
/// response.
pub fn signed_raw<'a>(
    server: &Server,
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    body: &[u8],
    signer: impl Into<Signer<'a>>,
) -> (u16, String) {
    use std::io::Write;
    let signer = signer.into();
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", server.url()))
        .header("host", format!("127.0.0.1:{}", server.port));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    kinema_server::put_media::sign_request(
        &mut req,
        signer.key,
        signer.secret,
        signer.region,
        signer.service,
        signer.sign_body.then_some(body),
    )
    .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .unwrap();
    for (k, v) in req.headers() {
        write!(s, "{k}: {}\r\n", v.to_str().unwrap()).unwrap();
    }
    write!(s, "\r\n").unwrap();
    s.write_all(body).unwrap();
    let resp = read_to_string(&mut s);
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, resp)
}

/// GetMedia from the earliest fragment with boto3 into `<dir>/<stream>.mkv`:
/// the file and what the script reports (fragment numbers, tags).
pub fn get_media(server: &Server, stream: &str, dir: &Path) -> (PathBuf, serde_json::Value) {
    let file = dir.join(format!("{stream}.mkv"));
    let out = run_python(
        server,
        "kv.py",
        &["getmedia", stream, "EARLIEST", "", file.to_str().unwrap()],
    );
    (file, serde_json::from_str(&out).unwrap())
}

/// How many frames matroskademux reads from a file, and how many distinct
/// presentation times they have (equal when no frame is stored twice).
pub fn demuxed_frames_and_distinct(file: &Path) -> (usize, usize) {
    let pts = gst_demux_pts(file);
    let mut distinct = pts.clone();
    distinct.sort();
    distinct.dedup();
    (pts.len(), distinct.len())
}
