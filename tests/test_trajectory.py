"""The rollout type and the one rollout source, on their own: a stand-in for the engines (our interface, not
vLLM's: it answers each request with tokens derived from its seed) and the real scorer with real reward
functions in worker processes. The engines themselves are exercised by the integration tests."""
import random
import threading

import pytest
import torch

from rlhf_dist.config import RewardFunction
from rlhf_dist.data.batch import build_batch, shard_bounds, shards
from rlhf_dist.data.prompts import PromptLoader, PromptSet
from rlhf_dist.errors import WaitTimeout
from rlhf_dist.rewards.functions import RuleRewards
from rlhf_dist.rewards.scorer import Overlong, Scorer
from rlhf_dist.rollout.requests import generation_seed, submit_generate
from rlhf_dist.rollout.source import RolloutSource, SourceSpec, generate
from rlhf_dist.rollout.trajectory import Rollouts, Trajectory, check_groups


def multi_turn() -> Trajectory:
    # Two generated turns with a tool's answer (3 tokens) between them.
    return Trajectory(prompt_index=0, group=0, prompt_ids=[5, 6], response_ids=[10, 11, 90, 91, 92, 12],
                      loss_mask=[1, 1, 0, 0, 0, 1], logprobs=[-0.5, -0.25, 0.0, 0.0, 0.0, -1.0],
                      finish_reason="stop", weights_version=3)


def test_a_trajectory_refuses_masks_and_log_probs_that_do_not_fit_its_tokens():
    with pytest.raises(ValueError, match="3 response tokens but 2 loss-mask entries"):
        Trajectory(0, 0, [1], [1, 2, 3], [1, 1], [0.0] * 3, "stop", 0)
    with pytest.raises(ValueError, match="other than 0 and 1"):
        Trajectory(0, 0, [1], [1, 2], [1, 2], [0.0] * 2, "stop", 0)


