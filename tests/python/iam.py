"""IAM-shaped policies through boto3: each key does exactly what its policy
says, across the video, playback, signaling and data-stream services.

Usage: iam.py COMMAND with KINEMA_ENDPOINT (and the admin key as AWS_*).
The keys below are the ones tests/e2e/security.rs configures.
"""
import os
import sys

import boto3
import botocore.exceptions
from botocore.config import Config

ENDPOINT = os.environ["KINEMA_ENDPOINT"]
CFG = Config(retries={"max_attempts": 1})
KEYS = {
    "admin": (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]),
    "reader": ("AKIDREADER", "reader-secret"),
    "camera": ("AKIDCAMERA", "camera-secret"),
    "guarded": ("AKIDGUARDED", "guarded-secret"),
}


def client(who, service):
    key, secret = KEYS[who]
    return boto3.client(service, endpoint_url=ENDPOINT, region_name="us-east-1", config=CFG,
                        aws_access_key_id=key, aws_secret_access_key=secret)


def denied(fn, *args, **kwargs):
    """The call is refused with AccessDeniedException naming the action."""
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        code = e.response["Error"]["Code"]
        assert code == "AccessDeniedException", (fn, code, e)
        return e.response["Error"].get("Message", "")
    raise AssertionError(f"{fn.__name__} was allowed")


def allowed(fn, *args, **kwargs):
    """The call gets past authorisation (it may still fail for another
    reason, such as a session with no fragments yet)."""
    try:
        return fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        code = e.response["Error"]["Code"]
        assert code != "AccessDeniedException", (fn, e)
        return None


def cmd_setup():
    kv = client("admin", "kinesisvideo")
    for name in ("front-door", "back-yard"):
        kv.create_stream(StreamName=name, DataRetentionInHours=1)
    kv.create_signaling_channel(ChannelName="door-chan")
    client("admin", "kinesis").create_stream(StreamName="events", ShardCount=1)
    print("ok")


def cmd_check():
    # Read-only: reads everywhere, no change anywhere.
    kv = client("reader", "kinesisvideo")
    assert {s["StreamName"] for s in kv.list_streams()["StreamInfoList"]} >= {"front-door", "back-yard"}
    kv.describe_stream(StreamName="back-yard")
    ep = kv.get_data_endpoint(StreamName="front-door", APIName="GET_HLS_STREAMING_SESSION_URL")["DataEndpoint"]
    msg = denied(kv.create_stream, StreamName="intruder", DataRetentionInHours=1)
    assert "kinesisvideo:CreateStream" in msg and "stream/intruder" in msg, msg
    denied(kv.delete_stream, StreamARN=kv.describe_stream(StreamName="back-yard")["StreamInfo"]["StreamARN"])
    denied(kv.tag_stream, StreamName="back-yard", Tags={"a": "b"})
    am = boto3.client("kinesis-video-archived-media", endpoint_url=ep, region_name="us-east-1",
                      config=CFG, aws_access_key_id=KEYS["reader"][0],
                      aws_secret_access_key=KEYS["reader"][1])
    allowed(am.get_hls_streaming_session_url, StreamName="front-door", PlaybackMode="LIVE")
    chan = kv.describe_signaling_channel(ChannelName="door-chan")["ChannelInfo"]["ChannelARN"]
    kv.get_signaling_channel_endpoint(
        ChannelARN=chan, SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": "VIEWER"})
    denied(kv.delete_signaling_channel, ChannelARN=chan)
    ks = client("reader", "kinesis")
    assert "events" in ks.list_streams()["StreamNames"]
    ks.describe_stream_summary(StreamName="events")
    denied(ks.put_record, StreamName="events", PartitionKey="k", Data=b"x")

    # One camera's ingest key: its own stream only, and nothing else.
    kv = client("camera", "kinesisvideo")
    kv.describe_stream(StreamName="front-door")
    kv.get_data_endpoint(StreamName="front-door", APIName="PUT_MEDIA")
    denied(kv.describe_stream, StreamName="back-yard")
    denied(kv.list_streams)
    denied(kv.get_data_endpoint, StreamName="back-yard", APIName="PUT_MEDIA")
    am = boto3.client("kinesis-video-archived-media", endpoint_url=ep, region_name="us-east-1",
                      config=CFG, aws_access_key_id=KEYS["camera"][0],
                      aws_secret_access_key=KEYS["camera"][1])
    denied(am.get_hls_streaming_session_url, StreamName="front-door", PlaybackMode="LIVE")
    denied(client("camera", "kinesis").put_record, StreamName="events", PartitionKey="k", Data=b"x")

    # Everything but deleting the front door: the explicit deny wins.
    kv = client("guarded", "kinesisvideo")
    msg = denied(kv.delete_stream, StreamARN=kv.describe_stream(StreamName="front-door")["StreamInfo"]["StreamARN"])
    assert "explicit deny" in msg, msg
    client("guarded", "kinesis").put_record(StreamName="events", PartitionKey="k", Data=b"x")
    kv.delete_stream(StreamARN=kv.describe_stream(StreamName="back-yard")["StreamInfo"]["StreamARN"])
    print("ok")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
