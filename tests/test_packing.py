"""Token-budget micro-batches and packed sequences (docs/packing.md): the plans by hand and on random sizes;
packed samples never see each other on sdpa and eager (Qwen2- and Llama-style models), where the naive packed
forms do; the loss and gradients of token-budget micro-batches, packed or padded, equal those of the whole
mini-batch for every loss aggregation and for the critic, SFT, reward-model and DPO losses; a rank's update by
plan through a real DeepSpeed engine."""
import random

import pytest
import torch

from rlhf_dist.algorithms.core import Totals
from rlhf_dist.algorithms.losses import ClippedValueLoss, DPOLoss, PairwiseRewardLoss, PolicyLoss, SFTLoss
from rlhf_dist.algorithms.registry import AGGREGATIONS
from rlhf_dist.data import packing
from rlhf_dist.data.batch import build_batch, split
from rlhf_dist.data.packing import Size, cost
from rlhf_dist.learner import micro, models
from rlhf_dist.learner.packed import last_token_scores, response_logprobs, response_outputs, trim


def _batch(n: int, seed: int = 0, max_prompt: int = 9, max_response: int = 14):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randint(1, max_prompt + 1, (n,), generator=g).tolist()
    lr = torch.randint(1, max_response + 1, (n,), generator=g).tolist()
    prompts = [torch.randint(5, 500, (a,), generator=g).tolist() for a in lp]
    responses = [torch.randint(5, 500, (b,), generator=g).tolist() for b in lr]
    return build_batch(prompts, responses, pad_id=2)


# --- plans: pure functions ---


def test_first_fit_decreasing_and_rows_by_hand():
    size = [Size(0, n, 1, n) for n in (5, 3, 8, 2, 4)]
    assert packing.first_fit_decreasing(list(range(5)), size, 10, packed=True) == [[2, 3], [0, 4], [1]]
    # Padded, a bin costs its count x its widest sample: 8+2 packs, but padded that is 2 x 8 = 16 > 10.
    assert packing.first_fit_decreasing(list(range(5)), size, 10, packed=False) == [[2], [0, 4], [1, 3]]
    assert packing.pack_rows([5, 3, 8, 2, 4], 10) == [[2, 3], [0, 4], [1]]
    assert packing.split_to([[2, 3], [0, 4, 1]], 3, size, packed=True) == [[0, 1], [2, 3], [4]]


