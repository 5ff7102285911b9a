"""boto3 `kinesis` against a running Kinema (data streams).

Usage: ds.py COMMAND ARGS... with KINEMA_ENDPOINT and AWS_* in the environment.
"""
import json
import os
import sys
import time

import boto3
import botocore.exceptions
from botocore.config import Config

ENDPOINT = os.environ["KINEMA_ENDPOINT"]


def client(validate=True):
    return boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, parameter_validation=validate))


def expect_error(code, fn, **kw):
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def read_shard(k, name, shard, itype="TRIM_HORIZON", **kw):
    it = k.get_shard_iterator(StreamName=name, ShardId=shard, ShardIteratorType=itype, **kw)["ShardIterator"]
    out = []
    for _ in range(1000):
        page = k.get_records(ShardIterator=it, Limit=1000)
        out += page["Records"]
        it = page.get("NextShardIterator")
        if it is None or not page["Records"]:
            return out, page
    raise AssertionError("shard never drained")


def cmd_suite():
    k = client()
    k.create_stream(StreamName="orders", ShardCount=2)
    expect_error("ResourceInUseException", k.create_stream, StreamName="orders", ShardCount=1)
    expect_error("ResourceNotFoundException", k.describe_stream, StreamName="missing")
    desc = k.describe_stream(StreamName="orders")["StreamDescription"]
    shards = desc["Shards"]
    assert len(shards) == 2 and desc["RetentionPeriodHours"] == 24, desc
    assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert int(shards[1]["HashKeyRange"]["EndingHashKey"]) == 2**128 - 1
    assert int(shards[0]["HashKeyRange"]["EndingHashKey"]) + 1 == int(shards[1]["HashKeyRange"]["StartingHashKey"])
    assert k.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["OpenShardCount"] == 2
    assert "orders" in k.list_streams()["StreamNames"]

    # One store's events land on one shard, in order, with rising sequence numbers.
    seqs = []
    for i in range(30):
        r = k.put_record(StreamName="orders", PartitionKey="store-7", Data=f"order {i}".encode())
        seqs.append((r["ShardId"], r["SequenceNumber"]))
    assert len({s for s, _ in seqs}) == 1
    assert [q for _, q in seqs] == sorted(q for _, q in seqs) and len({q for _, q in seqs}) == 30
    shard = seqs[0][0]
    recs, last = read_shard(k, "orders", shard)
    mine = [r for r in recs if r["PartitionKey"] == "store-7"]
    assert [r["Data"] for r in mine] == [f"order {i}".encode() for i in range(30)]
    assert last["MillisBehindLatest"] == 0

    # PutRecords: per-entry results in request order, partial failure.
    raw = client(validate=False)
    entries = [{"PartitionKey": f"k{i}", "Data": b"x" * 10} for i in range(498)]
    entries.insert(3, {"PartitionKey": "", "Data": b"bad"})
    entries.insert(7, {"PartitionKey": "p" * 257, "Data": b"bad"})
    res = raw.put_records(StreamName="orders", Records=entries)
    assert res["FailedRecordCount"] == 2, res["FailedRecordCount"]
    assert "ErrorCode" in res["Records"][3] and "ErrorCode" in res["Records"][7]
    assert all("SequenceNumber" in r for i, r in enumerate(res["Records"]) if i not in (3, 7))
    expect_error("InvalidArgumentException", raw.put_records, StreamName="orders",
                 Records=[{"PartitionKey": "a", "Data": b"x"}] * 501)
    expect_error("InvalidArgumentException", raw.put_record, StreamName="orders", PartitionKey="a",
                 Data=b"x" * (1024 * 1024 + 1))
    expect_error("ResourceNotFoundException", k.put_record, StreamName="nope", PartitionKey="a", Data=b"x")

    # Iterators: LATEST, AT/AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP, forged.
    it = k.get_shard_iterator(StreamName="orders", ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    assert k.get_records(ShardIterator=it)["Records"] == []
    r = k.put_record(StreamName="orders", PartitionKey="store-7", Data=b"after latest")
    got = k.get_records(ShardIterator=it)["Records"]
    assert [x["Data"] for x in got] == [b"after latest"], got
    at, _ = read_shard(k, "orders", shard, "AT_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[5][1])
    assert at[0]["SequenceNumber"] == seqs[5][1]
    after, _ = read_shard(k, "orders", shard, "AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=seqs[5][1])
    assert after[0]["SequenceNumber"] == seqs[6][1]
    ts, _ = read_shard(k, "orders", shard, "AT_TIMESTAMP", Timestamp=time.time() + 3600)
    assert ts == []
    ts, _ = read_shard(k, "orders", shard, "AT_TIMESTAMP", Timestamp=0)
    assert ts[0]["SequenceNumber"] == seqs[0][1]
    expect_error("InvalidArgumentException", k.get_records, ShardIterator="00" * 45)
    forged = it[:-2] + ("00" if it[-2:] != "00" else "11")
    expect_error("InvalidArgumentException", k.get_records, ShardIterator=forged)

    # Resharding: split, the parent drains to its children, merge, scale.
    parent = shards[0]
    lo, hi = int(parent["HashKeyRange"]["StartingHashKey"]), int(parent["HashKeyRange"]["EndingHashKey"])
    k.put_record(StreamName="orders", PartitionKey="x", Data=b"before split", ExplicitHashKey=str(lo))
    # A later record on the other shard puts the parent's ending sequence
    # number above its own last record (regression: the parent must still
    # count as drained once its last record is read).
    k.put_record(StreamName="orders", PartitionKey="x", Data=b"elsewhere", ExplicitHashKey=str(2**128 - 1))
    k.split_shard(StreamName="orders", ShardToSplit=parent["ShardId"], NewStartingHashKey=str((lo + hi) // 2))
    after_split = k.put_record(StreamName="orders", PartitionKey="x", Data=b"after split", ExplicitHashKey=str(lo))
    listed = k.list_shards(StreamName="orders")["Shards"]
    assert len(listed) == 4, listed
    children = [s for s in listed if s.get("ParentShardId") == parent["ShardId"]]
    assert len(children) == 2 and after_split["ShardId"] == children[0]["ShardId"]
    closed = [s for s in listed if s["ShardId"] == parent["ShardId"]][0]
    assert "EndingSequenceNumber" in closed["SequenceNumberRange"]
    recs, last = read_shard(k, "orders", parent["ShardId"])
    assert recs[-1]["Data"] == b"before split"
    assert "NextShardIterator" not in last, last
    assert sorted(c["ShardId"] for c in last["ChildShards"]) == sorted(c["ShardId"] for c in children)
    assert int(after_split["SequenceNumber"]) > int(closed["SequenceNumberRange"]["EndingSequenceNumber"])
    k.merge_shards(StreamName="orders", ShardToMerge=children[0]["ShardId"], AdjacentShardToMerge=children[1]["ShardId"])
    expect_error("InvalidArgumentException", k.merge_shards, StreamName="orders",
                 ShardToMerge="shardId-000000000001", AdjacentShardToMerge="shardId-000000000001")
    k.update_shard_count(StreamName="orders", TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    open_shards = [s for s in k.list_shards(StreamName="orders")["Shards"] if "EndingSequenceNumber" not in s["SequenceNumberRange"]]
    assert len(open_shards) == 4
    bounds = sorted((int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"])) for s in open_shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == 2**128 - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(bounds, bounds[1:])), bounds

    # Retention and tags.
    k.increase_stream_retention_period(StreamName="orders", RetentionPeriodHours=48)
    assert k.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48
    expect_error("InvalidArgumentException", k.decrease_stream_retention_period, StreamName="orders", RetentionPeriodHours=12)
    k.add_tags_to_stream(StreamName="orders", Tags={"team": "shop"})
    assert k.list_tags_for_stream(StreamName="orders")["Tags"] == [{"Key": "team", "Value": "shop"}]
    k.delete_stream(StreamName="orders")
    expect_error("ResourceNotFoundException", k.describe_stream, StreamName="orders")
    print("data streams ok")


def cmd_subscribe():
    """Enhanced fan-out: consumers and SubscribeToShard push over the event stream."""
    import threading
    k = client()
    k.create_stream(StreamName="push", ShardCount=1)
    arn = k.describe_stream_summary(StreamName="push")["StreamDescriptionSummary"]["StreamARN"]
    c = k.register_stream_consumer(StreamARN=arn, ConsumerName="dash")["Consumer"]
    assert c["ConsumerStatus"] == "ACTIVE" and c["ConsumerARN"].startswith(arn + "/consumer/dash:")
    expect_error("ResourceInUseException", k.register_stream_consumer, StreamARN=arn, ConsumerName="dash")
    assert k.describe_stream_consumer(ConsumerARN=c["ConsumerARN"])["ConsumerDescription"]["StreamARN"] == arn
    assert k.describe_stream_consumer(StreamARN=arn, ConsumerName="dash")["ConsumerDescription"]["ConsumerARN"] == c["ConsumerARN"]
    assert [x["ConsumerName"] for x in k.list_stream_consumers(StreamARN=arn)["Consumers"]] == ["dash"]

    first = [k.put_record(StreamName="push", PartitionKey="p", Data=f"r{i}".encode())["SequenceNumber"] for i in range(5)]
    resp = k.subscribe_to_shard(ConsumerARN=c["ConsumerARN"], ShardId="shardId-000000000000",
                                StartingPosition={"Type": "TRIM_HORIZON"})
    got = []
    def later():
        time.sleep(0.5)
        for i in range(5, 8):
            k.put_record(StreamName="push", PartitionKey="p", Data=f"r{i}".encode())
    threading.Thread(target=later).start()
    last_cont = None
    for i, event in enumerate(resp["EventStream"]):
        e = event["SubscribeToShardEvent"]
        got += [r["Data"].decode() for r in e["Records"]]
        if e["Records"]:
            assert e["ContinuationSequenceNumber"] == e["Records"][-1]["SequenceNumber"]
        last_cont = e["ContinuationSequenceNumber"]
        if len(got) >= 8 or i > 20:
            break
    resp["EventStream"].close()
    assert got == [f"r{i}" for i in range(8)], got
    assert got[:5] and last_cont > first[-1]

    # Resume after the continuation point: only newer records come.
    k.put_record(StreamName="push", PartitionKey="p", Data=b"r8")
    resp = k.subscribe_to_shard(ConsumerARN=c["ConsumerARN"], ShardId="shardId-000000000000",
                                StartingPosition={"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last_cont})
    for event in resp["EventStream"]:
        recs = event["SubscribeToShardEvent"]["Records"]
        if recs:
            assert [r["Data"] for r in recs] == [b"r8"], recs
            break
    resp["EventStream"].close()

    expect_error("ResourceNotFoundException", k.subscribe_to_shard, ConsumerARN=arn + "/consumer/nobody:1",
                 ShardId="shardId-000000000000", StartingPosition={"Type": "LATEST"})
    k.deregister_stream_consumer(ConsumerARN=c["ConsumerARN"])
    expect_error("ResourceNotFoundException", k.describe_stream_consumer, ConsumerARN=c["ConsumerARN"])
    print("subscribe ok")


def cmd_quota():
    """With 2 records/s per shard: per-entry throttling in PutRecords, and
    boto3's own retries carrying PutRecord through."""
    k = client()
    k.create_stream(StreamName="limited", ShardCount=1)
    res = k.put_records(StreamName="limited", Records=[{"PartitionKey": f"k{i}", "Data": b"x"} for i in range(8)])
    codes = [r.get("ErrorCode") for r in res["Records"]]
    assert res["FailedRecordCount"] == 6, res
    assert codes[:2] == [None] * 2 and codes[2:] == ["ProvisionedThroughputExceededException"] * 6, codes
    throttled = 0
    for _ in range(20):
        try:
            k.put_record(StreamName="limited", PartitionKey="a", Data=b"x")
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "ProvisionedThroughputExceededException", e
            throttled += 1
    assert throttled > 0, "PutRecord past the quota is refused"
    retrying = boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                            config=Config(retries={"mode": "standard", "max_attempts": 10}))
    retries = 0
    for i in range(6):
        r = retrying.put_record(StreamName="limited", PartitionKey="a", Data=b"y")
        retries += r["ResponseMetadata"]["RetryAttempts"]
    assert retries > 0, "boto3 retried throttled puts"
    print("quota ok", retries)


def cmd_create(name, shards):
    client().create_stream(StreamName=name, ShardCount=int(shards))


def cmd_create_many(prefix, count):
    """Creates data streams prefix-0.. until the server's limit; prints
    how many were created (the rest get LimitExceededException)."""
    k = client()
    created = 0
    for i in range(int(count)):
        try:
            k.create_stream(StreamName=f"{prefix}-{i}", ShardCount=1)
            created += 1
        except botocore.exceptions.ClientError as e:
            assert e.response["Error"]["Code"] == "LimitExceededException", e
    print(created)


def cmd_produce(name, batches):
    """Puts batches of 100 records; prints each acknowledged record at once."""
    k = client()
    for b in range(int(batches)):
        recs = [{"PartitionKey": f"key-{i % 17}", "Data": f"{b}-{i}".encode()} for i in range(100)]
        res = k.put_records(StreamName=name, Records=recs)
        for rec, r in zip(recs, res["Records"]):
            if "SequenceNumber" in r:
                print(json.dumps([r["ShardId"], r["SequenceNumber"], rec["Data"].decode()]), flush=True)


def cmd_dump(name):
    k = client()
    out = []
    for s in k.list_shards(StreamName=name)["Shards"]:
        recs, _ = read_shard(k, name, s["ShardId"])
        out += [[s["ShardId"], r["SequenceNumber"], r["Data"].decode()] for r in recs]
    print(json.dumps(out))


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
