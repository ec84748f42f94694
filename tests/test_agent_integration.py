"""Multi-turn rounds on real vLLM engines (Ray actors), under the Qwen2/ChatML and Llama-3 templates: every
turn the learners would train on is exactly what the engine returned for that turn, the tokens between turns
are the template's delta (loss mask 0, log-prob 0.0), every engine call is seeded by the rule, and the
learners' batch carries those ids and that mask."""
import pytest

from tests.conftest import demo_config_dict


class Engine:
    """The project's engine interface over one real engine actor; records what each call was sent and returned."""

    def __init__(self, actor):
        self.actor, self.version, self.calls = actor, 0, []

    def submit_generate(self, prompts, seed, sampling=None):
        return self.actor.generate.remote(prompts, seed, None, sampling), prompts, seed, sampling

    def gather_generate(self, handle):
        from rlhf_dist.errors import wait_all

        ref, prompts, seeds, sampling = handle
        out = wait_all([ref], ["rollout rank 0"], "generate", 300)[0]
        self.calls.append((prompts, seeds, sampling, out))
        return {"responses": out["responses"], "logprobs": out["logprobs"], "finish_reasons": out["finish_reasons"],
                "engine_seconds": [out["seconds"]]}


@pytest.mark.slow
def test_multi_turn_ids_are_the_engines_ids_under_both_templates(ray_session, tmp_path):
    from rlhf_dist.config import load_config
    from rlhf_dist.data.chat import message_delta_ids
    from rlhf_dist.data.tiny_chat import make_chat_model
    from rlhf_dist.envs.episode import EpisodeLimits
    from rlhf_dist.envs.sandbox import Limits
    from rlhf_dist.rollout.multiturn import TURN_SEED_OFFSET, EnvSpec, run_round
    from rlhf_dist.rollout.trajectory import Rollouts
    from tests.env_tools import Countdown
    from tests.test_long_prompts import start_engine
    from transformers import AutoTokenizer

    for family in ("qwen2", "llama3"):
        model = str(make_chat_model(tmp_path / family, family))
        d = demo_config_dict(model, str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
        d["data"].update(apply_chat_template=True, max_prompt_tokens=64)
        d["rollout"].update(max_new_tokens=160, warmup=False)
        cfg = load_config(None, base=d)
        engine = Engine(start_engine(ray_session, cfg))
        try:
            tok = AutoTokenizer.from_pretrained(model)
            limits = EpisodeLimits(max_turns=3, max_new_tokens_per_turn=12, max_total_new_tokens=36, max_response_tokens=160,
                                   max_prompt_tokens=64, trajectory_timeout_s=120, tool=Limits(), check_template="report")
            rows = [{"prompt": f"count to {j}", "label": None} for j in range(6)]
            trajs, engine_s, metrics = run_round(engine, EnvSpec(Countdown, {}, limits, "countdown"), tok, rows,
                                                 list(range(6)), list(range(6)), 777, 300)
        finally:
            ray_session.kill(engine.actor)

        # What the engine returned for each context it was sent, and the seed it was sent with.
        answered, seeded = {}, {}
        for prompts, seeds, sampling, out in engine.calls:
            assert isinstance(seeds, list) and len(seeds) == len(prompts) == len(sampling)
            for p, s, r in zip(prompts, seeds, out["responses"]):
                answered[tuple(p)], seeded[tuple(p)] = r, s
        delta = message_delta_ids(tok, [{"role": "user", "content": "more"}], tok.eos_token_id)
        for j, t in enumerate(trajs):
            spans = t.spans()
            assert len(spans) == 3 and t.finish_reason == "length"  # Countdown is never done: max_turns ends it
            for turn, (a, b) in enumerate(spans):
                context = tuple(t.prompt_ids + t.response_ids[:a])
                assert t.response_ids[a:b] == answered[context], (family, j, turn)  # exactly the engine's ids
                assert seeded[context] == 777 + j + turn * TURN_SEED_OFFSET
                gap = t.response_ids[b : spans[turn + 1][0]] if turn + 1 < len(spans) else []
                if gap:
                    # The delta after the turn's end: an end-of-turn token inserted if the turn was cut, then the
                    # template's rendering of the observation.
                    body = gap[1:] if answered[context][-1] != tok.eos_token_id else gap
                    assert body == delta, (family, j, turn)
                    assert all(t.loss_mask[i] == 0 and t.logprobs[i] == 0.0 for i in range(b, spans[turn + 1][0]))
        assert metrics["rollout/turns_mean"] == 3
        assert "rollout/template_mismatches" in metrics  # counted (a random model's tokens may not re-tokenize the same)

        # The learners' batch: each row's response columns are those ids, its mask the loss mask.
        for t in trajs:
            t.reward = 0.0
        batch, engine_lp = Rollouts(trajs, 1).batch(tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)
        P = max(len(t.prompt_ids) for t in trajs)
        for row, t in enumerate(trajs):
            n = len(t.response_ids)
            assert batch["input_ids"][row, P : P + n].tolist() == t.response_ids
            assert batch["mask"][row, :n].tolist() == [float(m) for m in t.loss_mask]
            assert engine_lp[row, :n].tolist() == pytest.approx(t.logprobs)


@pytest.mark.slow
def test_an_agent_config_trains_and_evaluates_end_to_end(ray_session, tmp_path):
    """configs/agent_cpu.yaml, shrunk: two GRPO steps of two-turn episodes on real engines and learners, an
    eval section scoring episodes with pass@k on the environment's part, and `rlhf-dist eval` on the result."""
    import json
    from pathlib import Path

    import yaml

    from rlhf_dist.commands.evaluate import evaluate_saved_policy
    from rlhf_dist.config import load_config
    from rlhf_dist.metrics import read_metrics
    from rlhf_dist.trainers.ppo import train

    root = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((root / "configs/agent_cpu.yaml").read_text())
    d["run"].update(steps=2, output_dir=str(tmp_path / "run"), progress_bar=False)
    d["model"]["policy"] = str(tmp_path / "chat-model")
    d["data"]["prompts"] = str(root / d["data"]["prompts"])
    d["rollout"]["n_samples_per_prompt"] = 4
    d["ppo"].update(rollout_batch_size=4, mini_batch_size=16, micro_batch_size=8)
    (tmp_path / "e.jsonl").write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                                              for a, b in [(1, 2), (3, 4), (2, 2)]))
    d["eval"] = {"prompts": str(tmp_path / "e.jsonl"), "label_key": "answer", "n_samples": 2, "k": [1, 2], "pass_function": "correct"}
    run_dir = train(load_config(None, base=d), log=lambda _: None)
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["rollout/turns_mean"] == 2 and r["rollout/tool_errors"] == 0 and "rollout/template_mismatches" in r
        assert "correct" in " ".join(r) and r["policy/loss"] == r["policy/loss"]  # the environment's part; a finite loss
    for r in (rows[0], rows[-1]):
        assert r["eval/greedy/turns_mean"] == 2 and 0 <= r["eval/sampled/pass@1"] <= r["eval/sampled/pass@2"] <= 1
    d["model"].update(policy=str(run_dir / "final"), make_tiny=False)
    d["run"]["output_dir"] = str(tmp_path / "alone")
    out = evaluate_saved_policy(load_config(None, base=d), log=lambda _: None)
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["eval/greedy/turns_mean"] == 2 and "eval/sampled/pass@2" in metrics
