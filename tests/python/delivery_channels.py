"""boto3 `kinesis` channels (botocore 1.44) against a running Kinema, with
DuckDB reading what they deliver.

Usage: channels.py COMMAND OBJECTS_DIR ARGS... with KINEMA_ENDPOINT and
AWS_* in the environment. OBJECTS_DIR is the server's
`<data>/objects/buckets`, where bucket `b` is the directory `b`.
"""
import base64
import json
import os
import sys
import time

import boto3
import botocore.exceptions
import duckdb
from botocore.config import Config

ENDPOINT = os.environ["KINEMA_ENDPOINT"]
ROLE = "arn:aws:iam::123456789012:role/kinema-channel"
# The server's account, from the first stream's ARN.
ACCOUNT = None


def client(key=None):
    creds = {} if key is None else {"aws_access_key_id": key[0], "aws_secret_access_key": key[1]}
    return boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, read_timeout=60), **creds)


def expect_error(code, fn, **kw):
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return e.response["Error"].get("Message", "")
    raise AssertionError(f"expected {code}, the call succeeded")


def stream(k, name, shards):
    global ACCOUNT
    k.create_stream(StreamName=name, ShardCount=shards)
    arn = k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    ACCOUNT = arn.split(":")[4]
    return arn


def s3(bucket, compression="NONE", template=None, freshness=1, errors=None):
    storage = {"BucketARN": f"arn:aws:s3:::{bucket}", "ExpectedBucketOwner": ACCOUNT,
               "CompressionType": compression}
    if template is not None:
        storage["OutputKeyTemplate"] = template
    out = {"DataFreshnessInSeconds": freshness, "StorageConfiguration": storage}
    if errors is not None:
        out["DeadLetterQueueS3Configuration"] = errors
    return out


def create(k, name, arn, fmt="JSON", **kw):
    return k.create_channel(
        ChannelName=name, ServiceExecutionRoleARN=ROLE,
        StreamConfigurationList=[{"StreamARN": arn,
                                  "RecordConfiguration": {"RecordFormatType": fmt}}],
        **kw)["ChannelDescription"]


def put(k, name, records):
    """Puts (data bytes, key) pairs; returns each one's (shard, sequence)."""
    out = []
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        r = k.put_records(StreamName=name, Records=[
            {"Data": d, "PartitionKey": p} for d, p in chunk])
        assert r["FailedRecordCount"] == 0, r
        out += [(e["ShardId"], e["SequenceNumber"]) for e in r["Records"]]
    return out


def files(root, suffix, under=""):
    base = os.path.join(root, under)
    found = []
    for d, _, names in os.walk(base):
        found += [os.path.join(d, n) for n in names if n.endswith(suffix)]
    return sorted(found)