def test_micro_batches_fit_the_budget_and_agree_across_ranks():
    rng = random.Random(0)
    for _ in range(200):
        ranks = rng.choice([1, 2, 3, 4])
        n = ranks * rng.randint(1, 12)
        size = [Size(a, b, 1, a + b) for a, b in ((rng.randint(1, 30), rng.randint(1, 200)) for _ in range(n))]
        budget = max(s.tokens for s in size) + rng.randint(0, 400)
        packed = rng.random() < 0.5
        parts = packing.deal(list(range(n)), size, ranks)
        assert sorted(i for p in parts for i in p) == list(range(n)) and {len(p) for p in parts} == {n // ranks}
        loads = [sum(size[i].tokens for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(s.tokens for s in size)  # LPT: within one sample of balanced
        micro = packing.micro_batches(parts, size, budget, packed)
        assert len({len(m) for m in micro}) == 1  # the same number of forward passes on every rank
        for part, mbs in zip(parts, micro):
            assert sorted(i for mb in mbs for i in mb) == part and all(mb for mb in mbs)
            assert all(cost([size[i] for i in mb], packed) <= budget for mb in mbs)


def test_update_plan_covers_every_sample_once_per_epoch_with_the_mini_batch_totals():
    batch = _batch(16)
    tokens = batch["mask"].sum(1)
    plans = packing.update_plan(packing.sizes(batch), tokens.tolist(), 8, 2, 2, 40, True, seed=3)
    assert [len(p.minis) for p in plans] == [4, 4]
    seen = []
    for m in range(4):
        members = [p.rows[i] for p in plans for mb in plans[plans.index(p)].minis[m].micro for i in mb]
        assert len(members) == len(set(members)) == 8
        assert len({len(p.minis[m].micro) for p in plans}) == 1
        assert plans[0].minis[m].totals == plans[1].minis[m].totals == (float(tokens[members].sum()), 8.0)
        seen += members
    assert sorted(seen[:16]) == sorted(seen[16:]) == list(range(16))  # each epoch, every sample once
    by_count = packing.count_update_plan(16, 2, 8, 2, 2, 3, packed=False)  # the same samples in each optimizer step
    for m in range(4):
        assert sorted(p.rows[i] for p in plans for mb in p.minis[m].micro for i in mb) == \
            sorted(p.rows[i] for p in by_count for mb in p.minis[m].micro for i in mb)
    assert packing.update_plan(packing.sizes(batch), tokens.tolist(), 8, 2, 2, 40, True, seed=3) == plans


def test_count_plan_is_what_each_rank_runs_without_one():
    n, ranks, mini, micro_size, epochs, seed = 12, 2, 6, 2, 2, 7
    plans = packing.count_update_plan(n, ranks, mini, micro_size, epochs, seed, packed=True)
    for r, plan in enumerate(plans):
        assert plan.rows == tuple(range(r * 6, r * 6 + 6)) and plan.minis[0].totals is None and not plan.trim
        gen = torch.Generator().manual_seed(seed + r)  # LearnerWorker.train's own loop
        want = []
        for _ in range(epochs):
            order = torch.randperm(6, generator=gen).tolist()
            for s in range(0, 6, mini // ranks):
                idx = order[s : s + mini // ranks]
                want.append(tuple(tuple(idx[i : i + micro_size]) for i in range(0, len(idx), micro_size)))
        assert [m.micro for m in plan.minis] == want


def test_rank_shards_and_gather_rows_put_every_row_back():
    batch = _batch(10)
    plans = packing.infer_plan(packing.sizes(batch), 2, 30, packed=False)
    shards = packing.rank_shards(batch, plans)
    parts = [{"x": torch.from_numpy(s["input_ids"]).float()} for s in shards]
    assert torch.equal(packing.gather_rows(parts, plans, 10)["x"], batch["input_ids"].float())


def test_pairs_cost_both_sequences():
    flat = _batch(6)
    pairs = {k: torch.stack([v[:3], v[3:]], dim=1) for k, v in flat.items()}  # [3, 2, W], as make_batch lays out pairs
    size = packing.sizes(pairs)
    attn = pairs["attention_mask"]
    assert [s.tokens for s in size] == attn.sum((1, 2)).tolist() and {s.seqs for s in size} == {2}
    R = pairs["mask"].shape[-1]
    assert [s.right for s in size] == attn[..., -R:].sum(-1).max(-1).values.tolist()


# --- the packed layout on real models ---


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model, tmp_path_factory) -> str:
    from rlhf_dist.data.tiny import make_tiny_reward_model

    return str(make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", tiny_model))


@pytest.fixture(scope="module")
def policy(tiny_model):
    return models.load_causal_lm(tiny_model, "float32", "sdpa").train()


@pytest.fixture(scope="module")
def models_by_arch(tiny_model, tmp_path_factory):
    from rlhf_dist.data.tiny import make_tiny_model

    return {"llama": tiny_model, "qwen2": str(make_tiny_model(tmp_path_factory.mktemp("q") / "qwen2", arch="qwen2"))}


def _logprobs(model, batch, packed_layout, impl):
    return response_logprobs(model, batch, packed_layout, impl, 1.0)[0] * batch["mask"]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_samples_never_see_each_other(models_by_arch, arch, impl):
    model = models.load_causal_lm(models_by_arch[arch], "float32", impl).eval()
    batch = _batch(7, seed=1)
    changed = {k: v.clone() for k, v in batch.items()}
    row = changed["attention_mask"][3].bool()
    changed["input_ids"][3, row] = torch.randint(5, 500, (int(row.sum()),), generator=torch.Generator().manual_seed(9))
    others = [i for i in range(7) if i != 3]
    with torch.no_grad():
        padded = _logprobs(model, batch, False, impl)
        got, got_changed = _logprobs(model, batch, True, impl), _logprobs(model, changed, True, impl)
        _, positions = response_outputs(model, batch, True, impl)
        assert positions < batch["input_ids"].numel()  # several samples did share rows
        assert (got_changed[others] - got[others]).abs().max() <= 1e-6
        assert (got - padded).abs().max() <= 1e-5  # and they are the padded layout's log-probs
        assert (got_changed[3] - got[3]).abs().max() > 1e-3  # the changed sample did change

        # The naive packed form, restarting positions under transformers' own causal mask (an all-ones 2-D
        # mask), lets a sample see the one before it in its row: what the test above would catch.
        ids = torch.cat([batch["input_ids"][0][batch["attention_mask"][0].bool()], batch["input_ids"][1][batch["attention_mask"][1].bool()]])
        n0 = int(batch["attention_mask"][0].sum())
        pos = torch.cat([torch.arange(n0), torch.arange(len(ids) - n0)])[None]
        alone = model(input_ids=ids[None, n0:], attention_mask=torch.ones(1, len(ids) - n0, dtype=torch.long)).logits
        naive = model(input_ids=ids[None], position_ids=pos, attention_mask=torch.ones_like(ids)[None]).logits[:, n0:]
        assert (naive - alone).abs().max() > 1e-3


def test_packed_rows_of_right_padded_sequences_score_at_the_last_token(reward_model_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhf_dist.data.chat import right_padded

    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(5, 500, (n,), generator=g).tolist() + [1] for n in (3, 11, 6, 1, 8)]  # ending in EOS
    enc = right_padded(rows, pad_id=2)
    with torch.no_grad():
        want, _ = last_token_scores(model, enc, False, "eager", 2)
        got, positions = last_token_scores(model, enc, True, "eager", 2)
    assert positions < enc["input_ids"].numel()
    assert (got - want).abs().max() <= 1e-5


# --- loss and gradients: token-budget micro-batches against the whole mini-batch ---


def _grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _whole_and_planned(model, batch, loss_fn, outputs, budget, packed_layout, ranks=2):
    """The loss and gradients of one forward over the whole batch, and the sums over the plan's micro-batches of
    every rank (DeepSpeed's mean over ranks of the loss x ranks is that sum)."""
    model.zero_grad()
    loss, _ = loss_fn(outputs(batch, False), batch)
    loss.backward()
    want = (loss.detach(), _grads(model))
    plans = packing.update_plan(packing.sizes(batch), loss_fn.loss_tokens(batch).tolist(), len(batch["input_ids"]), ranks, 1,
                                budget, packed_layout, seed=0)
    assert min(len(p.minis[0].micro) for p in plans) >= 2  # micro-batches holding different token counts
    model.zero_grad()
    total = 0.0
    for plan in plans:
        rows = {k: v[list(plan.rows)] for k, v in batch.items()}
        for _, mb in micro.micro_batches(rows, plan, plan.minis[0]):
            part, _ = loss_fn(outputs(mb, packed_layout), mb, Totals(*plan.minis[0].totals))
            part.backward()
            total += part.detach()
    return want, (total, _grads(model))


def _assert_same(want, got):
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-7), (got[0], want[0])
    assert any(g.abs().sum() > 0 for g in want[1])
    for g, w in zip(got[1], want[1]):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7), (g - w).abs().max()


@pytest.mark.parametrize("packed_layout", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_policy_loss_and_gradients_equal_the_whole_mini_batch(policy, aggregation, packed_layout):
    model = policy
    batch = _batch(12, seed=4)
    g = torch.Generator().manual_seed(5)
    mask = batch["mask"]
    with torch.no_grad():
        old = _logprobs(model, batch, False, "sdpa")
    batch.update(advantages=torch.randn(mask.shape, generator=g) * mask, old_logprobs=old + 0.05 * torch.randn(mask.shape, generator=g),
                 ref_logprobs=old + 0.1 * torch.randn(mask.shape, generator=g),
                 is_weights=(torch.rand(mask.shape, generator=g) > 0.2).float())  # some tokens taken out of the loss
    loss_fn = PolicyLoss(aggregation=aggregation, norm_constant=float(mask.shape[1]), kl_loss_coef=0.05, entropy_coef=0.01)

    def outputs(b, packed_layout):
        logprobs, entropy, _ = response_logprobs(model, b, packed_layout, "sdpa", 0.9, with_entropy=True)
        return {"logprobs": logprobs, "entropy": entropy}

    _assert_same(*_whole_and_planned(model, batch, loss_fn, outputs, 60, packed_layout))


def test_value_sft_reward_and_dpo_losses_equal_the_whole_batch(tiny_model, policy, reward_model_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhf_dist.algorithms.preference import sequence_logprob

    g = torch.Generator().manual_seed(6)
    batch = _batch(12, seed=7)
    mask = batch["mask"]
    # The critic (value head; eval mode: the head's dropout is matched separately, below).
    critic = models.load_value_model(tiny_model, "float32", "sdpa").eval()
    with torch.no_grad():
        critic.score.weight.normal_(0, 0.1, generator=g)
    vbatch = {**batch, "returns": torch.randn(mask.shape, generator=g) * mask, "old_values": torch.randn(mask.shape, generator=g) * 0.1 * mask}
    values = lambda b, p: {"values": response_outputs(critic, b, p, "sdpa")[0][..., 0]}  # noqa: E731
    _assert_same(*_whole_and_planned(critic, vbatch, ClippedValueLoss(0.2), values, 60, True))

    sft = lambda b, p: {"logprobs": _logprobs(policy, b, p, "sdpa")}  # noqa: E731
    _assert_same(*_whole_and_planned(policy, batch, SFTLoss(), sft, 60, True))

    # Pairs [B, 2, W]: DPO on [prompt | response] rows, the reward model on right-padded sequences.
    pairs = {k: torch.stack([v[:6], v[6:]], dim=1) for k, v in batch.items()}
    pairs["ref_logps"] = torch.randn(6, 2, generator=g)
    dpo = lambda b, p: {"logps": sequence_logprob(_logprobs(policy, b, p, "sdpa"), b["mask"])}  # noqa: E731
    _assert_same(*_whole_and_planned(policy, pairs, DPOLoss(beta=0.5), dpo, 70, True))

    from rlhf_dist.data.chat import right_padded

    rows = [r[a.bool()].tolist() for r, a in zip(batch["input_ids"], batch["attention_mask"])]
    flat = right_padded(rows, pad_id=2)
    rm_pairs = {k: torch.stack([v[:6], v[6:]], dim=1) for k, v in flat.items()}
    rm_pairs["margin"] = torch.rand(6, generator=g)
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).train()
    scores = lambda b, p: {"scores": last_token_scores(rm, b, p, "sdpa", 2)[0]}  # noqa: E731
    for packed_layout in (True, False):
        _assert_same(*_whole_and_planned(rm, rm_pairs, PairwiseRewardLoss(), scores, 70, packed_layout))


def test_critic_dropout_is_drawn_as_the_padded_forward_draws_it(tiny_model):
    """The value head's dropout (0.1 by transformers' default) in training: packed rows drop the same positions
    as padded ones and leave the random stream where the padded forward leaves it."""
    critic = models.load_value_model(tiny_model, "float32", "sdpa").train()
    assert critic.dropout.p > 0
    with torch.no_grad():
        critic.score.weight.normal_(0, 0.1)
    batch = _batch(6, seed=8)
    with torch.no_grad():
        torch.manual_seed(0)
        want, _ = response_outputs(critic, batch, False, "sdpa")
        after_padded = torch.rand(4)
        torch.manual_seed(0)
        got, _ = response_outputs(critic, batch, True, "sdpa")
        after_packed = torch.rand(4)
    m = batch["mask"].bool()
    assert (got[..., 0][m] - want[..., 0][m]).abs().max() <= 1e-5 and torch.equal(after_padded, after_packed)
    assert critic.dropout.p > 0  # restored


def test_trim_keeps_every_real_token():
    from rlhf_dist.data.chat import right_padded

    batch = _batch(6, seed=9)
    batch["advantages"] = torch.randn(batch["mask"].shape)
    sub = {k: v[[1, 4]] for k, v in batch.items()}
    t = trim(sub)
    assert t["attention_mask"].sum() == sub["attention_mask"].sum() and t["mask"].sum() == sub["mask"].sum()
    assert t["input_ids"].shape[1] < sub["input_ids"].shape[1] and t["advantages"].shape == t["mask"].shape
    R = sub["mask"].shape[1]
    assert torch.equal(t["input_ids"][t["attention_mask"].bool()], sub["input_ids"][sub["attention_mask"].bool()])
    assert torch.equal(t["input_ids"][:, -t["mask"].shape[1]:], sub["input_ids"][:, -R:][:, : t["mask"].shape[1]])
    seqs = right_padded([[5, 6, 7], [8], [9, 10, 11, 12, 13]], pad_id=2)  # no response mask: right-padded sequences
    t = trim({k: v[:2] for k, v in seqs.items()})
    assert t["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]


# --- a rank's update by plan through DeepSpeed ---


def test_a_rank_trains_by_plan_as_by_count(tiny_model, tmp_path):
    """One DeepSpeed rank (ZeRO-2): the count plan with packed rows gives the unplanned update's loss and gradient
    norm; token-budget plans (several micro-batches per optimizer step, packed or padded) give the gradient norm
    of one micro-batch holding the whole mini-batch."""
    from rlhf_dist.config import load_config
    from rlhf_dist.dist import reserve_port
    from rlhf_dist.learner.workers import PolicyWorker
    from rlhf_dist.trainers.rl_roles import learner_spec

    from tests.conftest import demo_config_dict

    (tmp_path / "p.jsonl").write_text('{"prompt": "a b"}\n')
    d = demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["placement"]["policy"] = {"pool": "main", "num_gpus": 1, "zero_stage": 2}
    d["ppo"].update(mini_batch_size=8, micro_batch_size=4)
    spec = learner_spec(load_config(None, base=d), "policy")
    batch = _batch(16, seed=10)
    batch["advantages"] = torch.randn(batch["mask"].shape, generator=torch.Generator().manual_seed(1)) * batch["mask"]
    loss = PolicyLoss(old_from_forward=True, entropy_coef=0.01)
    addr, _ = reserve_port()
    plans = {"none": None, "count packed": packing.plan_update(batch, loss, 1, 8, 4, 1, None, True, 5)}
    for name, budget, layout in (("60 packed", 60, True), ("60 padded", 60, False), ("one micro-batch", 10_000, True)):
        plans[name] = packing.plan_update(batch, loss, 1, 8, 4, 1, budget, layout, 5)
    assert [len(m.micro) for m in plans["60 padded"][0].minis] != [1, 1]
    got = {}
    for name, plan in plans.items():
        worker = PolicyWorker(spec, 0, 1)
        worker.setup(addr, reserve_port()[1])
        shard = split(batch, 1)[0] if plan is None else packing.rank_shards(batch, plan)[0]
        got[name] = worker.train(shard, loss, 5) if plan is None else worker.train(shard, loss, 5, plan[0])
    for key in ("policy/loss", "policy/grad_norm", "policy/entropy"):
        assert got["count packed"][key] == pytest.approx(got["none"][key], rel=1e-5)
    for name in ("60 packed", "60 padded"):
        assert got[name]["policy/grad_norm"] == pytest.approx(got["one micro-batch"]["policy/grad_norm"], rel=1e-5)
    assert got["none"]["policy/padding_fraction"] > got["60 padded"]["policy/padding_fraction"] > got["one micro-batch"]["policy/padding_fraction"] > 0
