//! Playback of stored video, without HTTP: HLS and DASH sessions (random
//! tokens held in memory until they expire, bounded per stream; or, in a
//! cluster, self-contained tokens signed with a key every node shares; the
//! fragments a session lists now), their init and media segments, MP4
//! clips and still images. Planning is sans-IO (`kinema-hls::session`,
//! `kinema-archive::plan`); remuxing (`kinema-remux`) and decoding
//! (`kinema-media`) run on blocking threads, never on the async ones.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kinema_archive::plan;
use kinema_archive::{FragmentMeta, TimeKind};
use kinema_core::aws::MAX_MEDIA_RANGE_MS;
use kinema_core::sync::lock;
use kinema_hls::session::{Candidate, Mode, Selection, default_max_fragments};
use kinema_hls::{Container, Discontinuity};
use kinema_media::images::{EncodedFrame, StillRequest, render_stills};
use kinema_remux::Fragment;

use crate::{Engine, EngineError, PlaybackSpan, StreamInfo};

pub use kinema_media::images::ImageFormat;

/// Which API a session token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Hls,
    Dash,
}

/// The container of a media segment. A new container is one variant here
/// (its content type and remux) and one route in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFormat {
    /// A `moof`+`mdat` fragment after the session's init segment.
    Mp4,
    /// MPEG-TS, self-contained.
    Ts,
}

impl SegmentFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            SegmentFormat::Mp4 => "video/mp4",
            SegmentFormat::Ts => "video/mp2t",
        }
    }

    /// The HLS container whose sessions serve this format.
    fn container(self) -> Container {
        match self {
            SegmentFormat::Mp4 => Container::FragmentedMp4,
            SegmentFormat::Ts => Container::MpegTs,
        }
    }
}

/// What a client asked for when creating a session (values already parsed).
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub protocol: Protocol,
    pub name: Option<String>,
    pub arn: Option<String>,
    pub mode: Mode,
    pub kind: TimeKind,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// Seconds the session lives (300 to 43200; 300 when absent).
    pub expires_s: Option<i64>,
    /// Fragments listed at most (1 to 5000; the mode's default when absent).
    pub max_fragments: Option<i64>,
    pub container: Container,
    pub discontinuity: Discontinuity,
    pub program_date_time: bool,
}

/// An open session: what its playlists and segments are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub protocol: Protocol,
    pub stream: String,
    /// The stream's identity: a deleted and re-created stream ends it.
    pub stream_id: String,
    pub kind: TimeKind,
    pub selection: Selection,
    pub container: Container,
    pub discontinuity: Discontinuity,
    pub program_date_time: bool,
    pub expires_ms: i64,
    /// Wall-clock time (on the selector clock) of media time zero.
    pub origin_ms: i64,
    /// The fragment whose track header makes the init segment.
    pub init_fragment: u64,
    pub codecs: String,
    pub width: u32,
    pub height: u32,
    pub bandwidth: u64,
}

/// The fragments a session lists now.
#[derive(Debug, Clone)]
pub struct Window {
    /// No more fragments will be listed (a closed range has passed).
    pub ended: bool,
    pub fragments: Vec<FragmentMeta>,
}

/// One GetImages request (values already parsed and range-checked).
#[derive(Debug, Clone)]
pub struct ImagesRequest {
    pub name: Option<String>,
    pub arn: Option<String>,
    pub kind: TimeKind,
    pub start_ms: i64,
    pub end_ms: i64,
    pub interval_ms: i64,
    pub format: ImageFormat,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The page: from the `first`th sample time, at most `max`.
    pub first: i64,
    pub max: i64,
}

/// Why a sample time has no image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StillError {
    /// No stored fragment holds the time.
    NoMedia,
    /// The fragment holding it could not be read or decoded.
    MediaError,
}

/// One sample time of GetImages and its image.
#[derive(Debug, Clone)]
pub struct Still {
    pub time_ms: i64,
    pub image: Result<Vec<u8>, StillError>,
}

