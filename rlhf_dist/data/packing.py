"""Token-budget micro-batches: which samples each data-parallel rank gets, and which go in one forward pass.

Pure functions on sample sizes; the controller computes a plan per call and sends each rank its rows and its
part of the plan (the learners run it: rlhf_dist.learner.workers; the packed layout: rlhf_dist.learner.packed).

- A sample's cost in a micro-batch is its real tokens when rows are packed, or, padded, the micro-batch's count
  times its widest prompt plus its widest response (the trimmed [prompt | response] block it is padded to).
- Mini-batches: those of the update by count (count_mini_batches), so each optimizer step sees the same samples
  with or without a token budget.
- Ranks: every mini-batch's samples are dealt to the ranks in equal numbers, largest first to the rank with the
  least work so far (greedy LPT), so ranks wait little on each other.
- Micro-batches: first-fit-decreasing into bins of at most `budget`; every rank then splits its largest bins
  until it has as many micro-batches as the busiest rank: DeepSpeed needs the same number of forward/backward
  passes on every rank (ZeRO-3 gathers each layer in every forward).
"""
from __future__ import annotations

import dataclasses

import torch

from rlhf_dist.data.batch import shard_bounds, to_wire


@dataclasses.dataclass(frozen=True)
class Size:
    """One sample: real tokens left and right of the layout's split column (prompt | response), the sequences it
    holds (2 for a preference pair, whose sides are then the wider of its two sequences') and its real tokens."""

    left: int
    right: int
    seqs: int
    tokens: int


def sizes(batch: dict[str, torch.Tensor]) -> list[Size]:
    """The sizes of a batch's samples: [B, W] rows or [B, 2, W] pairs. With a response `mask` [.., R] the split
    column is W - R (left-padded prompts, right-padded responses), else 0 (right-padded sequences)."""
    attn = batch["attention_mask"]
    split = attn.shape[-1] - batch["mask"].shape[-1] if "mask" in batch else 0
    left, right = attn[..., :split].sum(-1), attn[..., split:].sum(-1)
    real = attn.flatten(1).sum(1)
    seqs = 1
    if attn.ndim == 3:  # pairs: padded, both sequences take the wider side of either
        left, right, seqs = left.max(-1).values, right.max(-1).values, 2
    return [Size(int(a), int(b), seqs, int(t)) for a, b, t in zip(left, right, real)]


def cost(members: list[Size], packed: bool) -> int:
    """Positions one micro-batch of these samples computes: real tokens packed, the padded block otherwise."""
    if packed:
        return sum(s.tokens for s in members)
    if not members:
        return 0
    return sum(s.seqs for s in members) * (max(s.left for s in members) + max(s.right for s in members))


def first_fit_decreasing(items: list[int], size: list[Size], budget: int, packed: bool) -> list[list[int]]:
    """Bins of `items` (indices into `size`), largest first, each into the first bin it fits (cost <= budget). A
    sample larger than the budget gets a bin of its own (the config check keeps budgets above every sample)."""
    bins: list[list[int]] = []
    for i in sorted(items, key=lambda i: (-size[i].tokens, i)):
        for b in bins:
            if cost([size[j] for j in b] + [size[i]], packed) <= budget:
                b.append(i)
                break
        else:
            bins.append([i])
    return bins


def split_to(bins: list[list[int]], k: int, size: list[Size], packed: bool) -> list[list[int]]:
    """`bins` split until there are k: the costliest bin holding two or more samples is halved (samples dealt
    alternately, largest first). Halving never raises a bin's cost, so the budget still holds."""
    bins = [list(b) for b in bins]
    while len(bins) < k:
        splittable = [b for b in bins if len(b) > 1]
        if not splittable:
            raise ValueError(f"cannot make {k} micro-batches of {sum(map(len, bins))} samples")
        b = max(splittable, key=lambda b: cost([size[j] for j in b], packed))
        bins.remove(b)
        ordered = sorted(b, key=lambda i: (-size[i].tokens, i))
        bins += [ordered[0::2], ordered[1::2]]
    return sorted(bins, key=lambda b: min(b))


