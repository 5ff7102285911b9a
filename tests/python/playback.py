"""Playback through boto3 (kinesis-video-archived-media), checked by ffmpeg,
ffprobe and GStreamer: HLS (fMP4 and TS), DASH, GetClip, GetImages, errors.

Usage: playback.py COMMAND ARGS... with KINEMA_ENDPOINT and AWS_* set.
Every check is an assert; a failing one exits non-zero with a traceback.
"""
import base64
import datetime
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

from kv import client, data_client, expect_error

UTC = datetime.timezone.utc


def am(name, api):
    return data_client("kinesis-video-archived-media", name, api)


def fragments(name):
    frs = client("kinesis-video-archived-media").list_fragments(StreamName=name)["Fragments"]
    return sorted(frs, key=lambda f: f["ProducerTimestamp"])


def end_of(f):
    return f["ProducerTimestamp"] + datetime.timedelta(milliseconds=f["FragmentLengthInMilliseconds"])


def whole_seconds(t):
    """boto3 sends timestamps in whole seconds: the value the server sees."""
    return t.replace(microsecond=0)


def probe(path):
    """(frames, duration seconds, width, height, first frame is a keyframe)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames,width,height:format=duration",
         "-of", "json", path], capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    s = j["streams"][0]
    first = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1",
         "-show_entries", "frame=key_frame", "-of", "csv=p=0", path],
        capture_output=True, text=True, check=True).stdout.replace(",", " ").split()
    return (int(s["nb_read_frames"]), float(j["format"].get("duration", 0)), s.get("width"),
            s.get("height"), first[:1] == ["1"])


def ffmpeg_copy(url, out):
    """ffmpeg -i URL -c copy: must complete without errors."""
    r = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", url, "-c", "copy", out],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), (url, r.stderr)
    return probe(out)


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.headers.get("content-type"), r.read()


def media_playlist_url(master_url):
    _, text = fetch(master_url)
    line = [l for l in text.decode().splitlines() if l and not l.startswith("#")][0]
    return master_url.rsplit("/", 1)[0] + "/" + line


def pdt(text):
    return [datetime.datetime.fromisoformat(m.replace("Z", "+00:00"))
            for m in re.findall(r"#EXT-X-PROGRAM-DATE-TIME:(\S+)", text)]


def hls_url(name, **kw):
    return am(name, "GET_HLS_STREAMING_SESSION_URL").get_hls_streaming_session_url(
        StreamName=name, **kw)["HLSStreamingSessionURL"]


def cmd_archive(name, fps, outdir):
    """ON_DEMAND and LIVE_REPLAY in both containers and selectors, DASH,
    GetClip and GetImages over a finished upload of known video."""
    fps = int(fps)
    frs = fragments(name)
    total = sum(1 for _ in frs)
    frames_per = [round(f["FragmentLengthInMilliseconds"] * fps / 1000) for f in frs]
    all_frames = sum(frames_per)
    start, end = whole_seconds(frs[0]["ProducerTimestamp"]), end_of(frs[-1])
    span = (end_of(frs[-1]) - frs[0]["ProducerTimestamp"]).total_seconds()
    report = {"fragments": total, "frames": all_frames}

    for fmt, ext in (("FRAGMENTED_MP4", "mp4"), ("MPEG_TS", "ts")):
        for sel in ("PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"):
            if sel == "SERVER_TIMESTAMP":
                rng = {"StartTimestamp": whole_seconds(frs[0]["ServerTimestamp"]),
                       "EndTimestamp": frs[-1]["ServerTimestamp"] + datetime.timedelta(seconds=2)}
            else:
                rng = {"StartTimestamp": start, "EndTimestamp": end}
            url = hls_url(name, PlaybackMode="ON_DEMAND", ContainerFormat=fmt,
                          HLSFragmentSelector={"FragmentSelectorType": sel, "TimestampRange": rng},
                          DisplayFragmentTimestamp="ALWAYS", Expires=600)
            assert "/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=" in url, url
            ctype, text = fetch(media_playlist_url(url))
            assert ctype == "application/vnd.apple.mpegurl", ctype
            text = text.decode()
            assert text.count("#EXTINF") == total and "#EXT-X-ENDLIST" in text, text
            if fmt == "FRAGMENTED_MP4":
                assert "#EXT-X-MAP:URI=\"getMP4InitFragment.mp4?SessionToken=" in text, text
            if sel == "PRODUCER_TIMESTAMP":
                assert pdt(text) == [f["ProducerTimestamp"] for f in frs], (pdt(text), text)
            frames, duration, w, h, key = ffmpeg_copy(url, os.path.join(outdir, f"od-{fmt}-{sel}.mkv"))
            assert frames == all_frames, (fmt, sel, frames, all_frames)
            assert abs(duration - span) < 0.1, (fmt, sel, duration, span)
            assert key, (fmt, sel, "the first frame is not a keyframe")
            report[f"{fmt}/{sel}"] = [frames, duration]

    # LIVE_REPLAY from a time inside a middle fragment, to the end: the
    # playlist starts with that fragment, its PROGRAM-DATE-TIME is the
    # fragment's producer timestamp, and it ends once the end has passed.
    mid = len(frs) // 2
    asked = whole_seconds(frs[mid]["ProducerTimestamp"]) + datetime.timedelta(seconds=1)
    holder = [i for i, f in enumerate(frs) if f["ProducerTimestamp"] <= asked < end_of(f)][0]
    # The upload ran faster than real time, so its last fragment lies in
    # the future: end the replay before it starts (a later fragment exists).
    stop = whole_seconds(frs[-1]["ProducerTimestamp"])
    last = max(i for i, f in enumerate(frs) if f["ProducerTimestamp"] <= stop)
    for fmt in ("FRAGMENTED_MP4", "MPEG_TS"):
        url = hls_url(name, PlaybackMode="LIVE_REPLAY", ContainerFormat=fmt,
                      HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                                           "TimestampRange": {"StartTimestamp": asked, "EndTimestamp": stop}},
                      DisplayFragmentTimestamp="ALWAYS")
        _, text = fetch(media_playlist_url(url))
        text = text.decode()
        assert pdt(text)[0] == frs[holder]["ProducerTimestamp"], (asked, text)
        assert "#EXT-X-ENDLIST" in text, text
        frames, _, _, _, key = ffmpeg_copy(url, os.path.join(outdir, f"replay-{fmt}.mkv"))
        assert text.count("#EXTINF") == last - holder + 1, text
        assert frames == sum(frames_per[holder:last + 1]) and key, (fmt, frames, holder, last)
        report[f"LIVE_REPLAY/{fmt}"] = frames

    # DASH ON_DEMAND: a static MPD that ffmpeg's DASH demuxer plays whole.
    dash = am(name, "GET_DASH_STREAMING_SESSION_URL").get_dash_streaming_session_url(
        StreamName=name, PlaybackMode="ON_DEMAND",
        DASHFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                              "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}})[
        "DASHStreamingSessionURL"]
    ctype, mpd = fetch(dash)
    assert ctype == "application/dash+xml" and b'type="static"' in mpd, mpd
    frames, duration, _, _, _ = ffmpeg_copy(dash, os.path.join(outdir, "dash.mkv"))
    assert frames == all_frames and abs(duration - span) < 0.1, (frames, duration)
    report["DASH"] = [frames, duration]

    # GetClip: one MP4, playable from its first frame, with the range's frames.
    clip = am(name, "GET_CLIP").get_clip(
        StreamName=name, ClipFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                                               "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end}})
    assert clip["ContentType"] == "video/mp4", clip["ContentType"]
    path = os.path.join(outdir, "clip.mp4")
    with open(path, "wb") as f:
        f.write(clip["Payload"].read())
    frames, duration, w, h, key = probe(path)
    assert frames == all_frames and abs(duration - span) < 0.1 and key, (frames, duration, key)
    report["clip"] = [frames, duration, w, h]

    # GetImages: JPEG at a width alone (aspect kept), PNG at both, paged.
    images = am(name, "GET_IMAGES")
    t0 = whole_seconds(frs[0]["ProducerTimestamp"]) + datetime.timedelta(seconds=1)
    seen = []
    token = None
    while True:
        kw = {"NextToken": token} if token else {}
        page = images.get_images(StreamName=name, ImageSelectorType="PRODUCER_TIMESTAMP",
                                 StartTimestamp=t0, EndTimestamp=t0 + datetime.timedelta(seconds=4),
                                 SamplingInterval=500, Format="JPEG", WidthPixels=w // 2,
                                 MaxResults=4, **kw)
        assert len(page["Images"]) <= 4
        seen += page["Images"]
        token = page.get("NextToken")
        if not token:
            break
    assert len(seen) == 9, len(seen)
    # A page token holds only for its own request (issue 15, finding 8).
    first = images.get_images(StreamName=name, ImageSelectorType="PRODUCER_TIMESTAMP",
                              StartTimestamp=t0, EndTimestamp=t0 + datetime.timedelta(seconds=4),
                              SamplingInterval=500, Format="JPEG", MaxResults=1)
    expect_error("InvalidArgumentException", images.get_images, StreamName=name,
                 ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=t0 - datetime.timedelta(seconds=1),
                 EndTimestamp=t0 + datetime.timedelta(seconds=4), SamplingInterval=500, Format="JPEG",
                 MaxResults=1, NextToken=first["NextToken"])
    stamps = [i["TimeStamp"] for i in seen]
    assert stamps == [t0 + datetime.timedelta(milliseconds=500 * k) for k in range(9)], stamps
    for k, img in enumerate(seen):
        assert "Error" not in img, img
        p = os.path.join(outdir, f"img{k}.jpg")
        with open(p, "wb") as f:
            f.write(base64.b64decode(img["ImageContent"]))
        _, _, iw, ih, _ = probe(p)
        assert (iw, ih) == (w // 2, h // 2), (iw, ih)
    png = images.get_images(StreamName=name, ImageSelectorType="SERVER_TIMESTAMP",
                            StartTimestamp=whole_seconds(frs[1]["ServerTimestamp"]) + datetime.timedelta(seconds=1),
                            EndTimestamp=whole_seconds(frs[1]["ServerTimestamp"]) + datetime.timedelta(seconds=1),
                            Format="PNG", WidthPixels=100, HeightPixels=50)["Images"]
    assert len(png) == 1 and "ImageContent" in png[0], png
    raw = base64.b64decode(png[0]["ImageContent"])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", raw[:8]
    p = os.path.join(outdir, "img.png")
    with open(p, "wb") as f:
        f.write(raw)
    assert probe(p)[2:4] == (100, 50), probe(p)
    before = images.get_images(StreamName=name, ImageSelectorType="PRODUCER_TIMESTAMP",
                               StartTimestamp=start - datetime.timedelta(seconds=60),
                               EndTimestamp=start - datetime.timedelta(seconds=59),
                               SamplingInterval=1000, Format="JPEG")["Images"]
    assert [i.get("Error") for i in before] == ["NO_MEDIA", "NO_MEDIA"], before
    report["images"] = len(seen)
    print(json.dumps(report, default=str))


def cmd_ondemand_url(name, fmt):
    frs = fragments(name)
    print(hls_url(name, PlaybackMode="ON_DEMAND", ContainerFormat=fmt,
                  HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": {
                      "StartTimestamp": whole_seconds(frs[0]["ProducerTimestamp"]),
                      "EndTimestamp": end_of(frs[-1])}}))


def cmd_replay_url(name):
    """A LIVE_REPLAY session (with PROGRAM-DATE-TIME) from a time inside the
    second fragment, and the producer timestamp (ms) of the fragment
    holding that time: where playback must start."""
    frs = fragments(name)
    asked = whole_seconds(frs[1]["ProducerTimestamp"]) + datetime.timedelta(seconds=1)
    holder = [f for f in frs if f["ProducerTimestamp"] <= asked < end_of(f)][0]
    url = hls_url(name, PlaybackMode="LIVE_REPLAY", DisplayFragmentTimestamp="ALWAYS",
                  HLSFragmentSelector={"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                                       "TimestampRange": {"StartTimestamp": asked}})
    print(json.dumps({"url": url,
                      "start_ms": round(holder["ProducerTimestamp"].timestamp() * 1000)}))


def cmd_live_url(name, fmt):
    """A LIVE session listing every fragment (for a reader that starts at
    the first one)."""
    print(hls_url(name, PlaybackMode="LIVE", ContainerFormat=fmt,
                  MaxMediaPlaylistFragmentResults=5000))


def cmd_dash_live(name):
    url = am(name, "GET_DASH_STREAMING_SESSION_URL").get_dash_streaming_session_url(
        StreamName=name, PlaybackMode="LIVE", MaxManifestFragmentResults=3)["DASHStreamingSessionURL"]
    _, mpd = fetch(url)
    mpd = mpd.decode()
    assert 'type="dynamic"' in mpd and mpd.count("<SegmentURL") == 3, mpd
    print(url)


def status_of(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cmd_errors(name, empty, vp8, limit):
    """Every refusal in its documented shape; nothing half-made."""
    arch = client("kinesis-video-archived-media")
    frs = fragments(name)
    start = whole_seconds(frs[0]["ProducerTimestamp"])
    sel = lambda s, e: {"FragmentSelectorType": "PRODUCER_TIMESTAMP",
                        "TimestampRange": {"StartTimestamp": s, "EndTimestamp": e}}
    h = datetime.timedelta(hours=1)
    expect_error("InvalidArgumentException", arch.get_hls_streaming_session_url, StreamName=name,
                 PlaybackMode="ON_DEMAND", HLSFragmentSelector=sel(start, start + 3 * h + datetime.timedelta(seconds=1)))
    expect_error("InvalidArgumentException", arch.get_hls_streaming_session_url, StreamName=name,
                 PlaybackMode="ON_DEMAND", HLSFragmentSelector=sel(start, start - h))
    expect_error("InvalidArgumentException", arch.get_hls_streaming_session_url, StreamName=name,
                 PlaybackMode="LIVE", HLSFragmentSelector=sel(start, start + h))
    expect_error("ResourceNotFoundException", arch.get_hls_streaming_session_url, StreamName=name,
                 PlaybackMode="ON_DEMAND", HLSFragmentSelector=sel(start - 2 * h, start - h))
    expect_error("ResourceNotFoundException", arch.get_dash_streaming_session_url, StreamName=name,
                 PlaybackMode="ON_DEMAND", DASHFragmentSelector=sel(start - 2 * h, start - h))
    expect_error("ResourceNotFoundException", arch.get_hls_streaming_session_url, StreamName="nope")
    expect_error("NoDataRetentionException", arch.get_hls_streaming_session_url, StreamName=empty)
    expect_error("NoDataRetentionException", arch.get_clip, StreamName=empty,
                 ClipFragmentSelector=sel(start, start + h))
    expect_error("NoDataRetentionException", arch.get_images, StreamName=empty,
                 ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start,
                 EndTimestamp=start + datetime.timedelta(seconds=1), Format="JPEG")
    expect_error("UnsupportedStreamMediaTypeException", arch.get_hls_streaming_session_url,
                 StreamName=vp8)
    expect_error("UnsupportedStreamMediaTypeException", arch.get_clip, StreamName=vp8,
                 ClipFragmentSelector=sel(start - h, start + h))
    expect_error("InvalidArgumentException", arch.get_clip, StreamName=name,
                 ClipFragmentSelector=sel(start, start + 3 * h + datetime.timedelta(seconds=1)))
    expect_error("ResourceNotFoundException", arch.get_clip, StreamName=name,
                 ClipFragmentSelector=sel(start - 2 * h, start - h))
    expect_error("InvalidArgumentException", arch.get_images, StreamName=name,
                 ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start,
                 EndTimestamp=start + datetime.timedelta(seconds=301), Format="JPEG")
    expect_error("InvalidArgumentException", arch.get_images, StreamName=name,
                 ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start,
                 EndTimestamp=start + datetime.timedelta(seconds=1), SamplingInterval=100, Format="PNG")
    expect_error("InvalidArgumentException", arch.get_images, StreamName=name,
                 ImageSelectorType="PRODUCER_TIMESTAMP", StartTimestamp=start,
                 EndTimestamp=start + datetime.timedelta(seconds=1), Format="JPEG",
                 NextToken="forged-token")

    # Session tokens: a forged one and one for the other protocol get 403.
    url = hls_url(name, PlaybackMode="LIVE")
    base = url.split("?")[0].rsplit("/", 1)[0]
    for path in ("getHLSMasterPlaylist.m3u8", "getHLSMediaPlaylist.m3u8", "getMP4InitFragment.mp4",
                 "getMP4MediaFragment.mp4?FragmentNumber=1&x=1"):
        sep = "&" if "?" in path else "?"
        code, body = status_of(f"{base}/{path}{sep}SessionToken=zz{url[-46:]}")
        assert code == 403 and json.loads(body)["__type"] == "NotAuthorizedException", (path, code, body)
        code, _ = status_of(f"{base}/{path}")
        assert code == 403, (path, code)
    token = url.split("SessionToken=")[1]
    code, _ = status_of(f"{base.replace('/hls/', '/dash/')}/getDASHManifest.mpd?SessionToken={token}")
    assert code == 403, code
    code, _ = status_of(f"{base}/getTSFragment.ts?SessionToken={token}&FragmentNumber=1")
    assert code == 400, code

    # Sessions per stream are bounded (the server runs with `limit`; one is open).
    for _ in range(int(limit) - 1):
        hls_url(name, PlaybackMode="LIVE")
    expect_error("ClientLimitExceededException", arch.get_hls_streaming_session_url,
                 StreamName=name, PlaybackMode="LIVE")
    expect_error("ClientLimitExceededException", arch.get_dash_streaming_session_url,
                 StreamName=name, PlaybackMode="LIVE")
    print("ok")


def cmd_token_scope(name):
    """A session token serves only the fragments its mode and range allow:
    fragment numbers are guessable, so asking for one outside the session
    gets NotAuthorizedException."""
    frs = fragments(name)
    first, last = frs[0], frs[-1]

    def sel(start, end=None):
        rng = {"StartTimestamp": start}
        if end is not None:
            rng["EndTimestamp"] = end
        return {"FragmentSelectorType": "PRODUCER_TIMESTAMP", "TimestampRange": rng}

    def segment(url, number):
        base = url.split("?")[0].rsplit("/", 1)[0]
        token = url.split("SessionToken=")[1]
        return status_of(f"{base}/getMP4MediaFragment.mp4?SessionToken={token}&FragmentNumber={number}")

    def refused(url, number):
        code, body = segment(url, number)
        assert code == 403 and json.loads(body)["__type"] == "NotAuthorizedException", (number, code, body)

    def served(url, number):
        code, body = segment(url, number)
        assert code == 200, (number, code, body)

    # ON_DEMAND over the first second: what its playlist lists, nothing else.
    start = whole_seconds(first["ProducerTimestamp"])
    url = hls_url(name, PlaybackMode="ON_DEMAND",
                  HLSFragmentSelector=sel(start, start + datetime.timedelta(seconds=1)))
    _, playlist = fetch(media_playlist_url(url))
    listed = [int(n) for n in re.findall(r"FragmentNumber=(\d+)", playlist.decode())]
    assert listed and int(last["FragmentNumber"]) not in listed, listed
    served(url, listed[0])
    refused(url, last["FragmentNumber"])
    # LIVE showing the newest fragment: older ones are not its to serve.
    url = hls_url(name, PlaybackMode="LIVE", MaxMediaPlaylistFragmentResults=1)
    served(url, last["FragmentNumber"])
    refused(url, first["FragmentNumber"])
    # LIVE_REPLAY from the last fragment: the first is before its range.
    url = hls_url(name, PlaybackMode="LIVE_REPLAY",
                  HLSFragmentSelector=sel(whole_seconds(last["ProducerTimestamp"])))
    served(url, last["FragmentNumber"])
    refused(url, first["FragmentNumber"])
    print("ok")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
