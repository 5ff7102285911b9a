"""boto3 `kinesis` queues (botocore 1.44) against a running Kinema.

Usage: queues.py COMMAND ARGS... with KINEMA_ENDPOINT and AWS_* in the environment.
"""
import json
import os
import sys
import threading
import time

import boto3
import botocore.exceptions
from botocore.config import Config

ENDPOINT = os.environ["KINEMA_ENDPOINT"]


def client(validate=True):
    return boto3.client("kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, parameter_validation=validate,
                                      read_timeout=60))


def expect_error(code, fn, **kw):
    try:
        fn(**kw)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        return e.response["Error"].get("Message", "")
    raise AssertionError(f"expected {code}, the call succeeded")


def stream(k, name, shards):
    k.create_stream(StreamName=name, ShardCount=shards)
    return k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]


def put(k, name, values, key=None):
    for i in range(0, len(values), 500):
        chunk = values[i:i + 500]
        out = k.put_records(StreamName=name, Records=[
            {"Data": v.encode(), "PartitionKey": key or v} for v in chunk])
        assert out["FailedRecordCount"] == 0, out


def create(k, name, arn, **kw):
    return k.create_queue(QueueName=name, StreamConfigurationList=[{"StreamARN": arn, **kw}])["QueueDescription"]


def receive(k, arn, limit=10, wait=1, dead=False):
    op = k.receive_dead_letter_queue_records if dead else k.receive_queue_records
    return op(QueueARN=arn, Limit=limit, WaitTimeSeconds=wait)["QueueRecords"]


def ack(k, arn, handles, dead=False):
    op = k.acknowledge_dead_letter_queue_records if dead else k.acknowledge_queue_records
    return op(QueueARN=arn, Entries=[{"ReceiptHandle": h} for h in handles])


def drain(k, arn, expect, rounds=200):
    """Receives and acknowledges until `expect` records were seen or the
    queue stays empty; returns {data: RecordId}."""
    seen = {}
    for _ in range(rounds):
        recs = receive(k, arn, wait=1)
        if not recs:
            if len(seen) >= expect:
                return seen
            continue
        for r in recs:
            seen[r["Data"].decode()] = r["RecordId"]
        out = ack(k, arn, [r["ReceiptHandle"] for r in recs])
        assert not out["Failed"], out
    return seen


