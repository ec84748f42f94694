"""The environment layer without Ray: the contract and its loading errors, tool calls bounded in a separate
process (hostile tools, the Python tool's sandbox), multi-turn episodes token in and token out under both chat
templates, per-sample advancement, deadlines, and the rollout source's multi-turn rounds. The engines are a
stand-in for the project's engine interface (submit_generate / gather_generate / version) that answers with
scripted text; tests/test_agent_integration.py runs the same rounds on real vLLM engines."""
import dataclasses
import json

import pytest

from rlhf_dist.config import ConfigError
from rlhf_dist.data.chat import chat_ids, message_delta_ids
from rlhf_dist.data.tiny_chat import make_chat_tokenizer
from rlhf_dist.envs.base import ToolError, check_arguments, tool_schema
from rlhf_dist.envs.builtin import ArithFeedbackEnv, CalculatorEnv, calculator
from rlhf_dist.envs.episode import EpisodeLimits, TemplateMismatch
from rlhf_dist.envs.registry import load_environment
from rlhf_dist.envs.sandbox import Limits, run_python
from rlhf_dist.errors import WaitTimeout
from rlhf_dist.rollout.multiturn import TURN_SEED_OFFSET, EnvSpec, run_round

from tests import env_tools

SEED = 1000


@pytest.fixture(scope="module", params=["qwen2", "llama3"])
def tok(request, tmp_path_factory):
    return make_chat_tokenizer(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return make_chat_tokenizer(tmp_path_factory.mktemp("qwen2"), "qwen2")


class Scripted:
    """Stand-in for the engines: request j's turn t (read from its seed, as run_round assigns seeds) answers
    `replies[j][t]` as token ids, ending with EOS; `ids` overrides the encoding (a non-canonical sample)."""

    def __init__(self, tok, replies, ids=None, on_call=None, base=SEED):
        self.tok, self.replies, self.ids, self.on_call, self.base = tok, replies, ids or {}, on_call, base
        self.version, self.calls = 3, []

    def submit_generate(self, prompts, seed, sampling=None):
        return prompts, seed, sampling

    def gather_generate(self, handle):
        prompts, seeds, sampling = handle
        out = {"responses": [], "logprobs": [], "finish_reasons": [], "engine_seconds": [0.01]}
        turns = []
        for p, s, o in zip(prompts, seeds, sampling):
            j, t = (s - self.base) % TURN_SEED_OFFSET, (s - self.base) // TURN_SEED_OFFSET
            turns.append((j, t))
            ids = self.ids.get((j, t)) or self.tok(self.replies[j][t], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            cut = len(ids) > o["max_tokens"]
            ids = ids[: o["max_tokens"]]
            out["responses"].append(ids)
            out["logprobs"].append([-0.25] * len(ids))
            out["finish_reasons"].append("length" if cut else "stop")
        self.calls.append((turns, out["responses"]))
        if self.on_call:
            self.on_call(turns)
        return out


def limits(**kw):
    base = dict(max_turns=4, max_new_tokens_per_turn=120, max_total_new_tokens=300, max_response_tokens=600,
                max_prompt_tokens=200, trajectory_timeout_s=60.0, tool=Limits(timeout_s=5, output_chars=300, memory_mb=512, cpu_s=5),
                check_template="report")
    base.update(kw)
    return EpisodeLimits(**base)


def run(tok, env_class, replies, lim=None, kwargs=None, **engine_kw):
    engines = Scripted(tok, replies, **engine_kw)
    spec = EnvSpec(env_class, kwargs or {}, lim or limits(), env_class.__name__, concurrency=8)
    rows = [{"prompt": f"question {j}", "label": "7"} for j in range(len(replies))]
    trajs, _, metrics = run_round(engines, spec, tok, rows, list(range(len(rows))), list(range(len(rows))), SEED, 300)
    return trajs, metrics, engines


def call(name, **arguments):
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


# -- the contract ------------------------------------------------------------------------------------------------

def test_a_typed_function_is_a_tool_with_a_schema_and_checked_arguments():
    s = tool_schema(env_tools.add)["function"]
    assert s["name"] == "add" and s["description"] == "Add two integers."
    assert s["parameters"]["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}} and s["parameters"]["required"] == ["a"]
    assert check_arguments(env_tools.add, {"a": 2}) == {"a": 2}
    for bad, why in [({"b": 1}, "needs argument 'a'"), ({"a": "2"}, "'a' must be integer"), ({"a": True}, "'a' must be integer"),
                     ({"a": 1, "c": 2}, "has no argument 'c'"), ([1], "must be a JSON object")]:
        with pytest.raises(ToolError, match=why):
            check_arguments(env_tools.add, bad)
    assert calculator("(3+4)*2") == "14" and calculator("7/2") == "3.5"
    for expr, why in [("2**999999", "power too large"), ("__import__('os')", "only numbers"), ("1/0", "division by zero"), ("9" * 300, "longer")]:
        assert why in calculator(expr)


@pytest.mark.parametrize("name,kwargs,message", [
    ("nocolon", {}, "env.name 'nocolon': not a built-in (calculator, python, arith_feedback) and not 'package.module:Class'"),
    ("no_such_module:Env", {}, "env.name 'no_such_module:Env': cannot import 'no_such_module'"),
    ("tests.broken_reward_module:Env", {}, "importing 'tests.broken_reward_module' failed: RuntimeError"),
    ("tests.env_tools:Nope", {}, "'tests.env_tools' has no class 'Nope'"),
    ("tests.env_tools:NoStep", {}, "NoStep has no step() method"),
    ("tests.env_tools:UntypedTool", {}, "tool untyped: argument 'x' needs an annotation"),
    ("tests.env_tools:NeedsKwarg", {}, "env.kwargs: NeedsKwarg(**{}) failed: TypeError"),
    ("arith_feedback", {"turns": 0}, "env.kwargs: ArithFeedbackEnv(**{'turns': 0}) failed: ValueError: turns must be"),
])
def test_an_environment_that_cannot_load_is_one_line_naming_the_field(name, kwargs, message):
    with pytest.raises(ConfigError) as e:
        load_environment(name, kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_builtins_load():
    assert load_environment("calculator") is CalculatorEnv
    assert load_environment("arith_feedback", {"turns": 3}) is ArithFeedbackEnv


# -- token in, token out -----------------------------------------------------------------------------------------

def test_the_ids_trained_on_are_the_engine_ids_and_the_template_delta(tok):
    replies = [["wrong 5", "still 6", "it is 7"], [call("add", a=3, b=4), "7"]]
    trajs, metrics, engines = run(tok, env_tools.Countdown, [replies[0], replies[0]], lim=limits(max_turns=3))
    trajs2, metrics2, engines2 = run(tok, env_tools.ToolEnv, [replies[1]])
    for t, eng, want_turns in [(trajs[0], engines, 3), (trajs2[0], engines2, 2)]:
        sampled = [r for turns, responses in eng.calls for (j, _), r in zip(turns, responses) if j == 0]
        spans = t.spans()
        assert len(spans) == want_turns
        assert [t.response_ids[a:b] for a, b in spans] == sampled  # every turn exactly as the engine returned it
        assert all(t.logprobs[i] == -0.25 for a, b in spans for i in range(a, b))
        inserted = [i for i, m in enumerate(t.loss_mask) if m == 0]
        assert inserted and all(t.logprobs[i] == 0.0 for i in inserted)
    # The inserted tokens are the template's delta for the observation, and the whole equals a full render.
    t = trajs[0]
    gap = t.response_ids[t.spans()[0][1] : t.spans()[1][0]]
    assert gap == message_delta_ids(tok, [{"role": "user", "content": "more"}], tok.eos_token_id)
    msgs = [{"role": "system", "content": "count"}, {"role": "user", "content": "question 0"}]
    for reply in replies[0]:
        msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
    full = chat_ids(tok, msgs[:-1], add_generation_prompt=False)
    assert full[: len(t.prompt_ids) + len(t.response_ids)] == t.prompt_ids + t.response_ids
    assert metrics["rollout/template_mismatches"] == 0 and metrics2["rollout/template_mismatches"] == 0
    assert t.finish_reason == "length" and t.env_rewards == {"env": 1.5}  # 3 turns, never done; 0.5 per turn summed
    assert trajs2[0].finish_reason == "stop" and trajs2[0].env_rewards == {"answered": 1.0}
    assert "\n7" in tok.decode(trajs2[0].response_ids) or "7" in tok.decode(trajs2[0].response_ids)
    assert metrics2["rollout/tool_calls_mean"] == 1 and metrics2["rollout/turns_mean"] == 2
    assert t.weights_version == 3


def test_a_turn_that_a_full_render_would_tokenize_differently_is_counted(qwen):
    # "hello" sampled one character at a time: the engine's ids, kept as they are, differ from the render's.
    chars = [qwen.convert_tokens_to_ids(c) for c in "hello"] + [qwen.eos_token_id]
    assert chars[:-1] != qwen("hello", add_special_tokens=False)["input_ids"]
    trajs, metrics, _ = run(qwen, env_tools.Countdown, [["x", "y"], ["x", "y"]], lim=limits(max_turns=2), ids={(1, 0): chars})
    assert trajs[1].response_ids[: len(chars)] == chars
    assert metrics["rollout/template_mismatches"] == 1
    with pytest.raises(TemplateMismatch, match="prompt 1: the ids differ from a full render"):
        run(qwen, env_tools.Countdown, [["x", "y"], ["x", "y"]], lim=limits(max_turns=2, check_template="error"), ids={(1, 0): chars})


def test_check_template_restart_samples_a_differing_trajectory_again(qwen):
    """check_template=restart: a trajectory whose ids differ from a full render is sampled again with the
    restart's seeds (seed + r x RESTART_SEED_OFFSET); one still differing after two restarts is kept, counted."""
    from rlhf_dist.rollout.multiturn import RESTART_SEED_OFFSET, TEMPLATE_RESTARTS

    chars = [qwen.convert_tokens_to_ids(c) for c in "hello"] + [qwen.eos_token_id]
    r = RESTART_SEED_OFFSET // TURN_SEED_OFFSET  # a restart's turn t arrives at the scripted engine as r + t
    replies = [{t + a * r: text for a in range(3) for t, text in enumerate(["x", "y"])} for _ in range(2)]
    lim = limits(max_turns=2, check_template="restart")
    trajs, metrics, engines = run(qwen, env_tools.Countdown, replies, lim=lim, ids={(1, 0): chars})
    assert metrics["rollout/template_restarts"] == 1 and metrics["rollout/template_mismatches"] == 0
    assert trajs[1].response_ids[: len(chars)] != chars and [t.prompt_index for t in trajs] == [0, 1]
    assert [turns for turns, _ in engines.calls][-2:] == [[(1, r)], [(1, r + 1)]]  # only sample 1 again, new seeds
    # Differing every time: kept after TEMPLATE_RESTARTS restarts, and reported.
    always = {(1, a * r): chars for a in range(3)}
    trajs, metrics, _ = run(qwen, env_tools.Countdown, replies, lim=lim, ids=always)
    assert metrics["rollout/template_restarts"] == TEMPLATE_RESTARTS and metrics["rollout/template_mismatches"] == 1
    assert trajs[1].response_ids[: len(chars)] == chars


def test_budgets_end_episodes_with_length(qwen):
    long = "a b c d e f g h i j k l m n o p"
    trajs, metrics, _ = run(qwen, env_tools.Countdown, [[long] * 4, ["x"] * 4],
                            lim=dataclasses.replace(limits(max_turns=4), max_new_tokens_per_turn=8))
    t = trajs[0]
    # Each turn cut at its own limit ends only that turn: its end-of-turn token is inserted, not trained on.
    assert [b - a for a, b in t.spans()] == [8] * 4
    assert all(t.response_ids[b] == qwen.eos_token_id and t.loss_mask[b] == 0 for _, b in t.spans())
    assert [len(x.spans()) for x in trajs] == [4, 4] and {x.finish_reason for x in trajs} == {"length"}  # max_turns
    assert metrics["rollout/template_mismatches"] == 0
    trajs, _, _ = run(qwen, env_tools.Countdown, [["x"] * 4], lim=limits(max_total_new_tokens=5))
    assert sum(b - a for a, b in trajs[0].spans()) <= 5 and trajs[0].finish_reason == "length"


# -- tools: bounded, counted, never the run's problem ------------------------------------------------------------

def test_hostile_tools_each_end_bounded_and_counted(qwen):
    replies = [[call("hang", seconds=600), "done"], [call("allocate", gigabytes=10), "done"], [call("leave", code=3), "done"],
               [call("flood", megabytes=10), "done"], [call("fail", message="bad day"), "done"], [call("add", a=1, b=2), "done"],
               ["<tool_call>{not json</tool_call>", "done"], [call("nope"), "done"]]
    trajs, metrics, _ = run(qwen, env_tools.ToolEnv, replies, lim=limits(tool=Limits(timeout_s=3, output_chars=200, memory_mb=512, cpu_s=3)))
    seen = [qwen.decode(t.response_ids[t.spans()[0][1] : t.spans()[1][0]]) for t in trajs]
    assert "[timed out after 3 s]" in seen[0]
    assert "MemoryError" in seen[1]
    assert "exited" in seen[2] or "exit status 3" in seen[2]
    assert "wrote too much output" in seen[3] or "truncated" in seen[3]
    assert "ValueError: bad day" in seen[4]
    assert "\n3<|im_end|>" in seen[5]
    assert "not valid JSON" in seen[6] and "no tool named 'nope'" in seen[7]
    assert all(t.finish_reason == "stop" and t.env_rewards == {"answered": 1.0} for t in trajs)  # the episodes went on
    assert metrics["rollout/tool_timeouts"] == 1 and metrics["rollout/tool_errors"] == 6
    assert metrics["rollout/tool_calls_mean"] == 1


def test_the_python_tool_runs_in_its_own_sandbox(tmp_path):
    secret = tmp_path / "run" / "config.yaml"
    secret.parent.mkdir()
    secret.write_text("token: 123")
    lim = Limits(timeout_s=10, output_chars=500, memory_mb=512, cpu_s=5)
    ok = run_python("open('note.txt', 'w').write('hi')\nimport os, math\nprint(open('note.txt').read(), os.listdir('.'), math.pi)", lim)
    assert ok.status == "ok" and "hi ['note.txt'] 3.14" in ok.text
    for code, why in [("print(open('/etc/passwd').read())", "'/etc/passwd' is outside the sandbox"),
                      (f"print(open({str(secret)!r}).read())", "is outside the sandbox"),
                      (f"import os; os.chdir({str(secret.parent)!r})", "os.chdir outside the sandbox"),
                      ("import os; print(os.listdir('/'))", "os.listdir outside the sandbox"),
                      ("import subprocess; subprocess.run(['cat', '/etc/passwd'])", "not allowed"),
                      ("import os; os.system('cat /etc/passwd')", "os.system is not allowed"),
                      ("import os; os.kill(os.getppid(), 9)", "os.kill is not allowed"),
                      ("import ctypes", "importing"),
                      ("import socket", "importing")]:
        out = run_python(code, lim)
        assert out.status == "error" and why in out.text and "token: 123" not in out.text and "root:" not in out.text, (code, out)
    assert run_python("while True: pass", Limits(timeout_s=2, cpu_s=1)).status in ("error", "timeout")  # CPU limit or the clock
    assert run_python("print('x' * 10_000_000)", lim).status == "output"
    assert run_python("x = bytearray(10 << 30)", lim).text.count("MemoryError") == 1


# -- per-sample advancement and deadlines ------------------------------------------------------------------------

def test_a_slow_tool_delays_only_its_own_episode(qwen):
    env_tools.RELEASE.clear()
    order = []

    def on_call(turns):
        order.append(turns)
        if {(1, 1), (2, 1)} <= {x for t in order for x in t}:  # the fast episodes' second turns were sampled: let it go
            env_tools.RELEASE.set()

    replies = [[call("slow", tag="a"), "done"], [call("add", a=1), "done"], [call("add", a=2), "done"]]
    trajs, metrics, _ = run(qwen, env_tools.ToolEnv, replies, on_call=on_call)
    first_of_0 = next(i for i, t in enumerate(order) if (0, 1) in t)
    first_of_fast = next(i for i, t in enumerate(order) if (1, 1) in t)
    assert first_of_fast < first_of_0  # the fast episodes went on while the slow tool ran
    assert "slow a" in qwen.decode(trajs[0].response_ids) and all(t.finish_reason == "stop" for t in trajs)


def test_an_environment_that_never_returns_ends_at_the_trajectory_deadline(qwen):
    trajs, metrics, _ = run(qwen, env_tools.StuckStep, [["x"], ["y"]], lim=limits(trajectory_timeout_s=1.0))
    assert [t.finish_reason for t in trajs] == ["timeout", "timeout"]
    assert metrics["rollout/trajectory_timeouts"] == 2 and len(trajs[0].spans()) == 1


def test_an_environment_that_raises_stops_the_round_naming_it(qwen):
    with pytest.raises(RuntimeError, match=r"env BrokenStep: step failed on prompt 0, turn 1: KeyError"):
        run(qwen, env_tools.BrokenStep, [["x"]])


def test_arith_feedback_always_takes_its_turns(qwen):
    trajs, metrics, _ = run(qwen, ArithFeedbackEnv, [["7", "7"], ["3", "7"], ["x", "y"]], kwargs={"turns": 2})
    assert metrics["rollout/turns_mean"] == 2
    assert [t.env_rewards["correct"] for t in trajs] == [1.0, 0.5, 0.0]
    assert "wrong. again:" in qwen.decode(trajs[1].response_ids)


def test_a_hung_reset_is_an_error_within_the_deadline(qwen):
    class StuckReset(env_tools.StuckStep):
        def reset(self, row):
            env_tools.STUCK.wait(600)

    with pytest.raises(WaitTimeout, match="reset of prompt 0 did not return within env.trajectory_timeout_s=1"):
        run(qwen, StuckReset, [["x"]], lim=limits(trajectory_timeout_s=1.0))


# -- the rollout source's multi-turn rounds ----------------------------------------------------------------------

def test_the_rollout_source_makes_multi_turn_groups_with_env_rewards_beside_the_scorers(qwen):
    from rlhf_dist.config import RewardFunction
    from rlhf_dist.data.prompts import PromptLoader, PromptSet
    from rlhf_dist.rewards.functions import RuleRewards
    from rlhf_dist.rewards.scorer import Scorer
    from rlhf_dist.rollout.requests import generation_seed
    from rlhf_dist.rollout.source import RolloutSource, SourceSpec

    # Step 1's first round has the seed of the one rule; odd positions answer right twice, even ones never.
    engines = Scripted(qwen, {j: ["7", "7"] if j % 2 else ["1", "2"] for j in range(4)}, base=generation_seed(5, 1, 1))
    spec = SourceSpec(seed=5, steps=2, group_size=2, prompts_per_step=2, call_s=30,
                      env=EnvSpec(ArithFeedbackEnv, {"turns": 2}, limits(), "arith_feedback"))
    prompts = PromptSet([f"{i}+3=" for i in range(4)], [[1]] * 4, ["7"] * 4, [])
    scorer = Scorer(RuleRewards([RewardFunction(name="rlhf_dist.rewards.math:starts_with_number")]))
    src = RolloutSource(spec, engines, PromptLoader(4, 2, 5), prompts, qwen, scorer)
    try:
        r = src.take(1, {})
        r.wait_scored(60, "test")
    finally:
        src.close()
    assert len(r) == 4 and r.metrics["rollout/turns_mean"] == 2 and r.metrics["rollout/template_mismatches"] == 0
    assert [s.reward_parts["correct"] for s in r.samples] == [0.0, 1.0, 0.0, 1.0]
    assert [s.reward_parts["starts_with_number"] for s in r.samples] == [1.0] * 4  # functions read the last turn
    assert [s.reward for s in r.samples] == [1.0, 2.0, 1.0, 2.0]
    batch, engine_lp = r.batch(qwen.pad_token_id)
    assert batch["mask"].sum().item() == sum(sum(s.loss_mask) for s in r.samples)
    assert {"rollout/tool_calls_mean", "rollout/tool_errors", "rollout/tool_timeouts", "rollout/env_seconds"} <= set(r.metrics)


def test_the_user_environment_in_the_docs_loads_and_runs(qwen, tmp_path, monkeypatch):
    import re
    import sys
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "agents.md").read_text()
    code = re.search(r"```python\n# mypkg/letters.py\n(.*?)```", page, re.DOTALL).group(1)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "letters.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cls = load_environment("mypkg.letters:Letters")
        replies = [[call("count_letters", word="letters"), "4", "7"]]  # the label is "7"
        trajs, metrics, _ = run(qwen, cls, replies, lim=limits(max_prompt_tokens=400))
    finally:
        sys.modules.pop("mypkg.letters", None)
        sys.modules.pop("mypkg", None)
    t = trajs[0]
    assert "<|im_start|>tool\n7<|im_end|>" in qwen.decode(t.response_ids)  # the tool ran in its own interpreter
    assert t.finish_reason == "stop" and t.env_rewards == {"wrong": -0.1, "env": 1.0}
    assert metrics["rollout/tool_calls_mean"] == 1 and metrics["rollout/turns_mean"] == 3


def test_an_agent_config_is_evaluated_episode_by_episode_with_pass_at_k(qwen, tmp_path):
    """eval with an env: each prompt is an episode (greedy: every turn at temperature 0), scored by the
    functions and the environment's parts; pass@k counts the environment's `correct`."""
    from rlhf_dist.config import load_config
    from rlhf_dist.rewards.functions import RuleRewards
    from rlhf_dist.rollout.evaluation import Evaluator, mean_pass_at_k
    from rlhf_dist.rollout.requests import generation_seed
    from tests.conftest import demo_config_dict

    (tmp_path / "e.jsonl").write_text("".join(json.dumps({"prompt": f"{j}+3=", "answer": "7"}) + "\n" for j in range(3)))
    d = demo_config_dict(str(tmp_path / "m"), str(tmp_path / "e.jsonl"), str(tmp_path / "o"))
    d["data"].update(apply_chat_template=True, label_key="answer", max_prompt_tokens=64)
    d["rollout"]["max_new_tokens"] = 200
    d["reward"]["functions"] = [{"name": "rlhf_dist.rewards.math:starts_with_number"}]
    d["env"] = {"name": "arith_feedback", "max_turns": 2, "max_total_new_tokens": 100}
    d["eval"] = {"prompts": str(tmp_path / "e.jsonl"), "label_key": "answer", "greedy": True, "n_samples": 2, "k": [1, 2],
                 "pass_function": "correct"}
    cfg = load_config(None, base=d)
    spec = EnvSpec(ArithFeedbackEnv, {"turns": 2}, limits(), "arith_feedback")
    rules = RuleRewards(cfg.reward.functions, has_labels=True)
    evaluator = Evaluator(cfg, qwen, rules, log=lambda _: None, env=spec)
    # Request j of a round answers right on both turns when j % 3 == 1 (and its first turn only when j % 3 == 2).
    replies = {j: [["1", "1"], ["7", "7"], ["7", "2"]][j % 3] for j in range(6)}
    sent = []  # the sampling settings of every request, call by call
    engines = Scripted(qwen, replies, base=generation_seed(cfg.run.seed, 0, 0), on_call=lambda turns: None)
    engines.reward = None
    submit = engines.submit_generate
    engines.submit_generate = lambda prompts, seed, sampling=None: (sent.append(sampling), submit(prompts, seed, sampling))[1]
    metrics = evaluator.run(engines)
    # Greedy: one episode per prompt (requests 0, 1, 2); sampled: 2 per prompt (requests 0-5, prompt j // 2).
    assert metrics["eval/greedy/turns_mean"] == 2 and metrics["eval/sampled/turns_mean"] == 2
    assert metrics["eval/greedy/pass@1"] == pytest.approx(1 / 3)
    assert metrics["eval/greedy/correct"] == pytest.approx((0 + 1 + 0.5) / 3)
    per_prompt = [sum(replies[j] == ["7", "7"] for j in (2 * i, 2 * i + 1)) for i in range(3)]
    for k in (1, 2):
        assert metrics[f"eval/sampled/pass@{k}"] == pytest.approx(mean_pass_at_k(per_prompt, 2, k))
    # The greedy round's two calls (one per turn) are sent at temperature 0; the sampled round's keep the rollout's.
    assert [len(c) for c in sent] == [3, 3, 6, 6]
    assert all(o["temperature"] == 0.0 for c in sent[:2] for o in c) and all("temperature" not in o for c in sent[2:] for o in c)
    assert metrics["eval/greedy/starts_with_number"] == 1.0

    # A pass function that is neither a reward function nor a part the environment declares: refused up front.
    bad = load_config(None, base={**d, "eval": {**d["eval"], "pass_function": "nope"}})
    with pytest.raises(ConfigError, match=r"eval.pass_function: 'nope' is not one of reward.functions or the environment's "
                                          r"reward parts \(starts_with_number, correct\)"):
        Evaluator(bad, qwen, rules, log=lambda _: None, env=spec)
