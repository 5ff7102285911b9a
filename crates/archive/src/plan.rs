//! Playback planning: which stored fragments, and which frames of them, a
//! clip or a set of stills needs, and the size stills are scaled to. The
//! engine loads and decodes what the plan names; HLS and DASH sessions
//! choose their fragments in `kinema-hls::session`.

use crate::{FragmentMeta, TimeKind};

/// GetClip limits of the original service.
pub const CLIP_MAX_FRAGMENTS: usize = 200;
pub const CLIP_MAX_BYTES: u64 = 100 << 20;

/// Why a clip range cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClipError {
    #[error("no fragments were found in the stream for the requested range")]
    NoFragments,
    #[error("the range holds more than {CLIP_MAX_FRAGMENTS} fragments; request a shorter clip")]
    TooManyFragments,
    #[error("the range holds more than 100 MB of media; request a shorter clip")]
    TooManyBytes,
}

/// Checks the fragments of a clip's range against the limits; `frags` may
/// hold one more than the limit (the caller asks for one extra to tell).
pub fn check_clip(frags: &[FragmentMeta]) -> Result<(), ClipError> {
    if frags.is_empty() {
        return Err(ClipError::NoFragments);
    }
    if frags.len() > CLIP_MAX_FRAGMENTS {
        return Err(ClipError::TooManyFragments);
    }
    let bytes: u64 = frags.iter().map(|f| u64::from(f.size)).sum();
    if bytes > CLIP_MAX_BYTES {
        return Err(ClipError::TooManyBytes);
    }
    Ok(())
}

/// The sample times of one page of GetImages: every `interval` from `start`
/// to `end` (inclusive), from the `first`th on, at most `max`. Returns the
/// times and the index the next page starts at, if any.
pub fn image_times(
    start: i64,
    end: i64,
    interval: i64,
    first: i64,
    max: i64,
) -> (Vec<i64>, Option<i64>) {
    let interval = interval.max(1);
    let count = (end - start) / interval + 1;
    let last = first.saturating_add(max).min(count);
    let times = (first.max(0)..last).map(|i| start + i * interval).collect();
    (times, (last < count).then_some(last))
}

/// Which fragment holds each sample time: the fragments to decode, in the
/// order of their first sample, each with its sample times. Each time falls
/// in at most one fragment (the newest starting at or before it and still
/// running); times no fragment holds are absent (`NO_MEDIA`).
pub fn image_plan(
    times: &[i64],
    metas: &[FragmentMeta],
    kind: TimeKind,
) -> Vec<(FragmentMeta, Vec<i64>)> {
    let mut plan: Vec<(FragmentMeta, Vec<i64>)> = Vec::new();
    for t in times {
        let holder = metas
            .iter()
            .rev()
            .find(|m| m.time(kind) <= *t && *t < m.time(kind) + i64::from(m.duration_ms.max(1)));
        if let Some(m) = holder {
            match plan.iter_mut().find(|(p, _)| p.number == m.number) {
                Some((_, ts)) => ts.push(*t),
                None => plan.push((*m, vec![*t])),
            }
        }
    }
    plan
}

/// For each sample time, the frame shown at it: the last frame whose
/// presentation time (ns from the fragment start `base_ms`) is at or before
/// it, or the first frame for a time before every frame. Returns
/// `(sample time, chosen pts)` pairs; none when `pts_ns` is empty.
pub fn pick_frames(sample_times: &[i64], base_ms: i64, pts_ns: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = pts_ns.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return Vec::new();
    }
    sample_times
        .iter()
        .map(|t| {
            let offset = (t - base_ms).saturating_mul(1_000_000);
            let i = sorted.partition_point(|p| *p <= offset);
            (*t, sorted[i.saturating_sub(1)])
        })
        .collect()
}