def cmd_suite():
    k = client()
    arn = stream(k, "orders", 2)
    put(k, "orders", [f"old-{i}" for i in range(5)])

    # Control plane and its error shapes.
    latest = create(k, "latest", arn)
    assert latest["QueueStatus"] == "ACTIVE", latest
    assert latest["QueueARN"].startswith("arn:aws:kinesis:us-east-1:") and ":queue/" in latest["QueueARN"]
    assert "latest" not in latest["QueueARN"].split(":queue/")[1], "the ARN's id is not the name"
    attrs = latest["QueueAttributes"]
    assert attrs["VisibilityTimeoutSeconds"] == 30, attrs
    assert attrs["DeadLetterConfiguration"] == {"TargetType": "BUILT_IN", "MaxReceiveCount": 6}, attrs
    assert latest["StreamConfigurationList"][0]["StartingPosition"]["Type"] == "LATEST"
    horizon = k.create_queue(
        QueueName="horizon",
        StreamConfigurationList=[{"StreamARN": arn, "StartingPosition": {"Type": "TRIM_HORIZON"}}],
        QueueAttributes={"VisibilityTimeoutSeconds": 2,
                         "DeadLetterConfiguration": {"TargetType": "NONE"}},
        Tags={"team": "counting"})["QueueDescription"]
    assert horizon["QueueAttributes"]["DeadLetterConfiguration"] == {"TargetType": "NONE"}
    expect_error("ResourceInUseException", k.create_queue, QueueName="latest",
                 StreamConfigurationList=[{"StreamARN": arn}])
    missing_stream = arn.replace("stream/orders", "stream/nothing")
    expect_error("ResourceNotFoundException", k.create_queue, QueueName="x",
                 StreamConfigurationList=[{"StreamARN": missing_stream}])
    expect_error("ValidationException", k.create_queue, QueueName="x",
                 StreamConfigurationList=[{"StreamARN": arn, "StartingPosition": {"Type": "AT_TIMESTAMP"}}])
    expect_error("ValidationException", k.create_queue, QueueName="x",
                 StreamConfigurationList=[{"StreamARN": arn, "StartingPosition": {
                     "Type": "LATEST", "Timestamp": time.time()}}])
    expect_error("ValidationException", k.create_queue, QueueName="x",
                 StreamConfigurationList=[{"StreamARN": arn}],
                 QueueAttributes={"DeadLetterConfiguration": {"TargetType": "BUILT_IN"}})
    expect_error("ValidationException", k.create_queue, QueueName="x",
                 StreamConfigurationList=[{"StreamARN": arn}, {"StreamARN": arn}])
    raw = client(validate=False)
    expect_error("ValidationException", raw.create_queue, QueueName="x",
                 StreamConfigurationList=[{"StreamARN": arn}],
                 QueueAttributes={"VisibilityTimeoutSeconds": 43201})
    gone = latest["QueueARN"][:-4] + "0000"
    expect_error("ResourceNotFoundException", k.describe_queue, QueueARN=gone)
    expect_error("ResourceNotFoundException", k.receive_queue_records, QueueARN=gone, WaitTimeSeconds=1)
    expect_error("InvalidArgumentException", raw.receive_queue_records, QueueARN=latest["QueueARN"], Limit=11)
    expect_error("InvalidArgumentException", raw.acknowledge_queue_records,
                 QueueARN=latest["QueueARN"], Entries=[])
    # A stream with queues is not deleted.
    expect_error("ResourceInUseException", k.delete_stream, StreamName="orders")

    described = k.describe_queue(QueueARN=horizon["QueueARN"])["QueueDescription"]
    assert described["QueueName"] == "horizon" and described["StreamConfigurationList"][0]["StreamARN"] == arn
    assert "Timestamp" in described["StreamConfigurationList"][0]["StartingPosition"]
    updated = k.update_queue(QueueARN=latest["QueueARN"], QueueAttributes={
        "VisibilityTimeoutSeconds": 1})["QueueDescription"]
    assert updated["QueueAttributes"]["VisibilityTimeoutSeconds"] == 1
    assert updated["QueueAttributes"]["DeadLetterConfiguration"]["MaxReceiveCount"] == 6, "left unchanged"

    other = stream(k, "other", 1)
    create(k, "elsewhere", other)
    names = [q["QueueName"] for q in k.list_queues()["QueueSummaries"]]
    assert names == ["elsewhere", "horizon", "latest"], names
    on_orders = k.list_queues(StreamFilter=[{"StreamARN": arn}])["QueueSummaries"]
    assert [q["QueueName"] for q in on_orders] == ["horizon", "latest"]
    assert on_orders[0]["Streams"][0]["StreamARN"] == arn and "StreamCreationTimestamp" in on_orders[0]["Streams"][0]
    page = k.list_queues(MaxResults=2)
    assert len(page["QueueSummaries"]) == 2 and page["NextToken"]
    rest = k.list_queues(MaxResults=2, NextToken=page["NextToken"])
    assert [q["QueueName"] for q in rest["QueueSummaries"]] == ["latest"] and "NextToken" not in rest
    token, paged = None, []
    for _ in range(5):
        p = k.list_queues(MaxResults=1, **({"NextToken": token} if token else {}))
        paged += [q["QueueName"] for q in p["QueueSummaries"]]
        token = p.get("NextToken")
        if not token:
            break
    assert paged == names, paged

    # LATEST sees only what comes after it; TRIM_HORIZON sees everything.
    put(k, "orders", [f"new-{i}" for i in range(25)])
    got = drain(k, latest["QueueARN"], 25)
    assert sorted(got) == sorted(f"new-{i}" for i in range(25)), sorted(got)
    first = receive(k, horizon["QueueARN"], limit=10)
    assert len(first) == 10, first
    r = first[0]
    assert r["ReceiveCount"] == 1 and r["FirstReceiveTimestamp"] and r["ApproximateArrivalTimestamp"], r
    assert r["PartitionKey"] == r["Data"].decode()
    # The same record has the same RecordId in every queue on the stream.
    ids = {x["Data"].decode(): x["RecordId"] for x in first}
    for d, rid in ids.items():
        if d in got:
            assert got[d] == rid, (d, rid, got[d])

    # In flight, nothing comes back; after the timeout it does, with a new
    # handle, and the old handle is stale.
    time.sleep(2.2)
    again = {x["RecordId"]: x for x in receive(k, horizon["QueueARN"], limit=10)}
    assert set(again) == {x["RecordId"] for x in first}, "redelivered after the visibility timeout"
    for x in first:
        y = again[x["RecordId"]]
        assert y["ReceiptHandle"] != x["ReceiptHandle"] and y["ReceiveCount"] == 2
        assert y["FirstReceiveTimestamp"] == x["FirstReceiveTimestamp"]
    out = ack(k, horizon["QueueARN"], [first[0]["ReceiptHandle"], again[first[1]["RecordId"]]["ReceiptHandle"]])
    assert [f["ReceiptHandle"] for f in out["Failed"]] == [first[0]["ReceiptHandle"]], out
    assert out["Failed"][0]["ErrorCode"] == "InvalidArgumentException" and "stale" in out["Failed"][0]["ErrorMessage"]
    assert len(out["Successful"]) == 1
    # Acknowledging again changes nothing and succeeds.
    out = ack(k, horizon["QueueARN"], [again[first[1]["RecordId"]]["ReceiptHandle"]])
    assert len(out["Successful"]) == 1 and not out["Failed"], out
    out = ack(k, horizon["QueueARN"], ["not-a-handle"])
    assert out["Failed"][0]["ErrorCode"] == "InvalidArgumentException", out
    # Visibility 0: visible at once; a longer one keeps it away.
    keep = again[first[2]["RecordId"]]
    soon = again[first[3]["RecordId"]]
    out = k.update_queue_records_visibility(QueueARN=horizon["QueueARN"], Entries=[
        {"ReceiptHandle": keep["ReceiptHandle"], "VisibilityTimeoutSeconds": 600},
        {"ReceiptHandle": soon["ReceiptHandle"], "VisibilityTimeoutSeconds": 0}])
    assert len(out["Successful"]) == 2, out
    later = receive(k, horizon["QueueARN"], limit=10)
    rids = [x["RecordId"] for x in later]
    assert soon["RecordId"] in rids and keep["RecordId"] not in rids, rids
    # Long polling answers as soon as a record is put.
    poll = create(k, "poll", arn)["QueueARN"]
    assert not receive(k, poll, wait=1)
    timer = threading.Timer(1.0, lambda: put(client(), "orders", ["late"]))
    timer.start()
    started = time.time()
    polled = receive(k, poll, limit=10, wait=20)
    waited = time.time() - started
    timer.join()
    assert [x["Data"] for x in polled] == [b"late"], polled
    assert waited < 15, f"a 20 s poll answered {waited:.1f} s after a put 1 s in"

    k.delete_queue(QueueARN=horizon["QueueARN"])
    expect_error("ResourceNotFoundException", k.describe_queue, QueueARN=horizon["QueueARN"])
    expect_error("ResourceNotFoundException", k.acknowledge_queue_records, QueueARN=horizon["QueueARN"],
                 Entries=[{"ReceiptHandle": keep["ReceiptHandle"]}])
    print("queues ok")


