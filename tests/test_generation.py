"""Stop strings and stop tokens end generation where asked (real vLLM); finish reasons; truncated responses
left out of the loss (DAPO's overlong filtering)."""
import pytest
import torch

from rlhf_dist.config import load_config
from rlhf_dist.rollout.finish import drop_truncated, truncated_flags

from tests.conftest import demo_config_dict


def test_truncated_flags_and_mask_by_hand():
    flags = truncated_flags(["stop", "length", None, "length"])
    assert flags.tolist() == [False, True, False, True]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]], dtype=torch.float32)
    out = drop_truncated(mask, flags)
    assert out.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert out.dtype == mask.dtype and mask.sum() == 9  # the input mask is not changed


def test_masked_rows_carry_no_loss_gradient():
    from rlhf_dist.algorithms.losses import PolicyLoss

    logp = torch.zeros(2, 3, requires_grad=True)
    batch = {"old_logprobs": torch.zeros(2, 3), "advantages": torch.ones(2, 3),
             "mask": drop_truncated(torch.ones(2, 3), truncated_flags(["stop", "length"]))}
    loss, _ = PolicyLoss(name="ppo")({"logprobs": logp, "entropy": torch.zeros(2, 3)}, batch)
    loss.backward()
    assert logp.grad[1].abs().sum() == 0  # the truncated response gets no gradient
    assert logp.grad[0].abs().sum() > 0


def test_sampling_settings_reach_vllm(tmp_path):
    from rlhf_dist.rollout.engine import engine_spec, sampling_params

    d = demo_config_dict(str(tmp_path / "m"), "p.jsonl", str(tmp_path / "o"))
    d["rollout"].update(stop=["\n\n", "Q:"], stop_token_ids=[7], top_k=20, min_p=0.05, top_p=0.9)
    cfg = load_config(None, base=d)
    a, b = sampling_params(engine_spec(cfg).sampling, 2, seed=10)
    assert (a.stop, a.stop_token_ids, a.top_k, a.min_p, a.top_p, a.max_tokens) == (["\n\n", "Q:"], [7], 20, 0.05, 0.9, 12)
    assert (a.seed, b.seed) == (10, 11)
    greedy = sampling_params(engine_spec(cfg).sampling, 1, seed=0, overrides={"temperature": 0.0, "stop": []})[0]
    assert greedy.temperature == 0.0 and greedy.stop == [] and greedy.max_tokens == 12


@pytest.mark.parametrize("field,value", [("temperature", 0.01), ("temperature", 2.0), ("temperature", 2.5), ("temperature", 0.001),
                                         ("top_p", 1e-6), ("top_p", 1.0), ("top_k", 0), ("top_k", 1), ("min_p", 0.0),
                                         ("min_p", 1.0), ("max_new_tokens", 1)])
def test_the_config_accepts_exactly_what_vllm_accepts(tmp_path, field, value):
    """The rollout section's sampling bounds are vLLM's own: a value the config accepts builds SamplingParams
    unchanged, and one it refuses vLLM refuses or would silently change (so no engine refuses it after the
    actors start)."""
    import warnings

    from vllm import SamplingParams

    from rlhf_dist.config import ConfigError

    d = demo_config_dict(str(tmp_path / "m"), "p.jsonl", str(tmp_path / "o"))
    d["rollout"][field] = value
    vllm_name = {"max_new_tokens": "max_tokens"}.get(field, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vllm_ok = getattr(SamplingParams(**{vllm_name: value}), vllm_name) == value
    except Exception:  # noqa: BLE001 - vLLM refuses (VLLMValidationError, or ValueError for some fields)
        vllm_ok = False
    try:
        load_config(None, base=d)
        ours_ok = True
    except ConfigError:
        ours_ok = False
    assert ours_ok == vllm_ok, (field, value, ours_ok, vllm_ok)


@pytest.mark.slow
def test_stop_string_and_stop_token_end_generation_where_asked(ray_session, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from rlhf_dist.errors import wait_all
    from rlhf_dist.rollout.engine import RolloutEngine, engine_env, engine_spec

    d = demo_config_dict(tiny_model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["rollout"]["max_new_tokens"] = 16
    cfg = load_config(None, base=d)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tok("the cat sat on")["input_ids"]
    engine = ray_session.remote(num_cpus=0)(RolloutEngine).options(runtime_env={"env_vars": engine_env(cfg)}).remote(engine_spec(cfg), 0, 1)

    def generate(**sampling):
        ref = engine.generate.remote([prompt], 0, None, {"temperature": 0.0, **sampling})
        out = wait_all([ref], ["rollout rank 0"], "generate", 120)[0]
        return out["responses"][0], out["finish_reasons"][0]

    try:
        wait_all([engine.setup.remote()], ["rollout rank 0"], "engine start", 300)
        full, reason = generate()
        assert reason == "length" and len(full) == 16  # greedy, no stop: runs to max_new_tokens
        text = tok.decode(full, skip_special_tokens=True)
        # A stop string taken from the middle of the greedy text: generation must end at its first occurrence.
        k = len(full) // 2
        stop = tok.decode(full[k : k + 1], skip_special_tokens=True).strip() or tok.decode(full[k : k + 2]).strip()
        assert stop, "the chosen stop string is empty"
        first = text.find(stop)
        ids, reason = generate(stop=[stop])
        assert reason == "stop"
        assert ids == full[: len(ids)] and len(ids) < len(full)  # the same greedy tokens, cut short
        got = tok.decode(ids, skip_special_tokens=True)
        assert got.find(stop) == first  # the stop string is in the response once, where it first appeared...
        assert len(tok.decode(ids[:-1], skip_special_tokens=True)) < first + len(stop)  # ...completed by its last token
        # A stop token: the response ends with its first occurrence.
        token = full[k]
        ids, reason = generate(stop_token_ids=[token])
        assert reason == "stop" and ids == full[: full.index(token) + 1]
    finally:
        ray_session.kill(engine)
