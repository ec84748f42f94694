"""Loggers: which are active, TensorBoard and Weights & Biases (offline, a local directory) read back."""
import json
import os
import time


from rlhf_dist.config import RunConfig
from rlhf_dist.loggers import active_loggers
from rlhf_dist.metrics import MetricsWriter, read_metrics

ROWS = [{"reward/mean": 0.1 * s, "kl/mean": 0.01 * s, "sync/verified": True, "note": "text"} for s in range(1, 4)]
RECORD = {"run": {"name": "t"}, "ppo": {"policy_lr": 0.001}, "derived_table": "  samples per step  16"}


def test_active_loggers():
    assert active_loggers(RunConfig()) == ["jsonl", "tensorboard"]  # run.tensorboard keeps working
    assert active_loggers(RunConfig(tensorboard=False)) == ["jsonl"]
    assert active_loggers(RunConfig(loggers=["tensorboard"])) == ["jsonl", "tensorboard"]  # jsonl is always written
    assert active_loggers(RunConfig(loggers=["wandb", "jsonl"], tensorboard=True)) == ["jsonl", "wandb"]


def _write(run_dir, run):
    w = MetricsWriter(run_dir, run, RECORD)
    for step, row in enumerate(ROWS, start=1):
        w.write(step, row)
    w.close()


def test_tensorboard_holds_the_scalars_and_the_derived_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(tmp_path, RunConfig(loggers=["tensorboard"]))
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [0.1, 0.2, 0.30000000000000004]
    acc = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("kl/mean")] == [(1, 0.01), (2, 0.02), (3, 0.03)]
    assert "sync/verified" not in acc.Tags()["scalars"]  # booleans and text are not scalars
    assert "derived/text_summary" in acc.Tags()["tensors"]


def _leveldb_records(raw: bytes):
    """Records of a .wandb file: a 7-byte header, then LevelDB log blocks of 32 KiB holding chunks
    (crc32 4 bytes, length 2, type 1: full, first, middle, last)."""
    assert raw[:4] == b":W&B", raw[:7]
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        kind = raw[pos + 6]
        chunk = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            yield parts
            parts = b""


def _wandb_log(run_dir) -> tuple[dict, list[dict]]:
    """The run's config and logged rows, read from the offline run's transaction log."""
    from wandb.proto import wandb_internal_pb2

    (log,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    config, rows = {}, []
    for data in _leveldb_records(log.read_bytes()):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        items = {"run": lambda: rec.run.config.update, "config": lambda: rec.config.update}.get(kind)
        if items is not None:
            config.update({i.key: json.loads(i.value_json) for i in items()})
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return config, rows


def test_wandb_offline_records_config_derived_table_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    _write(tmp_path, RunConfig(name="t", loggers=["wandb"]))
    run_id = (tmp_path / "wandb_id").read_text()
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) == 1
    deadline = time.monotonic() + 60
    while len((rows := _wandb_log(tmp_path))[1]) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # the W&B service process may still be writing its log after finish() returns
    config, rows = rows
    assert config["ppo"] == {"policy_lr": 0.001}
    assert config["derived_table"] == RECORD["derived_table"]
    assert [(r["_step"], r["reward/mean"], r["kl/mean"]) for r in rows] == [(s, ROWS[s - 1]["reward/mean"], ROWS[s - 1]["kl/mean"]) for s in (1, 2, 3)]
    assert all("sync/verified" not in r and "note" not in r for r in rows)
    assert not (tmp_path / "tensorboard").exists()
    assert os.environ["WANDB_MODE"] == "offline"