/// One page of stills, and where the next page starts.
#[derive(Debug, Clone)]
pub struct StillsPage {
    pub stills: Vec<Still>,
    pub next: Option<i64>,
}

/// The playback service: the engine and the open sessions. Cheap to clone.
#[derive(Clone)]
pub struct Playback {
    engine: Engine,
    sessions: Arc<Sessions>,
    /// Set in a cluster: sessions live in their tokens, signed with this.
    signing: Option<[u8; 32]>,
}

/// Open sessions by token.
struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    per_stream: usize,
}

impl Sessions {
    fn insert(&self, session: Session, now: i64) -> Result<String, EngineError> {
        let mut map = lock(&self.map);
        map.retain(|_, s| s.expires_ms > now);
        let open = map
            .values()
            .filter(|s| s.stream_id == session.stream_id)
            .count();
        if open >= self.per_stream {
            return Err(EngineError::ClientLimitExceeded(format!(
                "stream {} already has {open} open playback sessions (the limit)",
                session.stream
            )));
        }
        let mut raw = [0u8; 24];
        getrandom::getrandom(&mut raw)
            .map_err(|e| EngineError::Internal(format!("no randomness for a token: {e}")))?;
        let token = hex::encode(raw);
        map.insert(token.clone(), session);
        Ok(token)
    }

    fn get(&self, token: &str, now: i64) -> Result<Session, EngineError> {
        match lock(&self.map).get(token) {
            Some(s) if s.expires_ms > now => Ok(s.clone()),
            Some(_) => Err(EngineError::NotAuthorized(
                "the playback session has expired".into(),
            )),
            None => Err(EngineError::NotAuthorized(
                "the session token is not valid".into(),
            )),
        }
    }
}

/// Sessions carried in their tokens: `v1.<base64url JSON>.<base64url of
/// the first 16 bytes of its HMAC-SHA256>`.
mod signed {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::{Hmac, Mac};
    use kinema_archive::TimeKind;
    use kinema_hls::session::{Mode, Selection};
    use kinema_hls::{Container, Discontinuity};
    use serde::{Deserialize, Serialize};
    use sha2::Sha256;

    use super::{Protocol, Session};

    const TAG: usize = 16;

    /// A session in short field names (the token rides in every URL).
    #[derive(Serialize, Deserialize)]
    struct Claims {
        p: u8,
        s: String,
        i: String,
        k: u8,
        m: u8,
        a: Option<i64>,
        b: Option<i64>,
        n: usize,
        c: u8,
        d: u8,
        t: bool,
        e: i64,
        o: i64,
        f: u64,
        x: String,
        w: u32,
        h: u32,
        r: u64,
    }