def test_multi_turn_spans_and_their_mask_in_the_learners_batch():
    t = multi_turn()
    assert t.spans() == [(0, 2), (5, 6)]
    single = Trajectory.sampled(1, 0, [7, 8, 9], [20, 21], [-0.1, -0.2], "length", 3)
    batch, lp = Rollouts([t, single], group_size=2).batch(pad_id=0)
    # Prompts left-padded to 3, responses right-padded to 6: the inserted tokens are attended to, not trained on.
    assert batch["input_ids"].tolist() == [[0, 5, 6, 10, 11, 90, 91, 92, 12], [7, 8, 9, 20, 21, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch["mask"].tolist() == [[1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0]]
    assert lp.flatten().tolist() == pytest.approx([-0.5, -0.25, 0, 0, 0, -1.0, -0.1, -0.2, 0, 0, 0, 0])
    # Without loss masks, every response token is trained on (SFT, DPO): the same batch otherwise.
    plain = build_batch([t.prompt_ids, single.prompt_ids], [t.response_ids, single.response_ids], 0)
    assert plain["mask"][0].tolist() == [1] * 6 and torch.equal(plain["input_ids"], batch["input_ids"])


def test_groups_are_explicit_ids_in_consecutive_rows():
    check_groups([3, 3, 7, 7], 2)
    with pytest.raises(ValueError, match="rows 2..3 mix prompts"):
        check_groups([3, 3, 3, 7], 2)
    with pytest.raises(ValueError, match="rows 2..3 mix prompts"):  # one group split over two places
        check_groups([3, 3, 3, 3], 2)


def test_the_split_over_ranks_never_drops_an_item():
    rng = random.Random(0)
    for _ in range(500):
        total, n = rng.randrange(0, 300), rng.randrange(1, 17)
        bounds = shard_bounds(total, n)
        assert len(bounds) == n and bounds[0][0] == 0 and bounds[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in order
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert shards(list("abcdefg"), 3) == [list("abc"), list("de"), list("fg")]


class Group:
    """Stand-in for an engine group: records each rank's arguments."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def __len__(self):
        return self.n

    def submit(self, method, per_rank, ranks):
        self.calls.append((method, list(ranks), per_rank))
        return per_rank


def test_each_sample_is_seeded_by_its_position_in_the_call_whatever_the_engine_count():
    prompts = [[i] for i in range(10)]
    for engines in (1, 3, 4, 16):
        g = Group(engines)
        per_rank = submit_generate(g, prompts, seed=1000, version=7)
        seeds = [seed + j for chunk, seed, version, _ in per_rank for j in range(len(chunk))]
        assert seeds == list(range(1000, 1010))
        assert [p for chunk, *_ in per_rank for p in chunk] == prompts
        assert g.calls[0][1] == list(range(min(engines, 10)))  # engines with nothing to do are not called
        assert {v for _, _, v, _ in per_rank} == {7}
    assert generation_seed(3, 2, 1) == 3 * 1_000_003 + 2 * 10_007 + 1


class Engines:
    """Stand-in for the job's engines: each response is derived from its seed, prompt and weights version, as
    a seeded engine's would be; `hold` keeps a generation from finishing."""

    def __init__(self, vocab=(1, 2)):
        self.version, self.vocab, self.submitted = 0, vocab, []
        self.hold = threading.Event()
        self.hold.set()

    def submit_generate(self, prompts, seed, sampling=None):
        self.submitted.append((seed, len(prompts), self.version))
        return prompts, seed, self.version

    def gather_generate(self, handle):
        prompts, seed, version = handle
        assert self.hold.wait(30)
        responses = [[self.vocab[(seed + j + p[0] + version) % len(self.vocab)]] * (1 + (seed + j) % 3) for j, p in enumerate(prompts)]
        return {"responses": responses, "logprobs": [[-0.5] * len(r) for r in responses],
                "finish_reasons": ["length" if len(r) == 3 else "stop" for r in responses], "engine_seconds": [0.01]}


class Tok:
    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join("ab"[t - 1] for t in r) for r in rows]


def rewards(*names):
    return RuleRewards([RewardFunction(name=f"rlhf_dist.rewards.rules:{n}") for n in names])


def source(engines, staleness=0, dynamic=False, rounds=1, steps=4, overlong=Overlong(max_len=3, buffer=1, penalty=1.0),
           call_s=30.0, rules=True):
    prompts = PromptSet([f"p{i}" for i in range(6)], [[i] for i in range(6)], None, [])
    spec = SourceSpec(seed=5, steps=steps, group_size=2, prompts_per_step=2, max_staleness=staleness,
                      dynamic_sampling=dynamic, max_rounds=rounds, call_s=call_s)
    scorer = Scorer(rewards("char_fraction") if rules else None, overlong=overlong)
    return RolloutSource(spec, engines, PromptLoader(6, 2, 5), prompts, Tok(), scorer)


def test_the_synchronous_source_gives_typed_scored_groups_with_the_step_seed():
    engines = Engines()
    src = source(engines)
    try:
        timing = {}
        r = src.take(1, timing)
        assert isinstance(r, Rollouts) and all(isinstance(s, Trajectory) for s in r.samples)
        assert engines.submitted == [(generation_seed(5, 1, 1), 4, 0)]
        r.wait_scored(30, "test")
        assert [s.group for s in r.samples] == [0, 0, 1, 1]
        assert len({s.prompt_index for s in r.samples[:2]}) == 1
        assert all(s.weights_version == 0 and s.loss_mask == [1] * len(s.response_ids) for s in r.samples)
        assert r.metrics["rollout/staleness"] == 0.0 and "generate_wait" in timing
        # The weighted total is each part's sum (char_fraction weight 1, the overlong penalty on 3-token answers).
        for s in r.samples:
            assert s.reward == pytest.approx(s.reward_parts["char_fraction"] + s.reward_parts["overlong_penalty"])
            assert (s.reward_parts["overlong_penalty"] < 0) == (len(s.response_ids) == 3)
        assert r.rewards().dtype == torch.float32 and r.truncated().tolist() == [s.finish_reason == "length" for s in r.samples]
        engines.version = 1
        assert src.take(2, {}).samples[0].group == 2  # group ids run on across steps
    finally:
        src.close()


def test_with_staleness_one_the_engines_run_a_step_ahead_and_order_stays_by_step():
    engines = Engines()
    src = source(engines, staleness=1)
    try:
        first = src.take(1, {})
        assert [s for s, *_ in engines.submitted] == [generation_seed(5, 1, 1), generation_seed(5, 2, 1)]
        assert first.metrics["rollout/staleness"] == 0.0
        engines.version = 1  # the sync after step 1
        second = src.take(2, {})
        assert second.metrics["rollout/weights_version"] == 0.0 and second.metrics["rollout/staleness"] == 1.0
        assert len(engines.submitted) == 3  # step 3 went out with version 1
        # Resume re-draws the batch still in flight: the position recorded is before step 3's prompts.
        loader = PromptLoader(6, 2, 5)
        for _ in range(2):
            loader.next_batch()
        assert src.loader_state() == loader.state_dict()
    finally:
        src.close()


def test_dynamic_sampling_is_a_filter_over_rounds_of_the_same_source():
    # Every response scores the same (one letter, no length penalty): no group is informative, every round is used.
    engines = Engines(vocab=(1,))
    src = source(engines, dynamic=True, rounds=3, overlong=None)
    try:
        timing = {}
        r = src.take(1, timing)
        assert [s for s, *_ in engines.submitted] == [generation_seed(5, 1, k) for k in (1, 2, 3)]
        assert r.metrics["dynamic_sampling/rounds"] == 3 and r.metrics["dynamic_sampling/filled_with_uninformative"] == 2
        assert r.scored and len(r) == 4 and "score" in timing
        assert r.wait_scored(1, "test") is None  # scored before it was handed over
    finally:
        src.close()


def test_a_batch_that_is_never_generated_is_an_error_within_its_deadline():
    engines = Engines()
    engines.hold.clear()
    src = source(engines, call_s=0.2, rules=False)  # the wait: 2 x call_s for the engines, plus call_s for scoring
    try:
        with pytest.raises(WaitTimeout, match="generating the batch of step 1: not done in"):
            src.take(1, {})
    finally:
        engines.hold.set()
        src.close()


def test_evaluation_and_labelling_draw_typed_groups_through_the_same_requests():
    engines = Engines()
    prompts = PromptSet(["x", "y", "z"], [[0], [1], [2]], None, [])
    samples, seconds, _ = generate(engines, prompts, [2, 0, 1], 3, seed=11)
    assert [s.prompt_index for s in samples] == [2, 2, 2, 0, 0, 0, 1, 1, 1]
    assert [s.group for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(isinstance(s, Trajectory) for s in samples) and seconds == 0.01


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_the_policy_loss_ignores_inserted_tokens(aggregation):
    """What the learners train on is the loss mask: log-probs, advantages and engine log-probs at a tool's
    tokens change nothing."""
    from rlhf_dist.algorithms.losses import PolicyLoss

    t = multi_turn()
    batch, engine_lp = Rollouts([t, Trajectory.sampled(1, 0, [7], [20, 21, 22], [-0.1] * 3, "stop", 3)], 2).batch(0)
    gen = torch.Generator().manual_seed(0)
    shape = batch["mask"].shape
    logp = torch.randn(shape, generator=gen) - 1
    batch.update(old_logprobs=logp - 0.1, advantages=torch.randn(shape, generator=gen), engine_logprobs=engine_lp)
    loss = PolicyLoss(aggregation=aggregation, norm_constant=6.0)
    base, base_metrics = loss({"logprobs": logp, "entropy": torch.ones(shape)}, batch)
    inserted = (batch["mask"] == 0)
    noisy = {**batch, "advantages": batch["advantages"] + 50 * inserted, "old_logprobs": batch["old_logprobs"] - 9 * inserted}
    got = loss({"logprobs": logp + 7 * inserted, "entropy": torch.ones(shape) + 3 * inserted}, noisy)
    assert float(got[0]) == pytest.approx(float(base))
    assert got[1] == base_metrics  # entropy, clip fractions and the engine log-prob probe alike
