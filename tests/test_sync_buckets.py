"""Weight-sync buckets: planning, packing, unpacking and the checksum."""
import torch

from rlhf_dist.sync.buckets import checksum, pack, plan_buckets


def params():
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=g) for n, s in [("a", (4, 8)), ("b", (16,)), ("c", (64, 64)), ("d", (3, 5))]}


def test_plan_respects_bucket_size_and_order():
    ps = params()
    buckets = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in ps.items()], bucket_bytes=4 * 64)
    # a (128 B) + b (64 B) fit in 256 B; c (16 KiB) is over the size and goes alone; d starts a new bucket.
    assert [b.names for b in buckets] == [("a", "b"), ("c",), ("d",)]
    buckets = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in ps.items()], bucket_bytes=1 << 20)
    assert len(buckets) == 1 and buckets[0].numel == sum(t.numel() for t in ps.values())


def test_pack_unpack_roundtrip():
    ps = params()
    (bucket,) = plan_buckets([(n, tuple(t.shape), t.dtype) for n, t in ps.items()], bucket_bytes=1 << 20)
    flat = pack(list(ps.values()), bucket.empty(torch.device("cpu")))
    for name, view in bucket.unpack(flat):
        assert torch.equal(view, ps[name])


def test_checksum_detects_changes():
    t = torch.randn(1001)
    base = checksum(t)
    assert checksum(t.clone()) == base
    u = t.clone()
    u[500] = torch.nextafter(u[500], torch.tensor(10.0))  # one ulp
    assert checksum(u) != base
    swapped = t.clone()
    swapped[[1, 2]] = swapped[[2, 1]]
    assert checksum(swapped) != base
    assert checksum(t.to(torch.bfloat16)) == checksum(t.to(torch.bfloat16).clone())


def test_checksum_of_a_matrix_is_that_of_its_bytes_in_order():
    from rlhf_dist.sync.buckets import checksum

    m = torch.randn(448, 896)
    assert checksum(m) == checksum(m.reshape(-1))
    assert checksum(m.t().contiguous()) != checksum(m)