def wait_for(what, fn, seconds=60):
    deadline = time.time() + seconds
    while True:
        got = fn()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def errors_of(k, objects, make):
    """Control-plane refusals, each in the shape botocore expects."""
    arn = make("refusals", 1)
    bad_role = dict(ChannelName="x", ServiceExecutionRoleARN="arn:aws:iam::1:user/x",
                    StreamConfigurationList=[{"StreamARN": arn, "RecordConfiguration":
                                              {"RecordFormatType": "JSON"}}],
                    S3DestinationConfiguration=s3("bk1"))
    expect_error("ValidationException", k.create_channel, **bad_role)
    expect_error("ValidationException", create, k=k, name="x", arn=arn)
    expect_error("ValidationException", create, k=k, name="x", arn=arn,
                 S3DestinationConfiguration=s3("B!"))
    for f in (0, 901):
        expect_error("ValidationException", create, k=k, name="x", arn=arn,
                     S3DestinationConfiguration=s3("bk1", freshness=f))
    for t in ("/a/!{yyyy}", "a//b", "a/!{week}", "a/!{extension}/b", "a/*/b", "a/" + "x" * 300):
        msg = expect_error("ValidationException", create, k=k, name="x", arn=arn,
                           S3DestinationConfiguration=s3("bk1", template=t))
        assert "OutputKeyTemplate" in msg, msg
    msg = expect_error("ValidationException", create, k=k, name="x", arn=arn,
                       S3DestinationConfiguration=s3("bk1", "GZIP", template="a/!{yyyy}"))
    assert "extension" in msg, msg
    msg = expect_error("InvalidArgumentException", create, k=k, name="x", arn=arn, fmt="GSR_JSON",
                       S3DestinationConfiguration=s3("bk1"))
    assert "Glue" in msg, msg
    msg = expect_error("InvalidArgumentException", create, k=k, name="x", arn=arn,
                       S3TablesDestinationConfiguration={
                           "DataFreshnessInSeconds": 300,
                           "DeadLetterQueueS3Configuration": {
                               "BucketARN": "arn:aws:s3:::bk1", "ExpectedBucketOwner": ACCOUNT},
                           "S3TablesConfigurationList": [{
                               "TableBucketARN": f"arn:aws:s3tables:us-east-1:{ACCOUNT}:bucket/tables",
                               "Namespace": "cams", "TableName": "events",
                               "CompressionType": "ZSTD"}]})
    assert "Iceberg" in msg, msg
    expect_error("InvalidArgumentException", create, k=k, name="x", arn=arn,
                 S3DestinationConfiguration=s3("bk1"),
                 EncryptionConfiguration={"EncryptionType": "KMS", "KeyId": "alias/x"})
    owner = s3("bk1")
    owner["StorageConfiguration"]["ExpectedBucketOwner"] = "210987654321"
    expect_error("AccessDeniedException", create, k=k, name="x", arn=arn,
                 S3DestinationConfiguration=owner)
    expect_error("ResourceNotFoundException", create, k=k, name="x",
                 arn=arn.replace("refusals", "missing"), S3DestinationConfiguration=s3("bk1"))
    missing = arn.split(":stream/")[0] + ":channel/00000000000000ff"
    expect_error("ResourceNotFoundException", k.describe_channel, ChannelARN=missing)
    expect_error("ResourceNotFoundException", k.delete_channel, ChannelARN=missing)
    expect_error("ResourceNotFoundException", k.update_channel, ChannelARN=missing,
                 S3DestinationConfiguration={"DataFreshnessInSeconds": 5})
    expect_error("ResourceNotFoundException", k.list_channels,
                 StreamFilter=[{"StreamARN": arn.replace("refusals", "missing")}])
    # Nothing was made by the refusals.
    assert k.list_channels(StreamFilter=[{"StreamARN": arn}])["ChannelSummaries"] == []
    assert not os.path.exists(os.path.join(objects, "bk1"))
    k.delete_stream(StreamName="refusals")


