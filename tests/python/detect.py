"""Detection test helpers (boto3, onnx, jsonschema from the setup's venv).

Usage: detect.py COMMAND ARGS...
  yolo-model OUT            a tiny YOLOv8-layout model: input [1,3,64,64], output [1,7,2]
                            whose candidate 1 is class 1 at 0.9, box cx=48 cy=32 w=32 h=16
  slow-model OUT            an SSD-layout model ([1,300,300,3] -> scores, boxes) that
                            finds nothing and takes a long time doing it
  events STREAM CAMERA T0_MS|first SCHEMA
                            reads every event of CAMERA from data stream STREAM with boto3
                            (TRIM_HORIZON, all shards), checks order, ids and the schema;
                            prints one JSON summary line
"""
import json
import os
import sys

import numpy as np


def yolo_model(out):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = np.zeros((1, 7, 2), np.float32)
    c[0, 0:4, 1] = [48, 32, 32, 16]  # cx, cy, w, h of candidate 1
    c[0, 5, 1] = 0.9                  # class 1
    c[0, 4, 0] = 0.2                  # candidate 0: class 0, below threshold
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["c", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 2])],
        [numpy_helper.from_array(c, "c"), numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


def slow_model(out):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = (rng.standard_normal((900, 900)) / 30).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["image", "shape"], ["x0"])]
    for i in range(80):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"y{i}"]))
        nodes.append(helper.make_node("Tanh", [f"y{i}"], [f"x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", ["x80"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["s0", "z"], ["scores"]),
        helper.make_node("Add", ["b0", "z"], ["boxes"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([300, 900], np.int64), "shape"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.zeros((1, 1917, 90), np.float32), "s0"),
        numpy_helper.from_array(np.zeros((1, 1917, 1, 4), np.float32), "b0"),
    ]
    graph = helper.make_graph(
        nodes, "slow_ssd",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 300, 300, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1917, 90]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 1917, 1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


def events(stream, camera, t0_ms, schema_path):
    import boto3
    import jsonschema

    k = boto3.client("kinesis", endpoint_url=os.environ["KINEMA_ENDPOINT"], region_name="us-east-1")
    schema = json.load(open(schema_path))
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    out = []
    for shard in k.list_shards(StreamName=stream)["Shards"]:
        it = k.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                  ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        last_seq = -1
        for _ in range(1000):
            page = k.get_records(ShardIterator=it, Limit=1000)
            for r in page["Records"]:
                seq = int(r["SequenceNumber"])
                assert seq > last_seq, "records out of sequence order"
                last_seq = seq
                e = json.loads(r["Data"])
                validator.validate(e)
                assert r["PartitionKey"] == e["stream"], "partition key is the camera"
                if e["stream"] == camera:
                    out.append(e)
            it = page.get("NextShardIterator")
            if it is None or not page["Records"]:
                break
    ids = [e["id"] for e in out]
    assert len(ids) == len(set(ids)), "event ids repeat"
    ts = [e["producer_timestamp_ms"] for e in out]
    assert ts == sorted(ts), "one camera's events arrive in time order"
    fps = 30000 / 1001
    # "first": the first event is the first analysed frame, the clip's frame 0.
    t0 = out[0]["producer_timestamp_ms"] if t0_ms == "first" and out else int(t0_ms)
    frame = lambda e: round((e["producer_timestamp_ms"] - t0) / 1000 * fps)
    print(json.dumps({
        "events": len(out),
        "kinds": sorted({e["kind"] for e in out}),
        "seen_frames": [frame(e) for e in out if e["kind"] == "count" and e["count"]["in_view"] > 0],
        "crossings": [[frame(e), e["crossing"]["line"], e["crossing"]["direction"], e["class"]]
                      for e in out if e["kind"] == "crossing"],
        "first": out[0] if out else None,
    }))


def validate(schema_path, events_path):
    """Validates each line of events_path (one JSON event) against the schema."""
    import jsonschema

    schema = json.load(open(schema_path))
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    n = 0
    for line in open(events_path):
        validator.validate(json.loads(line))
        n += 1
    print(json.dumps({"valid": n}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"yolo-model": yolo_model, "slow-model": slow_model, "events": events,
     "validate": validate}[cmd](*args)


if __name__ == "__main__":
    main()