/// The size stills are scaled to: as asked, where one dimension alone
/// keeps the picture's aspect ratio (`source` is the coded size; 0 when
/// unknown, which leaves the other dimension to the decoder).
pub fn scaled_size(
    source: (u32, u32),
    width: Option<u32>,
    height: Option<u32>,
) -> (Option<u32>, Option<u32>) {
    let (tw, th) = (u64::from(source.0), u64::from(source.1));
    match (width, height) {
        (Some(w), None) if tw > 0 && th > 0 => (
            Some(w),
            Some(((u64::from(w) * th + tw / 2) / tw).max(1) as u32),
        ),
        (None, Some(h)) if tw > 0 && th > 0 => (
            Some(((u64::from(h) * tw + th / 2) / th).max(1) as u32),
            Some(h),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(number: u64, start: i64, duration_ms: u32, size: u32) -> FragmentMeta {
        FragmentMeta {
            number,
            producer_ms: start,
            server_ms: start + 5,
            duration_ms,
            size,
            cluster_offset: 0,
            frames: 30,
        }
    }

    #[test]
    fn clips_are_bounded_in_fragments_and_bytes() {
        assert_eq!(check_clip(&[]), Err(ClipError::NoFragments));
        let ok: Vec<_> = (0..200)
            .map(|i| frag(i, i as i64 * 1000, 1000, 1000))
            .collect();
        assert_eq!(check_clip(&ok), Ok(()));
        let many: Vec<_> = (0..201)
            .map(|i| frag(i, i as i64 * 1000, 1000, 1000))
            .collect();
        assert_eq!(check_clip(&many), Err(ClipError::TooManyFragments));
        let big = [frag(1, 0, 1000, 60 << 20), frag(2, 1000, 1000, 60 << 20)];
        assert_eq!(check_clip(&big), Err(ClipError::TooManyBytes));
    }

    #[test]
    fn image_times_page_through_the_range() {
        assert_eq!(
            image_times(0, 10_000, 3_000, 0, 25),
            (vec![0, 3_000, 6_000, 9_000], None)
        );
        assert_eq!(
            image_times(0, 10_000, 3_000, 0, 2),
            (vec![0, 3_000], Some(2))
        );
        assert_eq!(
            image_times(0, 10_000, 3_000, 2, 2),
            (vec![6_000, 9_000], None)
        );
        assert_eq!(image_times(0, 0, 200, 0, 5), (vec![0], None));
        assert_eq!(image_times(0, 10_000, 3_000, 9, 2), (vec![], None));
    }

    #[test]
    fn each_time_goes_to_the_fragment_that_holds_it_once() {
        let metas = [
            frag(1, 0, 2_000, 1),
            frag(2, 2_000, 2_000, 1),
            frag(3, 6_000, 1_000, 1),
        ];
        let plan = image_plan(
            &[0, 1_000, 2_000, 4_500, 6_999, 7_000],
            &metas,
            TimeKind::Producer,
        );
        let got: Vec<(u64, Vec<i64>)> = plan.iter().map(|(m, t)| (m.number, t.clone())).collect();
        assert_eq!(
            got,
            vec![(1, vec![0, 1_000]), (2, vec![2_000]), (3, vec![6_999])]
        );
        // By server time the same fragments start 5 ms later.
        let plan = image_plan(&[2_004], &metas, TimeKind::Server);
        assert_eq!(plan[0].0.number, 1);
    }

    #[test]
    fn a_sample_shows_the_last_frame_at_or_before_it() {
        let pts = [66_000_000, 0, 33_000_000];
        assert_eq!(
            pick_frames(&[1_000, 1_040, 1_100], 1_000, &pts),
            vec![(1_000, 0), (1_040, 33_000_000), (1_100, 66_000_000)]
        );
        assert_eq!(pick_frames(&[900], 1_000, &pts), vec![(900, 0)]);
        assert!(pick_frames(&[1_000], 1_000, &[]).is_empty());
    }

    #[test]
    fn one_dimension_keeps_the_aspect_ratio() {
        assert_eq!(
            scaled_size((1920, 1080), Some(640), None),
            (Some(640), Some(360))
        );
        assert_eq!(
            scaled_size((1920, 1080), None, Some(360)),
            (Some(640), Some(360))
        );
        assert_eq!(
            scaled_size((1920, 1080), Some(10), Some(10)),
            (Some(10), Some(10))
        );
        assert_eq!(scaled_size((0, 0), Some(640), None), (Some(640), None));
        assert_eq!(scaled_size((1920, 1080), None, None), (None, None));
    }
}
