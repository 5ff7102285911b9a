"""boto3 `kinesisvideo` signaling-channel operations against a running Kinema.

Usage: channels.py with KINEMA_ENDPOINT and AWS_* in the environment. Exits
non-zero (with the assertion) on any mismatch.
"""
import os

import boto3
import botocore.exceptions
from botocore.config import Config

kv = boto3.client("kinesisvideo", endpoint_url=os.environ["KINEMA_ENDPOINT"], region_name="us-east-1",
                  config=Config(retries={"max_attempts": 1}))
raw = boto3.client("kinesisvideo", endpoint_url=os.environ["KINEMA_ENDPOINT"], region_name="us-east-1",
                   config=Config(retries={"max_attempts": 1}, parameter_validation=False))


def expect_error(code, fn, **kw):
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


arn = kv.create_signaling_channel(ChannelName="door", ChannelType="SINGLE_MASTER",
                                  SingleMasterConfiguration={"MessageTtlSeconds": 30},
                                  Tags=[{"Key": "site", "Value": "hq"}])["ChannelARN"]
assert arn.startswith("arn:aws:kinesisvideo:us-east-1:") and ":channel/door/" in arn, arn
expect_error("ResourceInUseException", kv.create_signaling_channel, ChannelName="door")
expect_error("InvalidArgumentException", raw.create_signaling_channel, ChannelName="bad name!")
expect_error("InvalidArgumentException", raw.create_signaling_channel, ChannelName="ttl",
             SingleMasterConfiguration={"MessageTtlSeconds": 500})

info = kv.describe_signaling_channel(ChannelName="door")["ChannelInfo"]
assert info["ChannelARN"] == arn and info["ChannelStatus"] == "ACTIVE", info
assert info["ChannelType"] == "SINGLE_MASTER"
assert info["SingleMasterConfiguration"]["MessageTtlSeconds"] == 30
assert kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]["ChannelName"] == "door"
expect_error("ResourceNotFoundException", kv.describe_signaling_channel, ChannelName="nope")

for i in range(5):
    kv.create_signaling_channel(ChannelName=f"cam-{i}")
names = [c["ChannelName"] for p in kv.get_paginator("list_signaling_channels").paginate(
    ChannelNameCondition={"ComparisonOperator": "BEGINS_WITH", "ComparisonValue": "cam-"},
    PaginationConfig={"PageSize": 2}) for c in p["ChannelInfoList"]]
assert names == [f"cam-{i}" for i in range(5)], names
assert kv.describe_signaling_channel(ChannelName="cam-0")["ChannelInfo"]["SingleMasterConfiguration"][
    "MessageTtlSeconds"] == 60, "the default TTL"

# Optimistic concurrency: a stale version is refused.
v1 = info["Version"]
kv.update_signaling_channel(ChannelARN=arn, CurrentVersion=v1,
                            SingleMasterConfiguration={"MessageTtlSeconds": 90})
after = kv.describe_signaling_channel(ChannelARN=arn)["ChannelInfo"]
assert after["SingleMasterConfiguration"]["MessageTtlSeconds"] == 90 and after["Version"] != v1, after
expect_error("VersionMismatchException", kv.update_signaling_channel, ChannelARN=arn, CurrentVersion=v1,
             SingleMasterConfiguration={"MessageTtlSeconds": 10})

for role in ("MASTER", "VIEWER"):
    eps = kv.get_signaling_channel_endpoint(ChannelARN=arn, SingleMasterChannelEndpointConfiguration={
        "Protocols": ["WSS", "HTTPS"], "Role": role})["ResourceEndpointList"]
    by = {e["Protocol"]: e["ResourceEndpoint"] for e in eps}
    assert by["HTTPS"] == os.environ["KINEMA_ENDPOINT"], by
    assert by["WSS"] == os.environ["KINEMA_ENDPOINT"].replace("http://", "ws://"), by
expect_error("ResourceNotFoundException", kv.get_signaling_channel_endpoint,
             ChannelARN=arn.replace("door", "gone"))

expect_error("VersionMismatchException", kv.delete_signaling_channel, ChannelARN=arn, CurrentVersion=v1)
kv.delete_signaling_channel(ChannelARN=arn, CurrentVersion=after["Version"])
expect_error("ResourceNotFoundException", kv.describe_signaling_channel, ChannelARN=arn)
print("ok")
