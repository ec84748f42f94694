"""Shared-memory buckets between two real processes (the CPU form of the CUDA-IPC sync path): the receiver
sees the sender's values in place, and a corrupted bucket is refused by its checksum."""
import multiprocessing as mp

import pytest
import torch

from rlhf_dist.sync.buckets import plan_buckets


def _receiver(conn) -> None:
    from rlhf_dist.errors import WeightSyncError
    from benchmarks.ipc_buckets import open_bucket

    out = []
    while True:
        msg = conn.recv()
        if msg is None:
            break
        bucket, handle, expected = msg
        try:
            views = dict(open_bucket(bucket, handle, expected))
            out.append({k: v.clone() for k, v in views.items()})
            # Writes go to the sender's memory: proof the bucket is shared, not copied.
            next(iter(views.values())).view(-1)[0] = -7.0
        except WeightSyncError as e:
            out.append(str(e))
        conn.send(out[-1])


@pytest.fixture
def receiver():
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child,), daemon=True)
    proc.start()
    yield parent
    parent.send(None)
    proc.join(timeout=30)
    assert proc.exitcode == 0


def weights():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(4, generator=g), "b.weight": torch.randn(2, 5, generator=g)}


def test_receiver_reads_the_senders_bucket_in_place(receiver):
    from benchmarks.ipc_buckets import share_bucket

    w = weights()
    (bucket,) = plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in w.items()], bucket_bytes=1 << 20)
    flat, handle, sums = share_bucket(bucket, list(w.values()), torch.device("cpu"))
    receiver.send((bucket, handle, sums))
    got = receiver.recv()
    assert set(got) == set(w)
    for k in w:
        assert torch.equal(got[k], w[k])
    assert flat[0].item() == -7.0  # the receiver wrote into the sender's buffer


def test_corrupted_bucket_is_refused(receiver):
    from benchmarks.ipc_buckets import share_bucket

    w = weights()
    (bucket,) = plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in w.items()], bucket_bytes=1 << 20)
    flat, handle, sums = share_bucket(bucket, list(w.values()), torch.device("cpu"))
    flat[5] += 1.0  # a byte changes after the checksum was taken
    receiver.send((bucket, handle, sums))
    msg = receiver.recv()
    assert isinstance(msg, str) and "a.weight .. b.weight): checksum" in msg and "differs from the sender's" in msg
