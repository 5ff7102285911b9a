"""boto3 against a running Kinema: the client side of the e2e tests.

Usage: kv.py COMMAND ARGS... with KINEMA_ENDPOINT and AWS_* in the environment.
Every check is an assert; a failing one exits non-zero with a traceback.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time

import boto3
import botocore.exceptions
from botocore.config import Config

ENDPOINT = os.environ["KINEMA_ENDPOINT"]
CFG = Config(retries={"max_attempts": 1}, read_timeout=120)


def client(service, endpoint=ENDPOINT, **kw):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", config=CFG, **kw)


def data_client(service, name, api):
    ep = client("kinesisvideo").get_data_endpoint(StreamName=name, APIName=api)["DataEndpoint"]
    assert ep == ENDPOINT, (ep, ENDPOINT)
    return client(service, ep)


def expect_error(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


TAG_RE = re.compile(rb"AWS_KINESISVIDEO_(\w+?)\x44\x87[\x80-\xff]([0-9.]+)")


def tags(payload):
    """(name, value) of every AWS_KINESISVIDEO_* tag, in stream order."""
    return [(m.group(1).decode(), m.group(2).decode()) for m in TAG_RE.finditer(payload)]


def fragment_numbers(payload):
    return [v for k, v in tags(payload) if k == "FRAGMENT_NUMBER"]


def cmd_create(name, retention):
    client("kinesisvideo").create_stream(StreamName=name, DataRetentionInHours=int(retention))


def cmd_create_many(prefix, count):
    """Creates video streams prefix-0.. and prints how many were created."""
    kv = client("kinesisvideo")
    for i in range(int(count)):
        kv.create_stream(StreamName=f"{prefix}-{i}", DataRetentionInHours=1)
    print(int(count))


def cmd_control_plane():
    kv = client("kinesisvideo")
    arn = kv.create_stream(StreamName="cp-one", DeviceName="cam", MediaType="video/h264",
                           DataRetentionInHours=2, Tags={"site": "hq"})["StreamARN"]
    assert arn.startswith("arn:aws:kinesisvideo:") and "cp-one" in arn, arn
    info = kv.describe_stream(StreamName="cp-one")["StreamInfo"]
    assert info["StreamARN"] == arn and info["Status"] == "ACTIVE", info
    assert info["DataRetentionInHours"] == 2 and info["DeviceName"] == "cam", info
    assert info["MediaType"] == "video/h264", info
    assert abs(info["CreationTime"].timestamp() - time.time()) < 60, info
    assert kv.describe_stream(StreamARN=arn)["StreamInfo"]["StreamName"] == "cp-one"

    expect_error("ResourceInUseException", kv.create_stream, StreamName="cp-one")
    expect_error("ResourceNotFoundException", kv.describe_stream, StreamName="nope")
    expect_error("InvalidArgumentException", kv.create_stream, StreamName="../etc/passwd")
    expect_error("InvalidArgumentException", kv.describe_stream)

    # Listing: name filter and paging.
    for i in range(5):
        kv.create_stream(StreamName=f"cp-page-{i}")
    names = []
    token = None
    pages = 0
    while True:
        kw = {"MaxResults": 2, "StreamNameCondition": {"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cp-page-"}}
        if token:
            kw["NextToken"] = token
        page = kv.list_streams(**kw)
        pages += 1
        names += [s["StreamName"] for s in page["StreamInfoList"]]
        token = page.get("NextToken")
        if not token:
            break
    assert names == [f"cp-page-{i}" for i in range(5)], names
    assert pages == 3, pages
    assert len(kv.list_streams()["StreamInfoList"]) == 6
    paginated = [s["StreamName"] for p in kv.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 4}) for s in p["StreamInfoList"]]
    assert len(paginated) == 6, paginated

    # Updates need the current version (optimistic concurrency).
    v1 = info["Version"]
    kv.update_stream(StreamName="cp-one", CurrentVersion=v1, DeviceName="cam-2")
    info2 = kv.describe_stream(StreamName="cp-one")["StreamInfo"]
    assert info2["DeviceName"] == "cam-2" and info2["Version"] != v1, info2
    expect_error("VersionMismatchException", kv.update_stream, StreamName="cp-one", CurrentVersion=v1, DeviceName="x")

    kv.update_data_retention(StreamName="cp-one", CurrentVersion=info2["Version"],
                             Operation="INCREASE_DATA_RETENTION", DataRetentionChangeInHours=22)
    info3 = kv.describe_stream(StreamName="cp-one")["StreamInfo"]
    assert info3["DataRetentionInHours"] == 24, info3
    expect_error("InvalidArgumentException", kv.update_data_retention, StreamName="cp-one",
                 CurrentVersion=info3["Version"], Operation="DECREASE_DATA_RETENTION", DataRetentionChangeInHours=25)

    # Tags.
    kv.tag_stream(StreamARN=arn, Tags={"zone": "north", "site": "lab"})
    assert kv.list_tags_for_stream(StreamName="cp-one")["Tags"] == {"site": "lab", "zone": "north"}
    kv.untag_stream(StreamName="cp-one", TagKeyList=["site"])
    assert kv.list_tags_for_stream(StreamARN=arn)["Tags"] == {"zone": "north"}

    # GetDataEndpoint for every API name returns this server.
    for api in ["PUT_MEDIA", "GET_MEDIA", "LIST_FRAGMENTS", "GET_MEDIA_FOR_FRAGMENT_LIST",
                "GET_HLS_STREAMING_SESSION_URL", "GET_DASH_STREAMING_SESSION_URL", "GET_CLIP", "GET_IMAGES"]:
        assert kv.get_data_endpoint(StreamName="cp-one", APIName=api)["DataEndpoint"] == ENDPOINT

    # Delete: wrong version refused, then gone.
    expect_error("VersionMismatchException", kv.delete_stream, StreamARN=arn, CurrentVersion="1")
    kv.delete_stream(StreamARN=arn, CurrentVersion=info3["Version"])
    expect_error("ResourceNotFoundException", kv.describe_stream, StreamName="cp-one")
    expect_error("ResourceNotFoundException", kv.delete_stream, StreamARN=arn)

    # Authentication: a wrong secret and an unknown key id are refused with 403.
    bad = boto3.client("kinesisvideo", endpoint_url=ENDPOINT, region_name="us-east-1", config=CFG,
                       aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong")
    e = expect_error("NotAuthorizedException", bad.list_streams)
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = boto3.client("kinesisvideo", endpoint_url=ENDPOINT, region_name="us-east-1", config=CFG,
                           aws_access_key_id="AKIDUNKNOWN", aws_secret_access_key="x")
    expect_error("NotAuthorizedException", unknown.list_streams)
    print("control plane ok")


def cmd_getmedia(name, selector, arg, out):
    media = data_client("kinesis-video-media", name, "GET_MEDIA")
    sel = {"StartSelectorType": selector}
    if selector == "FRAGMENT_NUMBER":
        sel["AfterFragmentNumber"] = arg
    elif selector == "CONTINUATION_TOKEN":
        sel["ContinuationToken"] = arg
    elif selector in ("SERVER_TIMESTAMP", "PRODUCER_TIMESTAMP"):
        sel["StartTimestamp"] = float(arg)
    t0 = time.monotonic()
    resp = media.get_media(StreamName=name, StartSelector=sel)
    assert resp["ContentType"] == "video/webm", resp["ContentType"]
    payload = resp["Payload"].read()
    open(out, "wb").write(payload)
    print(json.dumps({"fragments": fragment_numbers(payload), "tags": tags(payload), "bytes": len(payload),
                      "seconds": time.monotonic() - t0}))


def cmd_list(name, *rng):
    am = data_client("kinesis-video-archived-media", name, "LIST_FRAGMENTS")
    kw = {"StreamName": name, "MaxResults": 2}
    if rng:
        kind, start, end = rng
        kw["FragmentSelector"] = {"FragmentSelectorType": kind,
                                  "TimestampRange": {"StartTimestamp": float(start), "EndTimestamp": float(end)}}
    frags = []
    while True:
        page = am.list_fragments(**kw)
        frags += page["Fragments"]
        if "NextToken" not in page:
            break
        kw["NextToken"] = page["NextToken"]
    print(json.dumps([{"number": f["FragmentNumber"], "size": f["FragmentSizeInBytes"],
                       "producer": f["ProducerTimestamp"].timestamp(), "server": f["ServerTimestamp"].timestamp(),
                       "length_ms": f["FragmentLengthInMilliseconds"]} for f in frags]))


def cmd_describe(name):
    info = client("kinesisvideo").describe_stream(StreamName=name)["StreamInfo"]
    print(json.dumps({k: v for k, v in info.items() if k != "CreationTime"}))


def cmd_fragment_list(name, out, *numbers):
    am = data_client("kinesis-video-archived-media", name, "GET_MEDIA_FOR_FRAGMENT_LIST")
    resp = am.get_media_for_fragment_list(StreamName=name, Fragments=list(numbers))
    payload = resp["Payload"].read()
    open(out, "wb").write(payload)
    names = [k for k, _ in tags(payload)]
    assert "SERVER_SIDE_TIMESTAMP" in names and "PRODUCER_SIDE_TIMESTAMP" in names, names
    print(json.dumps({"fragments": fragment_numbers(payload)}))


def cmd_errors(name):
    media = data_client("kinesis-video-media", name, "GET_MEDIA")
    expect_error("ResourceNotFoundException", media.get_media, StreamName="missing",
                 StartSelector={"StartSelectorType": "EARLIEST"})
    expect_error("ResourceNotFoundException", media.get_media, StreamName=name,
                 StartSelector={"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "99999999"})
    expect_error("InvalidArgumentException", media.get_media, StreamName=name,
                 StartSelector={"StartSelectorType": "PRODUCER_TIMESTAMP"})
    am = client("kinesis-video-archived-media")
    expect_error("ResourceNotFoundException", am.get_media_for_fragment_list, StreamName=name, Fragments=["424242"])
    expect_error("InvalidArgumentException", am.list_fragments, StreamName=name, NextToken="garbage")
    expect_error("InvalidArgumentException", am.list_fragments, StreamName=name, FragmentSelector={
        "FragmentSelectorType": "SERVER_TIMESTAMP", "TimestampRange": {"StartTimestamp": 10, "EndTimestamp": 5}})
    print("errors ok")


def cmd_live(name, producer_cmd, want):
    """GetMedia NOW started before the producer: fragments arrive live."""
    media = data_client("kinesis-video-media", name, "GET_MEDIA")
    resp = media.get_media(StreamName=name, StartSelector={"StartSelectorType": "NOW"})
    got = bytearray()

    def reader():
        for chunk in resp["Payload"].iter_chunks(1024):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    subprocess.run(producer_cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    t.join(timeout=60)
    assert not t.is_alive(), "GetMedia did not end after the producer left"
    numbers = fragment_numbers(bytes(got))
    assert len(numbers) == int(want), numbers
    print(json.dumps({"fragments": numbers}))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