def suite(objects):
    k = client()
    made = []

    def make(name, shards):
        made.append(name)
        return stream(k, name, shards)

    errors_of(k, objects, make)
    arn = make("cams", 2)
    # Records put before a channel exists are not delivered (no backfill).
    put(k, "cams", [(b'{"before": true}', "early")])

    jgz = create(k, "json-gz", arn, S3DestinationConfiguration=s3("archive", "GZIP"),
                 Tags={"team": "video"})
    assert jgz["ChannelStatus"] == "ACTIVE", jgz
    assert jgz["ChannelARN"].startswith(f"arn:aws:kinesis:us-east-1:{ACCOUNT}:channel/"), jgz
    assert jgz["ChannelARN"].endswith("/" + jgz["ChannelId"]), jgz
    assert jgz["ServiceExecutionRoleARN"] == ROLE
    dest = jgz["S3DestinationConfiguration"]
    assert dest["DataFreshnessInSeconds"] == 1, dest
    assert dest["StorageConfiguration"]["OutputKeyTemplate"].startswith("kinesis-channel/"), dest
    assert dest["StorageConfiguration"]["ExpectedBucketOwner"] == ACCOUNT, dest
    assert dest["DeadLetterQueueS3Configuration"] == {
        "BucketARN": "arn:aws:s3:::archive", "ExpectedBucketOwner": ACCOUNT,
        "ErrorOutputPrefix": "kinesis-channel/errors/"}, dest
    assert jgz["StreamConfigurationList"][0]["StreamARN"] == arn
    assert jgz["StreamConfigurationList"][0]["RecordConfiguration"] == {"RecordFormatType": "JSON"}
    assert jgz["LoggingConfiguration"] == {"CloudWatchLogs": {"Enabled": False}}, jgz

    tzst = create(k, "text-zst", arn, fmt="STRING",
                  S3DestinationConfiguration=s3(
                      "archive", "ZSTD", template="text/!{stream-name}/!{yyyy}-!{MM}-!{dd}/part!{extension}",
                      errors={"BucketARN": "arn:aws:s3:::dead", "ExpectedBucketOwner": ACCOUNT,
                              "ErrorOutputPrefix": "bad-text/"}))
    raw = create(k, "raw", arn, fmt="BYTE_ARRAY",
                 S3DestinationConfiguration=s3("raw", template="!{channel-name}/!{yy}/blob!{extension:.dat}"),
                 LoggingConfiguration={"CloudWatchLogs": {"Enabled": True, "LogGroupName": "g"}})
    expect_error("ResourceInUseException", create, k=k, name="raw", arn=arn,
                 S3DestinationConfiguration=s3("raw"))
    expect_error("ResourceInUseException", k.delete_stream, StreamName="cams")

    # Listing: by name, in pages, filtered by stream.
    names = [c["ChannelName"] for c in k.list_channels()["ChannelSummaries"]]
    assert names == ["json-gz", "raw", "text-zst"], names
    page = k.list_channels(MaxResults=2)
    assert [c["ChannelName"] for c in page["ChannelSummaries"]] == ["json-gz", "raw"], page
    rest = k.list_channels(MaxResults=2, NextToken=page["NextToken"])
    assert [c["ChannelName"] for c in rest["ChannelSummaries"]] == ["text-zst"], rest
    assert "NextToken" not in rest, rest
    summary = page["ChannelSummaries"][0]
    assert summary["ChannelDestinationType"] == "S3", summary
    assert summary["Streams"][0]["StreamARN"] == arn, summary
    other = make("other", 1)
    assert k.list_channels(StreamFilter=[{"StreamARN": other}])["ChannelSummaries"] == []

    # Updates: freshness and logging only.
    up = k.update_channel(ChannelARN=raw["ChannelARN"],
                          S3DestinationConfiguration={"DataFreshnessInSeconds": 2},
                          LoggingConfiguration={"CloudWatchLogs": {"Enabled": False}})
    up = up["ChannelDescription"]
    assert up["S3DestinationConfiguration"]["DataFreshnessInSeconds"] == 2, up
    assert up["LoggingConfiguration"] == {"CloudWatchLogs": {"Enabled": False}}, up
    assert k.describe_channel(ChannelARN=raw["ChannelARN"])["ChannelDescription"] == up
    expect_error("ValidationException", k.update_channel, ChannelARN=raw["ChannelARN"],
                 S3DestinationConfiguration={"DataFreshnessInSeconds": 0})

    # Records: JSON (one with line breaks between tokens, two not JSON),
    # text (one with a line break, one not UTF-8), raw bytes.
    records = []
    for i in range(300):
        records.append((json.dumps({"n": i, "camera": f"cam-{i % 4}"}, indent=1 if i == 7 else None)
                        .encode(), f"k{i}"))
    records.append((b"{not json", "bad-1"))
    records.append((b"\xff\xfe", "bad-2"))
    records.append((b"line one\nline two", "bad-3"))
    seqs = put(k, "cams", records)

    # JSON, gzip: DuckDB reads every good record once; the three others
    # are dead letters in the default error prefix.
    data = os.path.join(objects, "archive")
    glob = os.path.join(data, "kinesis-channel", "json-gz", "**", "*.jsonl.gz")
    wait_for("the JSON objects", lambda: files(data, ".jsonl.gz", "kinesis-channel/json-gz"))
    wait_for("the JSON errors", lambda: files(data, ".jsonl.gz", "kinesis-channel/errors/json-gz"))
    rows = duckdb.sql(f"select n, camera from read_json('{glob}', format='newline_delimited') order by n").fetchall()
    assert [r[0] for r in rows] == list(range(300)), rows[:5]
    assert rows[7] == (7, "cam-3"), rows[7]
    key = files(data, ".jsonl.gz", "kinesis-channel/json-gz")[0]
    assert f"/json-gz/{jgz['ChannelId']}/" in key, key
    eglob = os.path.join(data, "kinesis-channel", "errors", "json-gz", "**", "*.jsonl.gz")
    dead = duckdb.sql(f"select errorCode, shardId, sequenceNumber, partitionKey, rawData "
                      f"from read_json('{eglob}', format='newline_delimited') order by partitionKey").fetchall()
    assert [d[3] for d in dead] == ["bad-1", "bad-2", "bad-3"], dead
    assert all(d[0] == "InvalidJson" for d in dead), dead
    for d, (shard, seq) in zip(dead, seqs[300:]):
        assert (d[1], d[2]) == (shard, seq), (d, shard, seq)
    assert base64.b64decode(dead[0][4]) == b"{not json"

    # STRING, zstd: every UTF-8 record without a line break is a line
    # (the JSON texts and "{not json"); the other two go to the dead
    # letters' own bucket and prefix.
    text = os.path.join(objects, "archive", "text", "cams")
    wait_for("the text objects", lambda: files(text, ".txt.zst"))
    wait_for("the text errors", lambda: files(os.path.join(objects, "dead", "bad-text"), ".jsonl.zst"))
    lines = duckdb.sql(
        f"select line from read_csv('{text}/**/*.txt.zst', columns={{'line': 'VARCHAR'}}, "
        f"header=false, delim='\x01', quote='', escape='', compression='zstd')").fetchall()
    expected = sorted(r[0].decode() for r in records if b"\n" not in r[0] and r[0] != b"\xff\xfe")
    assert sorted(l[0] for l in lines) == expected, (len(lines), len(expected))
    for f in files(text, ".txt.zst"):
        assert f"/part-{tzst['ChannelId']}-" in f, f
    bad = duckdb.sql(
        f"select errorCode, partitionKey from read_json('{objects}/dead/bad-text/**/*.jsonl.zst', "
        f"format='newline_delimited', compression='zstd') order by partitionKey").fetchall()
    assert bad == [("InvalidString", "bad-2"), ("InvalidString", "bad-3"), ("InvalidString", "k7")], bad

    # BYTE_ARRAY, no compression: the bytes as they are, nothing set aside.
    blobs = os.path.join(objects, "raw", "raw")
    total = sum(len(r[0]) for r in records)
    got = wait_for("the raw objects", lambda: (lambda fs: fs if sum(os.path.getsize(f) for f in fs) >= total else None)(files(blobs, ".dat")))
    body = b"".join(open(f, "rb").read() for f in got)
    assert len(body) == total, (len(body), total)
    assert sorted(body) == sorted(b"".join(r[0] for r in records))
    assert got[0].split("/raw/raw/")[1].startswith(time.strftime("%y/blob-", time.gmtime())), got
    assert not os.path.exists(os.path.join(objects, "raw", "kinesis-channel", "errors"))

    # More records reach the same channels in new objects, and nothing
    # old is written again.
    before = len(files(data, ".jsonl.gz", "kinesis-channel/json-gz"))
    put(k, "cams", [(json.dumps({"n": 300 + i, "camera": "late"}).encode(), f"late{i}") for i in range(5)])
    wait_for("the late objects", lambda: len(files(data, ".jsonl.gz", "kinesis-channel/json-gz")) > before)
    rows = duckdb.sql(f"select n from read_json('{glob}', format='newline_delimited') order by n").fetchall()
    assert [r[0] for r in rows] == list(range(305)), rows[-5:]

    # Deleting: the channels go, their objects stay, the stream can go.
    for c in (jgz, tzst, raw):
        assert k.delete_channel(ChannelARN=c["ChannelARN"])["ResponseMetadata"]["HTTPStatusCode"] == 200
        expect_error("ResourceNotFoundException", k.describe_channel, ChannelARN=c["ChannelARN"])
    assert k.list_channels()["ChannelSummaries"] == []
    assert files(data, ".jsonl.gz", "kinesis-channel/json-gz")
    for name in made[1:]:
        k.delete_stream(StreamName=name)
    print("channels ok")