def deal(items: list[int], size: list[Size], ranks: int) -> list[list[int]]:
    """`items` over `ranks` in the counts rlhf_dist.data.batch.shard_bounds gives (equal when they divide), each
    sample, largest first, to the rank with the fewest tokens so far among those with room (greedy LPT)."""
    room = [b - a for a, b in shard_bounds(len(items), ranks)]
    parts: list[list[int]] = [[] for _ in range(ranks)]
    load = [0] * ranks
    for i in sorted(items, key=lambda i: (-size[i].tokens, i)):
        r = min((r for r in range(ranks) if len(parts[r]) < room[r]), key=lambda r: (load[r], r))
        parts[r].append(i)
        load[r] += size[i].tokens
    return [sorted(p) for p in parts]


def micro_batches(parts: list[list[int]], size: list[Size], budget: int, packed: bool) -> list[list[list[int]]]:
    """Each rank's samples in micro-batches of at most `budget`, the same number on every rank."""
    bins = [first_fit_decreasing(p, size, budget, packed) for p in parts]
    k = max(len(b) for b in bins)
    return [split_to(b, k, size, packed) for b in bins]


def sequence_groups(lengths: list[int], count: int, budget: int | None, packed: bool) -> list[list[int]]:
    """Micro-batches of right-padded sequences on one rank (the reward model's scoring): `count` consecutive
    ones, or by token budget (first-fit-decreasing)."""
    if budget is None:
        return [list(range(i, min(i + count, len(lengths)))) for i in range(0, len(lengths), count)]
    return first_fit_decreasing(list(range(len(lengths))), [Size(0, n, 1, n) for n in lengths], budget, packed)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Samples into rows of at most `capacity` tokens, first-fit-decreasing (a longer sample gets its own row)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, f in enumerate(fill):
            if f + lengths[i] <= capacity:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    return rows


@dataclasses.dataclass(frozen=True)
class MiniBatch:
    """One optimizer step on one rank: its micro-batches (indices into the rank's rows) and, for token-budget
    micro-batches, the loss units of the whole mini-batch over every rank (tokens, sequences: each micro-batch's
    loss is then its share of the mini-batch's); None: each micro-batch's loss is its own mean, as by count."""

    micro: tuple[tuple[int, ...], ...]
    totals: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class RankPlan:
    """What one rank runs in one call: the batch rows it is sent (global indices, in the order it holds them), its
    mini-batches in order, and the layout: `packed` rows, or padded rows `trim`med to each micro-batch's widest
    prompt and response (untrimmed: the batch's width, as by count)."""

    rows: tuple[int, ...]
    minis: tuple[MiniBatch, ...]
    packed: bool = False
    trim: bool = True


def _rank_plans(steps: list[tuple[list[list[list[int]]], tuple[float, float] | None]], ranks: int, packed: bool,
                trim: bool, rows: list[list[int]] | None = None) -> list[RankPlan]:
    """steps: per mini-batch, each rank's micro-batches of global indices, and the mini-batch's totals."""
    plans = []
    for r in range(ranks):
        held = rows[r] if rows is not None else sorted({i for micro, _ in steps for mb in micro[r] for i in mb})
        local = {g: j for j, g in enumerate(held)}
        minis = tuple(MiniBatch(tuple(tuple(local[i] for i in mb) for mb in micro[r]), totals) for micro, totals in steps)
        plans.append(RankPlan(tuple(held), minis, packed, trim))
    return plans


def count_mini_batches(n: int, ranks: int, mini_batch_size: int, epochs: int, seed: int) -> list[list[list[int]]]:
    """The mini-batches of an update by count, each as its ranks' samples: contiguous shards, each rank's shuffled
    every epoch by its own generator (seed + rank), and mini-batch m the m-th slice of every rank's order."""
    bounds = shard_bounds(n, ranks)
    mini = mini_batch_size // ranks
    orders = []
    for r, (a, b) in enumerate(bounds):
        gen = torch.Generator().manual_seed(seed + r)
        orders.append([(torch.randperm(b - a, generator=gen) + a).tolist() for _ in range(epochs)])
    return [[orders[r][e][start : start + mini] for r in range(ranks)]
            for e in range(epochs) for start in range(0, bounds[0][1] - bounds[0][0], mini)]