    fn mac(key: &[u8; 32], body: &str) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(b"kinema playback session v1\0");
        m.update(body.as_bytes());
        m
    }

    pub(super) fn encode(s: &Session, key: &[u8; 32]) -> String {
        let claims = Claims {
            p: match s.protocol {
                Protocol::Hls => 0,
                Protocol::Dash => 1,
            },
            s: s.stream.clone(),
            i: s.stream_id.clone(),
            k: match s.kind {
                TimeKind::Producer => 0,
                TimeKind::Server => 1,
            },
            m: match s.selection.mode {
                Mode::Live => 0,
                Mode::LiveReplay => 1,
                Mode::OnDemand => 2,
            },
            a: s.selection.start_ms,
            b: s.selection.end_ms,
            n: s.selection.max_fragments,
            c: match s.container {
                Container::FragmentedMp4 => 0,
                Container::MpegTs => 1,
            },
            d: match s.discontinuity {
                Discontinuity::Always => 0,
                Discontinuity::Never => 1,
                Discontinuity::OnDiscontinuity => 2,
            },
            t: s.program_date_time,
            e: s.expires_ms,
            o: s.origin_ms,
            f: s.init_fragment,
            x: s.codecs.clone(),
            w: s.width,
            h: s.height,
            r: s.bandwidth,
        };
        let json = serde_json::to_vec(&claims).expect("claims serialise");
        let body = B64.encode(json);
        let tag = mac(key, &body).finalize().into_bytes();
        format!("v1.{body}.{}", B64.encode(&tag[..TAG]))
    }

    /// The session of a token this key signed, `None` for anything else.
    pub(super) fn decode(token: &str, key: &[u8; 32]) -> Option<Session> {
        let rest = token.strip_prefix("v1.")?;
        let (body, tag) = rest.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        if tag.len() != TAG {
            return None;
        }
        mac(key, body).verify_truncated_left(&tag).ok()?;
        let c: Claims = serde_json::from_slice(&B64.decode(body).ok()?).ok()?;
        Some(Session {
            protocol: [Protocol::Hls, Protocol::Dash]
                .get(usize::from(c.p))
                .copied()?,
            stream: c.s,
            stream_id: c.i,
            kind: [TimeKind::Producer, TimeKind::Server]
                .get(usize::from(c.k))
                .copied()?,
            selection: Selection {
                mode: [Mode::Live, Mode::LiveReplay, Mode::OnDemand]
                    .get(usize::from(c.m))
                    .copied()?,
                start_ms: c.a,
                end_ms: c.b,
                max_fragments: c.n,
            },
            container: [Container::FragmentedMp4, Container::MpegTs]
                .get(usize::from(c.c))
                .copied()?,
            discontinuity: [
                Discontinuity::Always,
                Discontinuity::Never,
                Discontinuity::OnDiscontinuity,
            ]
            .get(usize::from(c.d))
            .copied()?,
            program_date_time: c.t,
            expires_ms: c.e,
            origin_ms: c.o,
            init_fragment: c.f,
            codecs: c.x,
            width: c.w,
            height: c.h,
            bandwidth: c.r,
        })
    }
}

fn invalid(m: &str) -> EngineError {
    EngineError::InvalidArgument(m.into())
}

impl Playback {
    /// At most `per_stream` unexpired sessions per stream.
    pub fn new(engine: Engine, per_stream: usize) -> Playback {
        Playback {
            engine,
            sessions: Arc::new(Sessions {
                map: Mutex::new(HashMap::new()),
                per_stream: per_stream.max(1),
            }),
            signing: None,
        }
    }

    /// Sessions in self-contained tokens signed with `key` (HMAC-SHA256),
    /// so that any node sharing the key serves a session another node
    /// opened, across restarts. Nothing is held per session, so the
    /// per-stream bound does not apply.
    pub fn with_signed_tokens(mut self, key: [u8; 32]) -> Playback {
        self.signing = Some(key);
        self
    }

    fn now_ms(&self) -> i64 {
        self.engine.clock().now_ms()
    }

    /// A stream that keeps data (retention above zero).
    fn archived(&self, name: Option<&str>, arn: Option<&str>) -> Result<StreamInfo, EngineError> {
        let info = self.engine.describe_stream(name, arn)?;
        if info.retention_hours == 0 {
            return Err(EngineError::NoDataRetention(format!(
                "stream {} keeps no data (retention 0)",
                info.name
            )));
        }
        Ok(info)
    }

