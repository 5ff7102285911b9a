"""boto3 for the WebRTC tests: signaling channels, their endpoints and ICE
servers (GetIceServerConfig on the `kinesis-video-signaling` client at the
HTTPS endpoint), as a viewer or master would fetch them.

Usage: webrtc.py CHANNEL... with KINEMA_ENDPOINT (https), KINEMA_CA (the
server's certificate) and AWS_* in the environment. Creates each channel if
missing and prints one JSON object: {channel: {arn, wss, https, ice}}.
Exits non-zero on any mismatch with the documented shapes.
"""
import json
import os
import sys

import boto3
from botocore.config import Config

endpoint = os.environ["KINEMA_ENDPOINT"]
ca = os.environ["KINEMA_CA"]
cfg = Config(retries={"max_attempts": 1})
kv = boto3.client("kinesisvideo", endpoint_url=endpoint, region_name="us-east-1", config=cfg, verify=ca)

out = {}
for name in sys.argv[1:]:
    try:
        arn = kv.describe_signaling_channel(ChannelName=name)["ChannelInfo"]["ChannelARN"]
    except kv.exceptions.ResourceNotFoundException:
        arn = kv.create_signaling_channel(ChannelName=name)["ChannelARN"]
    eps = {}
    for role in ("MASTER", "VIEWER"):
        got = kv.get_signaling_channel_endpoint(
            ChannelARN=arn,
            SingleMasterChannelEndpointConfiguration={"Protocols": ["WSS", "HTTPS"], "Role": role},
        )["ResourceEndpointList"]
        eps[role] = {e["Protocol"]: e["ResourceEndpoint"] for e in got}
    assert eps["MASTER"]["WSS"].startswith("wss://"), eps
    assert eps["MASTER"]["HTTPS"].startswith("https://"), eps
    signaling = boto3.client("kinesis-video-signaling", endpoint_url=eps["VIEWER"]["HTTPS"],
                             region_name="us-east-1", config=cfg, verify=ca)
    ice = signaling.get_ice_server_config(ChannelARN=arn, ClientId="viewer-" + name, Service="TURN")
    servers = ice["IceServerList"]
    assert servers, ice
    for s in servers:
        assert s["Uris"] and all(u.split(":")[0] in ("turn", "turns", "stun") for u in s["Uris"]), s
        assert s["Username"].split(":")[1] == "viewer-" + name, s
        assert 30 <= s["Ttl"] <= 86400, s
    out[name] = {
        "arn": arn,
        "wss": eps["VIEWER"]["WSS"],
        "https": eps["VIEWER"]["HTTPS"],
        "ice": [{"urls": s["Uris"], "username": s["Username"], "credential": s["Password"]} for s in servers],
    }
print(json.dumps(out))
