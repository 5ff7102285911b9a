//! `kinema get-media`: reads a stream with GetMedia into playable Matroska
//! files, one per Segment of the response.
//!
//! A GetMedia response is one Matroska document per run of fragments with
//! the same track header: when the camera's codec parameters change (a new
//! resolution, a new encoder, another camera uploading into the stream),
//! a new EBML header and Segment start. Players read the first Segment of
//! a file and stop or stumble at the second, so this command writes each
//! Segment to a file of its own: `out.mkv`, `out-2.mkv`, `out-3.mkv`, ...

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use kinema_mkv::{Event, Reader, ReaderLimits};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::client_args::ClientArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Stream to read.
    #[arg(long)]
    pub stream: String,
    /// Where to start: EARLIEST, NOW, or a producer timestamp (RFC 3339
    /// like 2026-12-07T14:03:10Z, or Unix seconds).
    #[arg(long, default_value = "EARLIEST", conflicts_with = "fragment")]
    pub start: String,
    /// Start at this fragment number instead.
    #[arg(long)]
    pub fragment: Option<String>,
    /// Stop after this many fragments (default: until the response ends,
    /// a few seconds after the newest fragment when no producer is
    /// connected).
    #[arg(long)]
    pub fragments: Option<u64>,
    /// The Matroska file to write; further Segments go to FILE-2.mkv, ...
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// The GetMedia `StartSelector` for `--start` and `--fragment`.
fn start_selector(start: &str, fragment: Option<&str>) -> anyhow::Result<serde_json::Value> {
    if let Some(n) = fragment {
        return Ok(json!({ "StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": n }));
    }
    let upper = start.to_ascii_uppercase();
    if upper == "EARLIEST" || upper == "NOW" {
        return Ok(json!({ "StartSelectorType": upper }));
    }
    let seconds = match start.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => s,
        _ => {
            let t =
                time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339)
                    .with_context(|| {
                        format!(
                            "--start {start:?}: expected EARLIEST, NOW, RFC 3339 or Unix seconds"
                        )
                    })?;
            t.unix_timestamp_nanos() as f64 / 1e9
        }
    };
    Ok(json!({ "StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": seconds }))
}

/// `FILE`, then `FILE-2.ext`, `FILE-3.ext`, ... for later Segments.
fn numbered(path: &Path, n: usize) -> PathBuf {
    if n <= 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{n}"),
    };
    path.with_file_name(name)
}

/// Cuts a byte stream of concatenated Matroska documents into documents:
/// [`Splitter::push`] says, for each chunk, which bytes go to the current
/// file and where a new file starts.
struct Splitter {
    reader: Reader,
    /// Stream offset of the first byte not yet handed out.
    handed: u64,
    /// Bytes from `handed` on.
    pending: Vec<u8>,
    segments: usize,
    clusters: u64,
}

/// What to do with the bytes of a pushed chunk, in order.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// Append to the current file.
    Write(Vec<u8>),
    /// Close the current file; what follows is a new document.
    NewFile,
    /// A fragment (Cluster) starts.
    Fragment,
}

impl Splitter {
    fn new() -> Self {
        Splitter {
            reader: Reader::new(ReaderLimits::default()),
            handed: 0,
            pending: Vec::new(),
            segments: 0,
            clusters: 0,
        }
    }

    fn take_until(&mut self, offset: u64, out: &mut Vec<Cut>) {
        let n = (offset.saturating_sub(self.handed) as usize).min(self.pending.len());
        if n > 0 {
            out.push(Cut::Write(self.pending.drain(..n).collect()));
            self.handed += n as u64;
        }
    }