    /// Validates a session request against the stream's fragments and
    /// opens the session; returns its token.
    pub async fn open(&self, req: SessionRequest) -> Result<String, EngineError> {
        let (mode, start, end) = (req.mode, req.start_ms, req.end_ms);
        match mode {
            Mode::Live if start.is_some() || end.is_some() => {
                return Err(invalid("TimestampRange must not be set in LIVE mode"));
            }
            Mode::LiveReplay if start.is_none() => {
                return Err(invalid("LIVE_REPLAY needs TimestampRange.StartTimestamp"));
            }
            Mode::OnDemand if start.is_none() || end.is_none() => {
                return Err(invalid(
                    "ON_DEMAND needs TimestampRange.StartTimestamp and EndTimestamp",
                ));
            }
            _ => {}
        }
        if let (Some(s), Some(e)) = (start, end) {
            if e <= s {
                return Err(invalid("EndTimestamp must be after StartTimestamp"));
            }
            if mode == Mode::OnDemand && e - s > MAX_MEDIA_RANGE_MS {
                return Err(invalid("an ON_DEMAND range spans at most 3 hours"));
            }
        }
        let expires = req.expires_s.unwrap_or(300);
        if !(300..=43_200).contains(&expires) {
            return Err(invalid("Expires must be between 300 and 43200 seconds"));
        }
        let max = req
            .max_fragments
            .unwrap_or(default_max_fragments(mode) as i64);
        if !(1..=5000).contains(&max) {
            return Err(invalid(
                "the maximum fragment count must be between 1 and 5000",
            ));
        }
        let info = self.archived(req.name.as_deref(), req.arn.as_deref())?;
        let selection = Selection {
            mode,
            start_ms: start,
            end_ms: end,
            max_fragments: max as usize,
        };
        let now = self.now_ms();
        let w = self.window_of(&info.name, req.kind, &selection, now)?;
        let Some(first) = w.fragments.first() else {
            return Err(EngineError::ResourceNotFound(
                "no fragments were found in the stream for the requested range".into(),
            ));
        };
        let (meta, frag) = self.load(&info.name, first.number).await?;
        let session = Session {
            protocol: req.protocol,
            stream: info.name.clone(),
            stream_id: info.id.clone(),
            kind: req.kind,
            selection,
            container: req.container,
            discontinuity: req.discontinuity,
            program_date_time: req.program_date_time,
            expires_ms: now + expires * 1000,
            origin_ms: meta.time(req.kind),
            init_fragment: meta.number,
            codecs: frag.track.codec_string(),
            width: frag.track.width,
            height: frag.track.height,
            bandwidth: u64::from(meta.size) * 8 * 1000 / u64::from(meta.duration_ms.max(1)),
        };
        match &self.signing {
            Some(key) => Ok(signed::encode(&session, key)),
            None => self.sessions.insert(session, now),
        }
    }

    /// The unexpired session of `token` for `protocol`; a stream deleted
    /// (or deleted and re-created) since ends its sessions.
    pub fn session(&self, token: &str, protocol: Protocol) -> Result<Session, EngineError> {
        let s = match &self.signing {
            Some(key) => {
                let s = signed::decode(token, key).ok_or_else(|| {
                    EngineError::NotAuthorized("the session token is not valid".into())
                })?;
                if s.expires_ms <= self.now_ms() {
                    return Err(EngineError::NotAuthorized(
                        "the playback session has expired".into(),
                    ));
                }
                s
            }
            None => self.sessions.get(token, self.now_ms())?,
        };
        if s.protocol != protocol {
            return Err(EngineError::NotAuthorized(
                "the session token is not valid for this protocol".into(),
            ));
        }
        match self.engine.describe_stream(Some(&s.stream), None) {
            Ok(info) if info.id == s.stream_id => Ok(s),
            _ => Err(EngineError::ResourceNotFound(format!(
                "stream {} no longer exists",
                s.stream
            ))),
        }
    }

    /// The fragments the session lists now, and the time it was asked at.
    pub fn window(&self, s: &Session) -> Result<(Window, i64), EngineError> {
        let now = self.now_ms();
        Ok((self.window_of(&s.stream, s.kind, &s.selection, now)?, now))
    }

    fn window_of(
        &self,
        stream: &str,
        kind: TimeKind,
        selection: &Selection,
        now: i64,
    ) -> Result<Window, EngineError> {
        let span = match selection.mode {
            Mode::Live => PlaybackSpan::Newest(selection.max_fragments),
            // A replay also needs to see whether anything follows its end.
            Mode::LiveReplay => PlaybackSpan::Range {
                from_ms: selection.start_ms.unwrap_or(i64::MIN),
                to_ms: i64::MAX,
            },
            Mode::OnDemand => PlaybackSpan::Range {
                from_ms: selection.start_ms.unwrap_or(i64::MIN),
                to_ms: selection.end_ms.unwrap_or(i64::MAX),
            },
        };
        let metas = self.engine.playback_fragments(stream, kind, span)?;
        let candidates: Vec<Candidate> = metas
            .iter()
            .map(|m| Candidate {
                number: m.number,
                start_ms: m.time(kind),
                duration_ms: m.duration_ms,
            })
            .collect();
        let w = selection.window(&candidates, now);
        let by_number: HashMap<u64, &FragmentMeta> = metas.iter().map(|m| (m.number, m)).collect();
        Ok(Window {
            ended: w.ended,
            fragments: w
                .fragments
                .iter()
                .filter_map(|c| by_number.get(&c.number).map(|m| **m))
                .collect(),
        })
    }

