"""Workers are plain classes: run them in this process, without Ray, against transformers directly."""
import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.data.batch import build_batch
from rlhf_dist.rewards.functions import RuleRewards
from rlhf_dist.trainers.rl_roles import reference_spec, reward_spec

from tests.conftest import demo_config_dict


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory):
    from rlhf_dist.data.tiny import make_tiny_reward_model

    return str(make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", tiny_model))


def config(tiny_model, tmp_path, **reward):
    d = demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["reward"].update(reward)
    d["placement"]["reward"] = {"pool": "main", "num_gpus": 1}
    return load_config(None, base=d)


def test_reward_model_scores_at_last_token(tiny_model, reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_dist.learner.frozen import RewardModelWorker

    worker = RewardModelWorker(reward_spec(config(tiny_model, tmp_path, model=reward_model)), rank=0, world_size=1)
    worker.setup()
    pairs = [("the red", " cat"), ("a dog runs", " fast and the sun is hot"), ("", "yes")]
    texts = [p + r for p, r in pairs]  # without a chat template, the reward model reads prompt + response
    scores = worker.score(pairs)
    # Independent: each text alone, no padding, score of the last token.
    tok = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    with torch.no_grad():
        for text, got in zip(texts, scores):
            ids = tok(text, return_tensors="pt")["input_ids"]
            assert got == pytest.approx(model(input_ids=ids).logits[0, 0].item(), abs=1e-5)


def test_reference_logprobs_match_transformers(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf_dist.learner.frozen import ReferenceWorker

    worker = ReferenceWorker(reference_spec(config(tiny_model, tmp_path, model=None)), rank=0, world_size=1)
    worker.setup()
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]]
    got = worker.infer(build_batch(prompts, responses, pad_id=2))["logprobs"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
            want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            assert torch.allclose(got[i, : len(r)], want, atol=1e-5)


def test_rule_rewards_combine_and_fail_loudly(tiny_model, tmp_path):
    cfg = config(
        tiny_model,
        tmp_path,
        functions=[
            {"name": "rlhf_dist.rewards.rules:char_fraction", "weight": 2.0, "kwargs": {"chars": "a"}},
            {"name": "rlhf_dist.rewards.rules:length_penalty", "weight": 1.0, "kwargs": {"target": 4}},
        ],
    )
    rules = RuleRewards(cfg.reward.functions)
    assert rules(["p"], ["aab "]) == [pytest.approx(2 * 2 / 3 + 0.0)]
    from rlhf_dist.config import ConfigError, RewardFunction

    with pytest.raises(ConfigError, match="has no function 'nope'"):
        RuleRewards([RewardFunction(name="rlhf_dist.rewards.rules:nope")])
    broken = RuleRewards([RewardFunction(name="rlhf_dist.rewards.rules:length_penalty", kwargs={"target": 0})])
    from rlhf_dist.errors import RewardError

    with pytest.raises(RewardError, match=r"length_penalty failed on sample 0 after 1 attempt\(s\): ZeroDivisionError"):
        broken(["p"], ["x"])


def test_labels_go_only_to_functions_that_take_them():
    from rlhf_dist.config import ConfigError, RewardFunction

    specs = [RewardFunction(name="rlhf_dist.rewards.math:math_verify_reward"), RewardFunction(name="rlhf_dist.rewards.math:starts_with_number", weight=0.5)]
    rules = RuleRewards(specs, has_labels=True)
    assert rules.per_function(["3+4=", "1+1="], ["7", "x 2"], labels=["7", "3"]) == [[1.0, 0.5], [0.0, 0.0]]
    with pytest.raises(ConfigError, match="needs a `label`: set data.label_key"):
        RuleRewards(specs, has_labels=False)


def test_evaluation_scores_with_the_reward_model_as_training_does(tiny_model, reward_model, tmp_path):
    """The held-out evaluation hands the reward model (prompt, response) pairs, as the training step does (it
    once handed it joined strings, which its worker cannot unpack). A real reward-model worker in this process;
    the job's roles are a stand-in of our own (rlhf_dist.trainers.rl_roles), generating fixed responses."""
    from transformers import AutoTokenizer

    from rlhf_dist.data.batch import shards
    from rlhf_dist.rollout.evaluation import Evaluator
    from rlhf_dist.learner.frozen import RewardModelWorker

    prompts = tmp_path / "eval.jsonl"
    prompts.write_text('{"prompt": "the red cat"}\n{"prompt": "a big dog"}\n{"prompt": "the sun"}\n')
    cfg = config(tiny_model, tmp_path, model=reward_model)
    cfg = load_config(None, [f"eval.prompts={prompts}"], base=cfg.model_dump(mode="json"))
    worker = RewardModelWorker(reward_spec(cfg), rank=0, world_size=1)
    worker.setup()
    tok = AutoTokenizer.from_pretrained(tiny_model)

    class Roles:
        rollout, reward = [0], [0, 1]  # one engine; two reward ranks, so requests are split unevenly

        version = 0

        def submit_generate(self, ids, seed, sampling=None):
            return ids

        def gather_generate(self, ids):
            r = tok(" runs fast")["input_ids"]
            return {"responses": [r] * len(ids), "logprobs": [[0.0] * len(r)] * len(ids), "finish_reasons": ["stop"] * len(ids),
                    "engine_seconds": [0.0]}

        def reward_scores(self, pairs):
            return [s for part in shards(pairs, len(self.reward)) for s in worker.score(part)]

    ev = Evaluator(cfg, tok, RuleRewards(cfg.reward.functions), log=lambda _: None)
    out = ev._one(Roles(), "greedy", 1, None, rows := [])
    texts = [r["prompt"] for r in rows]
    want = worker.score([(t, " runs fast") for t in texts])
    assert [r["reward_model"] for r in rows] == pytest.approx(want)
    assert out["eval/greedy/reward_model"] == pytest.approx(sum(want) / len(want))
    assert len(rows) == 3