def iam(objects):
    """Channel calls are authorised on the channel's ARN; CreateChannel on
    the stream it reads, ListChannels on "*"."""
    admin = client()
    arn = stream(admin, "cams", 1)
    stream(admin, "private", 1)
    by_stream = client(("AKIDSTREAM", "stream-secret"))
    by_channel = client(("AKIDCHANNELS", "channels-secret"))
    c = create(by_stream, "mine", arn, S3DestinationConfiguration=s3("mine"))
    expect_error("AccessDeniedException", create, k=by_stream, name="theirs",
                 arn=arn.replace("cams", "private"), S3DestinationConfiguration=s3("mine"))
    msg = expect_error("AccessDeniedException", by_stream.describe_channel, ChannelARN=c["ChannelARN"])
    assert c["ChannelARN"] in msg, msg
    expect_error("AccessDeniedException", by_stream.list_channels)
    assert by_channel.describe_channel(ChannelARN=c["ChannelARN"])["ChannelDescription"]["ChannelName"] == "mine"
    assert [x["ChannelName"] for x in by_channel.list_channels()["ChannelSummaries"]] == ["mine"]
    expect_error("AccessDeniedException", create, k=by_channel, name="other", arn=arn,
                 S3DestinationConfiguration=s3("mine"))
    expect_error("AccessDeniedException", by_channel.put_record, StreamName="cams",
                 PartitionKey="k", Data=b"x")
    by_channel.delete_channel(ChannelARN=c["ChannelARN"])
    print("iam ok")