def cmd_poison():
    """Competing consumers: one crashes mid-batch, every one refuses a
    poison record; the poison becomes a dead letter after MaxReceiveCount
    receives while every other record is processed; restore brings it back."""
    k = client()
    arn = stream(k, "jobs", 2)
    q = k.create_queue(QueueName="work", StreamConfigurationList=[
        {"StreamARN": arn, "StartingPosition": {"Type": "TRIM_HORIZON"}}],
        QueueAttributes={"VisibilityTimeoutSeconds": 2,
                         "DeadLetterConfiguration": {"TargetType": "BUILT_IN", "MaxReceiveCount": 3}}
    )["QueueDescription"]["QueueARN"]
    jobs = [f"job-{i}" for i in range(120)]
    put(k, "jobs", jobs[:60] + ["poison"] + jobs[60:])

    # The crashing instance takes a batch and never acknowledges it.
    crashed = receive(client(), q, limit=10)
    crashed_ids = {r["Data"].decode() for r in crashed}
    assert len(crashed) == 10
    done, lock, refused = {}, threading.Lock(), []

    def worker(n):
        c = client()
        for _ in range(400):
            recs = receive(c, q, limit=10, wait=1)
            handles = []
            for r in recs:
                d = r["Data"].decode()
                if d == "poison":
                    with lock:
                        refused.append(r["ReceiveCount"])
                    # Refused: back at once for another try.
                    c.update_queue_records_visibility(QueueARN=q, Entries=[
                        {"ReceiptHandle": r["ReceiptHandle"], "VisibilityTimeoutSeconds": 0}])
                else:
                    handles.append(r["ReceiptHandle"])
                    with lock:
                        done.setdefault(d, []).append(n)
            if handles:
                out = ack(c, q, handles)
                assert not out["Failed"], out
            with lock:
                if len(done) == len(jobs) and len(refused) + ("poison" in crashed_ids) >= 3:
                    return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == sorted(jobs), f"missing {set(jobs) - set(done)}"
    redelivered = crashed_ids - {"poison"}
    assert redelivered <= set(done), "the crashed batch went to the others"
    expected = [2, 3] if "poison" in crashed_ids else [1, 2, 3]
    assert sorted(refused) == expected, f"the poison was received {refused}"
    assert not receive(k, q, wait=1), "the dead letter is off the normal path"
    dead = receive(k, q, dead=True)
    assert [r["Data"] for r in dead] == [b"poison"] and dead[0]["ReceiveCount"] == 3, dead
    out = k.acknowledge_queue_records(QueueARN=q, Entries=[{"ReceiptHandle": dead[0]["ReceiptHandle"]}])
    assert out["Failed"] and out["Failed"][0]["ErrorCode"] == "InvalidArgumentException", out
    # Dead-letter visibility, then restore: back with its count reset.
    k.update_dead_letter_queue_records_visibility(QueueARN=q, Entries=[
        {"ReceiptHandle": dead[0]["ReceiptHandle"], "VisibilityTimeoutSeconds": 0}])
    dead = receive(k, q, dead=True)
    assert len(dead) == 1
    out = k.restore_dead_letter_queue_records(QueueARN=q, Entries=[{"ReceiptHandle": dead[0]["ReceiptHandle"]}])
    assert len(out["Successful"]) == 1 and not out["Failed"], out
    back = receive(k, q)
    assert [r["Data"] for r in back] == [b"poison"] and back[0]["ReceiveCount"] == 1, back
    assert back[0]["RecordId"] == dead[0]["RecordId"]
    # Refused until it is a dead letter again, then discarded.
    for _ in range(2):
        k.update_queue_records_visibility(QueueARN=q, Entries=[
            {"ReceiptHandle": back[0]["ReceiptHandle"], "VisibilityTimeoutSeconds": 0}])
        back = receive(k, q)
    k.update_queue_records_visibility(QueueARN=q, Entries=[
        {"ReceiptHandle": back[0]["ReceiptHandle"], "VisibilityTimeoutSeconds": 0}])
    dead = receive(k, q, dead=True)
    assert len(dead) == 1
    out = ack(k, q, [dead[0]["ReceiptHandle"]], dead=True)
    assert len(out["Successful"]) == 1, out
    assert not receive(k, q, dead=True, wait=1) and not receive(k, q, wait=1)
    print("poison ok")


