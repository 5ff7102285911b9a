"""Temporary credentials through boto3's own sts client, used by every
other client unchanged (the session token rides in X-Amz-Security-Token).

Usage: sts.py COMMAND ARGS with KINEMA_ENDPOINT and the admin key as AWS_*.
Roles are those tests/e2e/security.rs configures.
"""
import datetime
import json
import os
import sys

import boto3
import botocore.exceptions
from botocore.config import Config

ENDPOINT = os.environ["KINEMA_ENDPOINT"]
CFG = Config(retries={"max_attempts": 1})
ACCOUNT = "000000000000"


def client(service, creds=None):
    kw = {}
    if creds:
        kw = dict(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                  aws_session_token=creds["SessionToken"])
    return boto3.client(service, endpoint_url=ENDPOINT, region_name="us-east-1", config=CFG, **kw)


def code_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return "ok"


def cmd_assume(role, seconds):
    """Prints the credentials of an AssumeRole (JSON) for the caller."""
    r = client("sts").assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}",
                                  RoleSessionName="e2e-session", DurationSeconds=int(seconds))
    c = r["Credentials"]
    assert c["AccessKeyId"].startswith("ASIA"), c
    left = c["Expiration"] - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(seconds=int(seconds) - 60) < left <= datetime.timedelta(seconds=int(seconds)), left
    assert r["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/e2e-session", r
    print(json.dumps({k: c[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}))


def cmd_check():
    sts = client("sts")
    # The camera role: its own stream only.
    cam = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/camera",
                          RoleSessionName="front-door", DurationSeconds=900)["Credentials"]
    kv = client("kinesisvideo", cam)
    kv.describe_stream(StreamName="front-door")
    assert code_of(kv.describe_stream, StreamName="back-yard") == "AccessDeniedException"
    assert code_of(kv.list_streams) == "AccessDeniedException"
    # A session policy narrows the viewer role further.
    narrow = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:DescribeStream", "Resource": "*"}]})
    viewer = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/viewer", RoleSessionName="page",
                             Policy=narrow)["Credentials"]
    kv = client("kinesisvideo", viewer)
    kv.describe_stream(StreamName="back-yard")
    assert code_of(kv.list_streams) == "AccessDeniedException"
    # GetSessionToken: the caller's own rights, for a while.
    mine = sts.get_session_token(DurationSeconds=900)["Credentials"]
    assert "front-door" in [s["StreamName"] for s in client("kinesisvideo", mine).list_streams()["StreamInfoList"]]
    client("kinesis", mine).list_streams()
    # Temporary credentials cannot make more of themselves this way.
    assert code_of(client("sts", mine).get_session_token) == "AccessDenied"
    # Refusals the SDKs know: untrusted caller, unknown role, bad duration,
    # tampered token.
    assert code_of(client("sts", cam).assume_role, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/viewer",
                   RoleSessionName="x1") == "AccessDenied"
    assert code_of(sts.assume_role, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/nope",
                   RoleSessionName="x1") == "AccessDenied"
    assert code_of(sts.assume_role, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/viewer",
                   RoleSessionName="x1", DurationSeconds=7200) == "ValidationError", "over the role's maximum"
    tampered = dict(cam, SessionToken=cam["SessionToken"][:-4] + "AAAA")
    assert code_of(client("kinesisvideo", tampered).describe_stream,
                   StreamName="front-door") == "UnrecognizedClientException"
    print("ok")


def cmd_expired(key_id, secret, token):
    """A token past its expiry gets the error the SDKs refresh on."""
    creds = {"AccessKeyId": key_id, "SecretAccessKey": secret, "SessionToken": token}
    code = code_of(client("kinesisvideo", creds).describe_stream, StreamName="front-door")
    assert code == "ExpiredTokenException", code
    print("ok")


def cmd_assume_as(key, secret, role):
    """AssumeRole as another key; prints the credentials (JSON)."""
    sts = boto3.client("sts", endpoint_url=ENDPOINT, region_name="us-east-1", config=CFG,
                       aws_access_key_id=key, aws_secret_access_key=secret)
    c = sts.assume_role(RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}", RoleSessionName="as-other")["Credentials"]
    print(json.dumps({k: c[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}))


def cmd_use(key_id, secret, token, expect):
    """Describes the front door with these temporary credentials: prints ok
    if the outcome is `expect` (ok, or an error code)."""
    creds = {"AccessKeyId": key_id, "SecretAccessKey": secret, "SessionToken": token}
    code = code_of(client("kinesisvideo", creds).describe_stream, StreamName="front-door")
    assert code == expect, code
    print("ok")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