    /// A token serves only what its session may list: a LIVE session the
    /// fragments from the first it listed on, a LIVE_REPLAY session those
    /// in its range, an ON_DEMAND session those of its (fixed) window.
    fn check_servable(&self, s: &Session, meta: &FragmentMeta) -> Result<(), EngineError> {
        let candidate = Candidate {
            number: meta.number,
            start_ms: meta.time(s.kind),
            duration_ms: meta.duration_ms,
        };
        let servable = match s.selection.mode {
            Mode::Live => meta.number >= s.init_fragment,
            Mode::LiveReplay => s.selection.covers(&candidate),
            Mode::OnDemand => {
                s.selection.covers(&candidate)
                    && self
                        .window_of(&s.stream, s.kind, &s.selection, self.now_ms())?
                        .fragments
                        .iter()
                        .any(|m| m.number == meta.number)
            }
        };
        if servable {
            Ok(())
        } else {
            Err(EngineError::NotAuthorized(format!(
                "the session does not include fragment {}",
                crate::fragment_number_string(meta.number)
            )))
        }
    }

    /// Loads one stored fragment and parses it off the async threads.
    async fn load(
        &self,
        stream: &str,
        number: u64,
    ) -> Result<(FragmentMeta, Fragment), EngineError> {
        let (meta, object) = self.engine.fragment(stream, number).await?;
        let frag = blocking(move || kinema_remux::parse_fragment(&object)).await??;
        Ok((meta, frag))
    }

    /// The session's init segment (fMP4), from its first fragment's track,
    /// or from any fragment of its window once that one is trimmed.
    pub async fn init_segment(&self, s: &Session) -> Result<Bytes, EngineError> {
        let frag = match self.load(&s.stream, s.init_fragment).await {
            Ok((_, f)) => f,
            Err(_) => {
                let (w, _) = self.window(s)?;
                let first = w.fragments.first().ok_or_else(|| {
                    EngineError::ResourceNotFound("the session has no fragments left".into())
                })?;
                self.load(&s.stream, first.number).await?.1
            }
        };
        blocking(move || Bytes::from(kinema_remux::mp4::init_segment(&frag.track, 0))).await
    }

    /// One media segment of the session, remuxed from a stored fragment.
    pub async fn media_segment(
        &self,
        s: &Session,
        number: u64,
        format: SegmentFormat,
    ) -> Result<Bytes, EngineError> {
        if format.container() != s.container {
            return Err(invalid("the session uses the other container format"));
        }
        let (meta, frag) = self.load(&s.stream, number).await?;
        self.check_servable(s, &meta)?;
        let start = meta.time(s.kind) - s.origin_ms;
        blocking(move || {
            let times = kinema_remux::timing(&frag, start, meta.duration_ms);
            Bytes::from(match format {
                SegmentFormat::Ts => kinema_remux::ts::segment(&frag, &times),
                SegmentFormat::Mp4 => {
                    let sequence = (number % u64::from(u32::MAX)).max(1) as u32;
                    kinema_remux::mp4::media_segment(sequence, &frag, &times)
                }
            })
        })
        .await
    }