def update_plan(size: list[Size], loss_tokens: list[float], mini_batch_size: int, ranks: int, epochs: int, budget: int,
                packed: bool, seed: int) -> list[RankPlan]:
    """The update by token budget: the mini-batches of the update by count (count_mini_batches: the same samples
    in each optimizer step), each dealt afresh to the ranks and cut into micro-batches. `loss_tokens`: the tokens
    each sample adds to its loss's denominator, summed per mini-batch with the mini-batch's samples."""
    steps = []
    for parts in count_mini_batches(len(size), ranks, mini_batch_size, epochs, seed):
        members = [i for p in parts for i in p]
        micro = micro_batches(deal(members, size, ranks), size, budget, packed)
        steps.append((micro, (float(sum(loss_tokens[i] for i in members)), float(len(members)))))
    return _rank_plans(steps, ranks, packed, trim=True)


def infer_plan(size: list[Size], ranks: int, budget: int, packed: bool) -> list[RankPlan]:
    """A pass without gradients over every sample once, by token budget: one "mini-batch" per rank."""
    micro = micro_batches(deal(list(range(len(size))), size, ranks), size, budget, packed)
    return _rank_plans([(micro, None)], ranks, packed, trim=True)


def count_update_plan(n: int, ranks: int, mini_batch_size: int, micro_batch_size: int, epochs: int, seed: int,
                      packed: bool) -> list[RankPlan]:
    """The update by count, exactly as a rank runs it without a plan (consecutive micro-batches of each rank's
    part of each mini-batch), so that only the layout changes."""
    steps = [([[p[i : i + micro_batch_size] for i in range(0, len(p), micro_batch_size)] for p in parts], None)
             for parts in count_mini_batches(n, ranks, mini_batch_size, epochs, seed)]
    return _rank_plans(steps, ranks, packed, trim=False, rows=[list(range(a, b)) for a, b in shard_bounds(n, ranks)])


def count_infer_plan(n: int, ranks: int, micro_batch_size: int, packed: bool) -> list[RankPlan]:
    """A pass by count: contiguous shards, consecutive micro-batches (only the layout differs from no plan)."""
    bounds = shard_bounds(n, ranks)
    micro = [[list(range(i, min(i + micro_batch_size, b))) for i in range(a, b, micro_batch_size)] for a, b in bounds]
    return _rank_plans([(micro, None)], ranks, packed, trim=False, rows=[list(range(a, b)) for a, b in bounds])


def rank_shards(batch: dict[str, torch.Tensor], plans: list[RankPlan]) -> list[dict]:
    """Each rank's rows of `batch` as they are sent (numpy arrays where numpy has the dtype)."""
    return [{k: to_wire(v[list(p.rows)]) for k, v in batch.items()} for p in plans]


def gather_rows(parts: list[dict[str, torch.Tensor]], plans: list[RankPlan], n: int) -> dict[str, torch.Tensor]:
    """The ranks' outputs (each in its rows' order) put back in the batch's order; every row comes from one rank."""
    out = {}
    for k in parts[0]:
        first = parts[0][k]
        full = torch.zeros((n, *first.shape[1:]), dtype=first.dtype)
        for p, plan in zip(parts, plans):
            full[list(plan.rows)] = p[k]
        out[k] = full
    return out


def plan_update(batch: dict[str, torch.Tensor], loss_fn, ranks: int, mini_batch_size: int, micro_batch_size: int, epochs: int,
                budget: int | None, packed: bool, seed: int) -> list[RankPlan] | None:
    """The update's plan for `batch` (None: neither a token budget nor packing, so the ranks run by count
    without one). Rank r's shuffles by count are seeded seed + r, as without a plan."""
    if budget is None and not packed:
        return None
    if budget is None:
        return count_update_plan(batch["input_ids"].shape[0], ranks, mini_batch_size, micro_batch_size, epochs, seed, packed)
    return update_plan(sizes(batch), loss_fn.loss_tokens(batch).tolist(), mini_batch_size, ranks, epochs, budget, packed, seed)


def plan_infer(batch: dict[str, torch.Tensor], ranks: int, micro_batch_size: int, budget: int | None,
               packed: bool) -> list[RankPlan] | None:
    """A pass's plan (None: by count without one)."""
    if budget is None and not packed:
        return None
    if budget is None:
        return count_infer_plan(batch["input_ids"].shape[0], ranks, micro_batch_size, packed)
    return infer_plan(sizes(batch), ranks, budget, packed)
