"""A learner rank's calls run by a plan from the controller (rlhf_dist.data.packing.RankPlan): which of its rows go
in each micro-batch, in which layout (padded, trimmed or not, or packed), and each mini-batch's loss totals.

Without totals each micro-batch's loss is its own mean, scaled by 1/(micro-batches in the mini-batch) as
DeepSpeed's gradient accumulation scales it, so a plan by count trains exactly as no plan does. With totals
(token-budget micro-batches) each loss is its share of the mini-batch's; DeepSpeed averages gradients over the
ranks, so the loss is multiplied by their number. Either way the accumulation boundary is set by hand at each
mini-batch's last micro-batch, as the number of micro-batches may differ from one mini-batch to the next. (The
boundary stays set by hand, so an engine trained by plan is trained by plan throughout: a run's config decides.)
"""
from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

from rlhf_dist.algorithms.core import Totals
from rlhf_dist.data.packing import RankPlan
from rlhf_dist.learner.packed import pad_right, trim


def select(batch: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    rows = torch.as_tensor(idx, dtype=torch.long, device=batch["input_ids"].device)
    return {k: v[rows] for k, v in batch.items()}


@contextlib.contextmanager
def layout(worker, plan: RankPlan | None):
    """The worker's forward passes use the plan's layout for the call (padded without a plan)."""
    worker.packed = plan is not None and plan.packed
    try:
        yield
    finally:
        worker.packed = False


def micro_batches(batch: dict[str, torch.Tensor], plan: RankPlan, mini):
    for idx in mini.micro:
        mb = select(batch, idx)
        yield idx, (trim(mb) if plan.trim and not plan.packed else mb)


def all_micro_batches(batch: dict[str, torch.Tensor], plan: RankPlan) -> list[dict[str, torch.Tensor]]:
    return [mb for mini in plan.minis for _, mb in micro_batches(batch, plan, mini)]


def pop_positions(worker) -> tuple[int, int]:
    out = (worker.real_tokens, worker.computed_positions)
    worker.real_tokens = worker.computed_positions = 0
    return out


def with_padding(worker, result: dict[str, float]) -> dict[str, float]:
    """`ROLE/padding_fraction`: the share of the positions the call's forward passes computed that held no token."""
    real, computed = pop_positions(worker)
    if computed:
        result[f"{worker.role}/padding_fraction"] = 1 - real / computed
    return result


def infer(batch: dict[str, torch.Tensor], plan: RankPlan, forward) -> dict[str, torch.Tensor]:
    """`forward(micro_batch) -> {name: tensor}` over the plan's micro-batches, put back in the rows' order;
    per-token outputs of trimmed micro-batches padded back to the batch's response width."""
    n = batch["input_ids"].shape[0]
    width = batch["mask"].shape[-1] if "mask" in batch else None
    out: dict[str, torch.Tensor] = {}
    for mini in plan.minis:
        for idx, mb in micro_batches(batch, plan, mini):
            for k, v in forward(mb).items():
                v = v.float().cpu()
                if width is not None and v.ndim == mb["mask"].ndim and v.shape[-1] == mb["mask"].shape[-1]:
                    v = pad_right(v, width)
                if k not in out:
                    out[k] = torch.zeros((n, *v.shape[1:]), dtype=v.dtype)
                out[k][list(idx)] = v
    return out


def reduce(rows: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Metrics of the micro-batches weighted by their loss tokens (`*_max`: the max), so a token mean over the
    call is what a metric reads whatever tokens each micro-batch held."""
    total = sum(w for _, w in rows)
    out: dict[str, float] = defaultdict(float)
    for metrics, w in rows:
        share = w / total if total > 0 else 1 / len(rows)
        for k, v in metrics.items():
            out[k] = max(out.get(k, v), v) if k.endswith("_max") else out[k] + v * share
    return dict(out)


def update(worker, batch: dict[str, torch.Tensor], loss_fn, plan: RankPlan) -> dict[str, float]:
    """The plan's mini-batches, an optimizer step at the end of each; metrics as LearnerWorker.train gives them."""
    engine = worker.engine
    rows, grad_norms = [], []
    lr = engine.get_lr()[0]
    for mini in plan.minis:
        totals = None if mini.totals is None else Totals(*mini.totals)
        for j, (_, mb) in enumerate(micro_batches(batch, plan, mini)):
            engine.set_gradient_accumulation_boundary(j == len(mini.micro) - 1)
            out = worker.outputs(mb, with_entropy=loss_fn.needs_entropy)
            if totals is None:  # as DeepSpeed scales it for accumulation (the same division)
                loss, metrics = loss_fn(out, mb)
                scaled = loss / len(mini.micro)
            else:  # its share of the mini-batch; DeepSpeed divides the sum over ranks by their number
                loss, metrics = loss_fn(out, mb, totals)
                scaled = loss * worker.world_size
            engine.backward(scaled, scale_wrt_gas=False)
            engine.step()
            rows.append((metrics, float(loss_fn.loss_tokens(mb).sum()) if totals is not None else 1.0))
        norm = engine.get_global_grad_norm()
        if norm is not None:
            grad_norms.append(float(norm))
    result = reduce(rows)
    result[f"{worker.role}/lr"] = lr
    if grad_norms:
        result[f"{worker.role}/grad_norm"] = sum(grad_norms) / len(grad_norms)
    return result