    fn push(&mut self, chunk: &[u8]) -> Vec<Cut> {
        self.pending.extend_from_slice(chunk);
        self.reader.push(chunk);
        let mut out = Vec::new();
        loop {
            match self.reader.poll_event() {
                Ok(Some(Event::SegmentStart { .. })) => self.segments += 1,
                Ok(Some(Event::SegmentEnd { offset })) => {
                    // A new EBML document follows at `offset` (or the input
                    // ends): everything before it is the current file's.
                    self.take_until(offset, &mut out);
                    out.push(Cut::NewFile);
                }
                Ok(Some(Event::ClusterStart { .. })) => {
                    self.clusters += 1;
                    out.push(Cut::Fragment);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                // Damage is the server's bytes as they are: keep them, and
                // the reader resynchronises on the next Cluster.
                Err(_) => {}
            }
        }
        // Consumed bytes can never fall into a later document.
        let consumed = self.reader.position();
        self.take_until(consumed, &mut out);
        out
    }

    /// The bytes still held when the input ends.
    fn finish(&mut self) -> Vec<u8> {
        self.handed += self.pending.len() as u64;
        std::mem::take(&mut self.pending)
    }
}

struct Output {
    base: PathBuf,
    index: usize,
    file: Option<(PathBuf, tokio::fs::File, u64)>,
    written: Vec<(PathBuf, u64)>,
}

impl Output {
    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.file.is_none() {
            self.index += 1;
            let path = numbered(&self.base, self.index);
            let f = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?;
            self.file = Some((path, f, 0));
        }
        if let Some((path, f, _)) = self.file.as_mut() {
            f.write_all(bytes)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    fn fragment(&mut self) {
        if let Some((_, _, n)) = self.file.as_mut() {
            *n += 1;
        }
    }

    async fn close(&mut self) -> anyhow::Result<()> {
        if let Some((path, mut f, n)) = self.file.take() {
            f.flush().await?;
            self.written.push((path, n));
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let body = json!({
        "StreamName": args.stream,
        "StartSelector": start_selector(&args.start, args.fragment.as_deref())?,
    });
    let response = client
        .open(http::Method::POST, "/getMedia", "kinesisvideo", body)
        .await?;
    let mut body = response.into_body();
    let mut splitter = Splitter::new();
    let mut out = Output {
        base: args.output.clone(),
        index: 0,
        file: None,
        written: Vec::new(),
    };
    // The fragment count is checked at each Cluster start: the one that
    // would exceed it ends the output before any of its bytes.
    let limit = args.fragments;
    let mut fragments = 0u64;
    'read: while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("GetMedia response broke off")?.into_data() else {
            continue;
        };
        for piece in splitter.push(&data) {
            match piece {
                Cut::Write(bytes) => out.write(&bytes).await?,
                Cut::NewFile => out.close().await?,
                Cut::Fragment => {
                    if limit.is_some_and(|l| fragments >= l) {
                        // Bytes of the Cluster already handed out belong to
                        // a fragment not wanted: keep only what came before.
                        break 'read;
                    }
                    fragments += 1;
                    out.fragment();
                }
            }
        }
    }
    if limit.is_none_or(|l| fragments < l) {
        let rest = splitter.finish();
        if !rest.is_empty() {
            out.write(&rest).await?;
        }
    }
    out.close().await?;
    if out.written.is_empty() {
        bail!("GetMedia returned nothing for {}", args.stream);
    }
    for (path, n) in &out.written {
        eprintln!("{}: {n} fragments", path.display());
    }
    if out.written.len() > 1 {
        eprintln!(
            "the track changed within the range: {} files, one per Matroska segment",
            out.written.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kinema_mkv::mux::{Frame, Muxer, Piece, VideoTrack};

    use super::*;

    fn document(width: u32, fragments: u64) -> Vec<u8> {
        let track = VideoTrack {
            codec_id: kinema_mkv::mux::CODEC_H264.into(),
            codec_private: vec![1, 2, 3],
            width,
            height: 240,
        };
        let mut out = Muxer::header(&track);
        let mut mux = Muxer::new(1000);
        for i in 0..fragments * 10 {
            let frame = Frame {
                pts_ns: i * 100_000_000,
                keyframe: i % 10 == 0,
                data: vec![i as u8; 50].into(),
            };
            for p in mux.push(&frame).unwrap() {
                match p {
                    Piece::Cluster { bytes, .. } | Piece::Block { bytes } => out.extend(bytes),
                }
            }
        }
        out
    }

    /// Runs `input` through a splitter in chunks of `chunk` bytes:
    /// the documents it cut and the fragments of each.
    fn split(input: &[u8], chunk: usize) -> Vec<(Vec<u8>, u64)> {
        let mut s = Splitter::new();
        let mut files = vec![(Vec::new(), 0)];
        for c in input.chunks(chunk) {
            for cut in s.push(c) {
                match cut {
                    Cut::Write(b) => files.last_mut().unwrap().0.extend(b),
                    Cut::NewFile => files.push((Vec::new(), 0)),
                    Cut::Fragment => files.last_mut().unwrap().1 += 1,
                }
            }
        }
        files.last_mut().unwrap().0.extend(s.finish());
        files.retain(|(b, _)| !b.is_empty());
        files
    }

    #[test]
    fn one_document_stays_one_file() {
        let doc = document(320, 3);
        for chunk in [1, 7, 100, doc.len()] {
            assert_eq!(split(&doc, chunk), vec![(doc.clone(), 3)], "chunk {chunk}");
        }
    }

    #[test]
    fn a_new_track_header_starts_a_new_file() {
        let (a, b) = (document(320, 2), document(640, 3));
        let both = [a.clone(), b.clone()].concat();
        for chunk in [1, 5, 64, both.len()] {
            assert_eq!(split(&both, chunk), vec![(a.clone(), 2), (b.clone(), 3)]);
        }
    }

    #[test]
    fn later_files_are_numbered_beside_the_first() {
        let p = Path::new("/tmp/cam1.mkv");
        assert_eq!(numbered(p, 1), PathBuf::from("/tmp/cam1.mkv"));
        assert_eq!(numbered(p, 2), PathBuf::from("/tmp/cam1-2.mkv"));
        assert_eq!(numbered(Path::new("out"), 3), PathBuf::from("out-3"));
    }

    #[test]
    fn start_selectors_follow_the_api() {
        assert_eq!(
            start_selector("earliest", None).unwrap()["StartSelectorType"],
            "EARLIEST"
        );
        let t = start_selector("2026-12-07T14:03:10Z", None).unwrap();
        assert_eq!(t["StartSelectorType"], "PRODUCER_TIMESTAMP");
        assert_eq!(t["StartTimestamp"], 1_796_652_190.0);
        assert_eq!(
            start_selector("1796652190.5", None).unwrap()["StartTimestamp"],
            1_796_652_190.5
        );
        let f = start_selector("EARLIEST", Some("00000000000000000042")).unwrap();
        assert_eq!(f["AfterFragmentNumber"], "00000000000000000042");
        assert!(start_selector("yesterday", None).is_err());
    }
}