def events(objects, stream_name, queue_name, channel_name, bucket):
    """Every event on the detection events stream reaches the archive
    channel's objects once, and the events queue hands events out."""
    k = client()
    ids = []
    for shard in k.list_shards(StreamName=stream_name)["Shards"]:
        it = k.get_shard_iterator(StreamName=stream_name, ShardId=shard["ShardId"],
                                  ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        for _ in range(1000):
            r = k.get_records(ShardIterator=it, Limit=10000)
            ids += [json.loads(x["Data"])["id"] for x in r["Records"]]
            it = r.get("NextShardIterator")
            if not it or (not r["Records"] and r["MillisBehindLatest"] == 0):
                break
    assert ids, "the stream has events"
    root = os.path.join(objects, bucket)
    glob = os.path.join(root, "kinesis-channel", channel_name, "**", "*.jsonl.gz")

    def archived():
        if not files(root, ".jsonl.gz"):
            return None
        got = [r[0] for r in duckdb.sql(
            f"select cast(id as varchar) from read_json('{glob}', format='newline_delimited')").fetchall()]
        return got if set(ids) <= set(got) else None

    got = wait_for("every event in the archive", archived, 90)
    assert len(got) == len(set(got)), "an event archived twice"
    queue = [q for q in k.list_queues()["QueueSummaries"] if q["QueueName"] == queue_name]
    assert len(queue) == 1, queue
    arn = queue[0]["QueueARN"]
    taken = k.receive_queue_records(QueueARN=arn, Limit=10, WaitTimeSeconds=5)["QueueRecords"]
    assert taken and all(json.loads(r["Data"])["id"] in set(got) | set(ids) for r in taken), taken
    out = k.acknowledge_queue_records(QueueARN=arn, Entries=[{"ReceiptHandle": r["ReceiptHandle"]} for r in taken])
    assert not out["Failed"], out
    print(f"events ok {len(ids)} on the stream, {len(got)} archived")


def in_cluster(objects, endpoint, bucket):
    """On a cluster node: a channel's objects land in the S3 bucket under
    buckets/<bucket>/, each record once."""
    import gzip
    k = client()
    arn = stream(k, "to-s3", 2)
    create(k, "to-s3", arn, S3DestinationConfiguration=s3("lake", "GZIP"))
    put(k, "to-s3", [(json.dumps({"n": i}).encode(), f"p{i}") for i in range(200)]
        + [(b"not json", "bad")])
    s3c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="moto", aws_secret_access_key="moto")

    def listed(prefix):
        return [o["Key"] for o in s3c.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

    def delivered():
        got = []
        for key in listed("buckets/lake/kinesis-channel/to-s3/"):
            body = gzip.decompress(s3c.get_object(Bucket=bucket, Key=key)["Body"].read())
            got += [json.loads(line)["n"] for line in body.splitlines()]
        return got if len(got) >= 200 else None

    got = wait_for("the objects in S3", delivered, 60)
    assert sorted(got) == list(range(200)), got
    errors = wait_for("the dead letter in S3", lambda: listed("buckets/lake/kinesis-channel/errors/to-s3/"), 60)
    line = json.loads(gzip.decompress(s3c.get_object(Bucket=bucket, Key=errors[0])["Body"].read()))
    assert line["partitionKey"] == "bad" and line["errorCode"] == "InvalidJson", line
    print("cluster ok")


def setup(objects, records):
    """A stream and a JSON/gzip channel; the stream's name on stdout."""
    k = client()
    arn = stream(k, "crash", 2)
    create(k, "crash", arn, S3DestinationConfiguration=s3("crash", "GZIP"))
    print("crash")


def load(objects, start, count):
    """Puts records start..start+count, one call each, printing each
    acknowledged number as it comes."""
    k = client()
    for i in range(int(start), int(start) + int(count)):
        put(k, "crash", [(json.dumps({"n": i}).encode(), f"p{i}")])
        print(i, flush=True)


def check(objects, acked):
    """Waits until every acknowledged record is delivered; then no record
    may appear twice."""
    acked = set(json.loads(open(acked).read()))
    glob = os.path.join(objects, "crash", "kinesis-channel", "crash", "**", "*.jsonl.gz")

    def delivered():
        if not files(os.path.join(objects, "crash"), ".jsonl.gz"):
            return None
        rows = duckdb.sql(f"select n from read_json('{glob}', format='newline_delimited')").fetchall()
        got = [r[0] for r in rows]
        return got if acked <= set(got) else None

    got = wait_for("every acknowledged record", delivered, 120)
    dupes = sorted({n for n in got if got.count(n) > 1})
    assert not dupes, f"delivered twice: {dupes[:10]}"
    print(f"check ok {len(got)} delivered, {len(acked)} acknowledged")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