def cmd_setup(name, count):
    k = client()
    arn = stream(k, name, 2)
    q = k.create_queue(QueueName=name, StreamConfigurationList=[
        {"StreamARN": arn, "StartingPosition": {"Type": "TRIM_HORIZON"}}],
        QueueAttributes={"VisibilityTimeoutSeconds": 3,
                         "DeadLetterConfiguration": {"TargetType": "NONE"}})["QueueDescription"]["QueueARN"]
    put(k, name, [f"r-{i}" for i in range(int(count))])
    print(q)


def cmd_consume(arn, instances):
    """Consumers receiving and acknowledging until killed (or the queue is
    empty for a while): each acknowledged record on stdout once its
    acknowledgement answered (`A`); received ones marked `R`, and `K`
    just before their acknowledgement is sent."""
    out_lock = threading.Lock()

    def say(line):
        with out_lock:
            print(line, flush=True)

    def run():
        c = client()
        empty = 0
        while empty < 3:
            try:
                recs = receive(c, arn, limit=10, wait=1)
            except Exception:
                return
            if not recs:
                empty += 1
                continue
            empty = 0
            for r in recs:
                say("R " + r["Data"].decode())
            for r in recs:
                say("K " + r["Data"].decode())
            try:
                res = ack(c, arn, [r["ReceiptHandle"] for r in recs])
            except Exception:
                return
            ok = {s["ReceiptHandle"] for s in res["Successful"]}
            for r in recs:
                if r["ReceiptHandle"] in ok:
                    say("A " + r["Data"].decode())

    threads = [threading.Thread(target=run) for _ in range(int(instances))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    globals()["cmd_" + cmd](*args)


if __name__ == "__main__":
    main()