    /// One MP4 of the fragments of a time range (GetClip). It ends where the
    /// camera's codec parameters change (a clip has one sample description).
    pub async fn clip(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
        kind: TimeKind,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Bytes, EngineError> {
        if end_ms <= start_ms {
            return Err(invalid("EndTimestamp must be after StartTimestamp"));
        }
        if end_ms - start_ms > MAX_MEDIA_RANGE_MS {
            return Err(invalid("a clip spans at most 3 hours"));
        }
        let info = self.archived(name, arn)?;
        let selection = Selection {
            mode: Mode::OnDemand,
            start_ms: Some(start_ms),
            end_ms: Some(end_ms),
            max_fragments: plan::CLIP_MAX_FRAGMENTS + 1,
        };
        let frags = self
            .window_of(&info.name, kind, &selection, self.now_ms())?
            .fragments;
        plan::check_clip(&frags).map_err(|e| match e {
            plan::ClipError::NoFragments => EngineError::ResourceNotFound(e.to_string()),
            _ => EngineError::InvalidArgument(e.to_string()),
        })?;
        let origin = frags[0].time(kind);
        let mut parts: Vec<(Fragment, i64, u32)> = Vec::with_capacity(frags.len());
        for meta in &frags {
            let (_, frag) = self.load(&info.name, meta.number).await?;
            if let Some((first, _, _)) = parts.first()
                && frag.track.config != first.track.config
            {
                break;
            }
            parts.push((frag, meta.time(kind) - origin, meta.duration_ms));
        }
        blocking(move || kinema_remux::mp4::clip(&parts))
            .await?
            .map(Bytes::from)
            .ok_or_else(|| EngineError::Internal("the clip could not be assembled".into()))
    }

    /// One page of stills sampled over a range (GetImages): each fragment
    /// holding sample times is read and decoded once for all of them.
    pub async fn stills(&self, req: ImagesRequest) -> Result<StillsPage, EngineError> {
        let info = self.archived(req.name.as_deref(), req.arn.as_deref())?;
        let (times, next) = plan::image_times(
            req.start_ms,
            req.end_ms,
            req.interval_ms,
            req.first,
            req.max,
        );
        let mut stills: Vec<Still> = times
            .iter()
            .map(|t| Still {
                time_ms: *t,
                image: Err(StillError::NoMedia),
            })
            .collect();
        let (Some(&t_first), Some(&t_last)) = (times.first(), times.last()) else {
            return Ok(StillsPage { stills, next });
        };
        let metas = self.engine.playback_fragments(
            &info.name,
            req.kind,
            PlaybackSpan::Range {
                from_ms: t_first,
                to_ms: t_last,
            },
        )?;
        let slot_of: HashMap<i64, usize> = times.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        for (meta, sample_times) in plan::image_plan(&times, &metas, req.kind) {
            let rendered = self.render(&info.name, &meta, &sample_times, &req).await;
            for t in &sample_times {
                let image = match &rendered {
                    Ok(images) => images.get(t).cloned().ok_or(StillError::MediaError),
                    Err(()) => Err(StillError::MediaError),
                };
                stills[slot_of[t]].image = image;
            }
        }
        Ok(StillsPage { stills, next })
    }

    /// The images of the sample times of one fragment, by sample time.
    async fn render(
        &self,
        stream: &str,
        meta: &FragmentMeta,
        sample_times: &[i64],
        req: &ImagesRequest,
    ) -> Result<HashMap<i64, Vec<u8>>, ()> {
        let (_, frag) = self.load(stream, meta.number).await.map_err(|_| ())?;
        let frames: Vec<EncodedFrame> = frag
            .samples
            .iter()
            .map(|s| EncodedFrame {
                pts_ns: s.offset_ns,
                keyframe: s.keyframe,
                data: s.data.clone(),
            })
            .collect();
        let pts: Vec<i64> = frames.iter().map(|f| f.pts_ns).collect();
        let pick = plan::pick_frames(sample_times, meta.time(req.kind), &pts);
        let wanted: Vec<i64> = pick.iter().map(|(_, p)| *p).collect();
        let (width, height) =
            plan::scaled_size((frag.track.width, frag.track.height), req.width, req.height);
        let codec_id = frag.track.codec.matroska_id();
        let config = frag.track.config.clone();
        let format = req.format;
        let stills = blocking(move || {
            render_stills(&StillRequest {
                codec_id,
                config: &config,
                frames: &frames,
                wanted: &wanted,
                format,
                width,
                height,
            })
        })
        .await
        .map_err(|_| ())?;
        let stills = stills.map_err(|e| {
            tracing::warn!(stream, fragment = meta.number, error = %e, "image decoding failed");
        })?;
        Ok(pick
            .into_iter()
            .filter_map(|(t, p)| {
                stills
                    .iter()
                    .find(|(sp, _)| *sp == p)
                    .map(|(_, data)| (t, data.clone()))
            })
            .collect())
    }
}

/// Runs CPU-bound work (remux, decode) on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("a blocking task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(stream_id: &str, expires_ms: i64) -> Session {
        Session {
            protocol: Protocol::Hls,
            stream: "cam".into(),
            stream_id: stream_id.into(),
            kind: TimeKind::Producer,
            selection: Selection {
                mode: Mode::Live,
                start_ms: None,
                end_ms: None,
                max_fragments: 5,
            },
            container: Container::FragmentedMp4,
            discontinuity: Discontinuity::Always,
            program_date_time: false,
            expires_ms,
            origin_ms: 0,
            init_fragment: 1,
            codecs: "avc1.42c01f".into(),
            width: 320,
            height: 240,
            bandwidth: 1,
        }
    }

    #[test]
    fn a_signed_token_carries_its_session_and_nothing_else_passes() {
        let mut s = session("1-cam", 5_000);
        s.selection = Selection {
            mode: Mode::OnDemand,
            start_ms: Some(1_000),
            end_ms: Some(9_000),
            max_fragments: 1000,
        };
        s.container = Container::MpegTs;
        s.discontinuity = Discontinuity::OnDiscontinuity;
        s.kind = TimeKind::Server;
        s.protocol = Protocol::Dash;
        let key = [7u8; 32];
        let token = signed::encode(&s, &key);
        assert_eq!(signed::decode(&token, &key), Some(s.clone()));
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "URL-safe: {token}"
        );
        assert_eq!(signed::decode(&token, &[8u8; 32]), None, "another key");
        let (body, tag) = token.rsplit_once('.').unwrap();
        let mut forged = session("1-cam", i64::MAX);
        forged.protocol = Protocol::Dash;
        let other = signed::encode(&forged, &[9u8; 32]);
        let other_body = other.rsplit_once('.').unwrap().0;
        assert_eq!(signed::decode(&format!("{other_body}.{tag}"), &key), None);
        assert_eq!(signed::decode(&format!("{body}.AAAA"), &key), None);
        assert_eq!(signed::decode("v1.", &key), None);
        assert_eq!(signed::decode("", &key), None);
    }

    fn sessions(per_stream: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            per_stream,
        }
    }

    #[test]
    fn tokens_expire_and_forged_ones_are_refused() {
        let sessions = sessions(10);
        let token = sessions.insert(session("a", 1_000), 0).unwrap();
        assert_eq!(token.len(), 48);
        assert!(sessions.get(&token, 999).is_ok());
        match sessions.get(&token, 1_000) {
            Err(EngineError::NotAuthorized(m)) => assert!(m.contains("expired"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            sessions.get("0123", 0),
            Err(EngineError::NotAuthorized(_))
        ));
    }

    #[test]
    fn sessions_per_stream_are_bounded_and_expired_ones_free_their_slot() {
        let sessions = sessions(2);
        sessions.insert(session("a", 1_000), 0).unwrap();
        sessions.insert(session("a", 5_000), 0).unwrap();
        sessions.insert(session("b", 5_000), 0).unwrap();
        assert!(matches!(
            sessions.insert(session("a", 5_000), 0),
            Err(EngineError::ClientLimitExceeded(_))
        ));
        // Once the first session of stream a has expired there is room again.
        assert!(sessions.insert(session("a", 5_000), 1_000).is_ok());
    }
}
