"""One multi-turn trajectory as it is built: token ids in, token ids out, never re-rendered.

The engines sample each assistant turn; the episode appends those ids as they came (loss mask 1, the engine's
log-probs) and then the ids the next messages add after an end of turn (rlhf_dist.data.chat.message_delta_ids;
loss mask 0, log-prob 0.0). The environment and its tools see text; the learners see the ids. At the end the
ids are compared with a full render of the conversation (`check_template`); a difference is counted (and is
what a framework that re-renders the history would have trained on instead).

Limits, each ending the episode with a finish reason rather than an error: `length` when the next turn or
observation would not fit the total or response budget, or after max_turns without `done` (a turn cut at its
own token limit only ends that turn: its end-of-turn token is inserted, loss mask 0); `timeout` at the trajectory's deadline (sandbox set-up and tool calls
included); `stop` when the environment says done. A tool that fails, hangs, dies or floods its output is an
observation for the model and a count in the metrics.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from rlhf_dist.data.chat import chat_ids, message_delta_ids
from rlhf_dist.envs.base import Step, ToolError, check_arguments, reward_parts
from rlhf_dist.envs.sandbox import Limits, Outcome, call_function, run_python, truncate
from rlhf_dist.rollout.trajectory import Trajectory


@dataclasses.dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int = 4
    max_new_tokens_per_turn: int = 64
    max_total_new_tokens: int = 256  # sampled tokens over all turns
    max_response_tokens: int = 512  # everything after the prompt, inserted tokens included (rollout.max_new_tokens)
    max_prompt_tokens: int = 512
    trajectory_timeout_s: float = 120.0
    tool: Limits = Limits()
    check_template: str = "report"  # report | error | restart | off


class TemplateMismatch(RuntimeError):
    pass


@dataclasses.dataclass
class Answer:
    """What the environment made of one turn, applied to the episode in one go."""
    messages: list[dict] | None = None
    delta: list[int] = dataclasses.field(default_factory=list)
    finish: str | None = None
    rewards: dict[str, float] = dataclasses.field(default_factory=dict)
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0


class Episode:
    def __init__(self, env, tokenizer, limits: EpisodeLimits, prompt_index: int, group: int, row: dict, name: str = "env"):
        self.env, self.tok, self.limits, self.name = env, tokenizer, limits, name
        self.prompt_index, self.group, self.row = prompt_index, group, row
        self.deadline = time.monotonic() + limits.trajectory_timeout_s
        self.eos = tokenizer.eos_token_id
        self.messages: list[dict] = []
        self.prompt_ids: list[int] = []
        self.response_ids, self.loss_mask, self.logprobs = [], [], []
        self.turns = self.sampled = self.tool_calls = self.tool_errors = self.tool_timeouts = 0
        self.env_seconds, self.mismatch = 0.0, False
        self.rewards: dict[str, float] = {}
        self.finish_reason: str | None = None
        self.version: int | None = None
        self.lock = threading.Lock()  # the driver may give up on the episode while its environment still works

    # -- the environment's side (run on a worker thread) ------------------------------------------------------

    def reset(self) -> None:
        t0 = time.monotonic()
        try:
            first = self.env.reset(self.row)
        except Exception as e:
            raise RuntimeError(f"env {self.name}: reset failed on prompt {self.prompt_index}: {type(e).__name__}: {e}") from e
        finally:
            self.env_seconds += time.monotonic() - t0
        self.messages = self._as_messages(first, "reset", "user")
        self.prompt_ids = chat_ids(self.tok, self.messages, add_generation_prompt=True)
        if len(self.prompt_ids) > self.limits.max_prompt_tokens:
            raise RuntimeError(f"env {self.name}: reset of prompt {self.prompt_index} gives {len(self.prompt_ids)} tokens, "
                               f"more than data.max_prompt_tokens={self.limits.max_prompt_tokens}")

    def env_turn(self, text: str) -> None:
        """The environment's answer to the model's turn `text`: a tool's output, or `step`'s observation. Worked
        out first, then applied at once, and only if the driver has not given up on the episode meanwhile."""
        t0 = time.monotonic()
        a = Answer()
        self._answer(text, a)  # an environment's own exception ends the round, with its message
        with self.lock:
            if self.done:
                return
            self.env_seconds += time.monotonic() - t0
            self.tool_calls += a.tool_calls
            self.tool_errors += a.tool_errors
            self.tool_timeouts += a.tool_timeouts
            for k, v in a.rewards.items():
                self.rewards[k] = self.rewards.get(k, 0.0) + v
            if a.finish is not None:
                self.finish_reason = a.finish
            elif a.messages is not None:
                self.messages += a.messages
                self._append(a.delta, None)

    def _answer(self, text: str, a: "Answer") -> None:
        last = self.turns >= self.limits.max_turns
        try:
            call = self.env.parse_tool_call(text)
        except ToolError as e:
            a.tool_calls, a.tool_errors = 1, 1
            return self._observe([{"role": "tool", "content": f"error: {e}"}], last, a)
        if call is not None:
            a.tool_calls = 1
            if last:  # its output could never be read
                a.finish = "length"
                return
            out = self._tool(call)
            a.tool_errors = int(out.status in ("error", "output"))
            a.tool_timeouts = int(out.status == "timeout")
            return self._observe([{"role": "tool", "content": out.text}], last, a)
        try:
            step = self.env.step(text)
            if not isinstance(step, Step):
                raise TypeError(f"step returned {type(step).__name__}, not a Step")
            a.rewards = reward_parts(step.reward)
        except Exception as e:
            raise RuntimeError(f"env {self.name}: step failed on prompt {self.prompt_index}, turn {self.turns}: "
                               f"{type(e).__name__}: {e}") from e
        if step.done:
            a.finish = "stop"
            return
        if step.observation is None:
            raise RuntimeError(f"env {self.name}: step returned neither an observation nor done (prompt {self.prompt_index})")
        self._observe(self._as_messages(step.observation, "step", "user"), last, a)

    def _tool(self, call) -> Outcome:
        t0 = time.monotonic()
        try:
            fn = self.env.tool_named(call.name)
            args = check_arguments(fn, call.arguments)
        except ToolError as e:
            return Outcome("error", f"error: {e}", 0.0)
        left = min(self.limits.tool.timeout_s, self.deadline - time.monotonic())
        if left <= 0:
            return Outcome("timeout", "[timed out: the trajectory's deadline has passed]", 0.0)
        limits = dataclasses.replace(self.limits.tool, timeout_s=left)
        if getattr(fn, "rlhf_runs_code", False):
            return run_python(args["code"], limits)
        if getattr(fn, "rlhf_in_process", False):
            try:
                return Outcome("ok", truncate(str(fn(**args)), limits.output_chars), time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - the model's call failed: it is told
                return Outcome("error", f"error: {type(e).__name__}: {e}"[:500], time.monotonic() - t0)
        return call_function(f"{fn.__module__}:{fn.__qualname__}", args, limits)

    def _as_messages(self, value, where: str, role: str) -> list[dict]:
        if isinstance(value, str):
            return [{"role": role, "content": truncate(value, self.limits.tool.output_chars)}]
        if isinstance(value, list) and value and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value):
            return [dict(m) for m in value]
        raise RuntimeError(f"env {self.name}: {where} returned {type(value).__name__}, not text or a list of "
                           "{'role': ..., 'content': ...} messages")

    def _observe(self, messages: list[dict], last: bool, a: "Answer") -> None:
        if last:
            a.finish = "length"
            return
        delta = message_delta_ids(self.tok, messages, self.eos)
        if len(self.response_ids) + len(delta) >= self.limits.max_response_tokens:
            a.finish = "length"
            return
        a.messages, a.delta = messages, delta

    # -- the engines' side (the driver's thread) --------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def room(self) -> int:
        """Tokens the next turn may sample."""
        lim = self.limits
        return min(lim.max_new_tokens_per_turn, lim.max_total_new_tokens - self.sampled,
                   lim.max_response_tokens - len(self.response_ids))

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    def add_turn(self, ids: list[int], logprobs: list[float], finish_reason: str, version: int) -> str | None:
        """The engine's answer for this turn, appended as it came; the turn's text for the environment, or None
        when the episode ends here. `finish_reason` ('stop' or 'length') matters only through the ids: a turn
        without its end-of-turn token gets one inserted."""
        self.turns += 1
        self.sampled += len(ids)
        self.version = version if self.version is None else min(self.version, version)
        self._append(ids, logprobs)
        if not ids:
            self.finish("length")
            return None
        body = ids[:-1] if ids[-1] == self.eos else ids
        # Cut at the turn's token limit, or ended by a stop string: the turn's end is inserted (loss mask 0) as the
        # template writes it, and the episode goes on; the total budgets end it (room()).
        if ids[-1] != self.eos:
            if len(self.response_ids) >= self.limits.max_response_tokens:
                self.finish("length")
                return None
            self._append([self.eos], None)
        self.messages.append({"role": "assistant", "content": self.tok.decode(body, skip_special_tokens=False)})
        return self.tok.decode(body, skip_special_tokens=True)

    def _append(self, ids: list[int], logprobs: list[float] | None) -> None:
        self.response_ids += ids
        self.loss_mask += [0 if logprobs is None else 1] * len(ids)
        self.logprobs += [0.0] * len(ids) if logprobs is None else list(logprobs)

    def finish(self, reason: str) -> None:
        with self.lock:
            if self.finish_reason is None:
                self.finish_reason = reason

    def check_template(self) -> bool:
        """True when the ids equal a full render of the conversation (the template's text after the last end of
        turn aside); counts and, with check_template=error, raises otherwise."""
        if self.limits.check_template == "off" or not self.messages:
            return True
        ends_with_turn = self.messages[-1]["role"] == "assistant"
        full = chat_ids(self.tok, self.messages, add_generation_prompt=not ends_with_turn)
        got = self.context
        if ends_with_turn and got and got[-1] == self.eos:
            full = full[: len(full) - full[::-1].index(self.eos)] if self.eos in full else full
        self.mismatch = full != got
        if self.mismatch and self.limits.check_template == "error":
            at = next((i for i, (a, b) in enumerate(zip(full, got)) if a != b), min(len(full), len(got)))
            raise TemplateMismatch(f"env {self.name}: prompt {self.prompt_index}: the ids differ from a full render of "
                                   f"the conversation at position {at} ({len(got)} ids, render {len(full)})")
        return not self.mismatch

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:  # noqa: BLE001 - the trajectory is complete; a failing close is the env's to fix
            pass

    def trajectory(self) -> Trajectory:
        t = Trajectory(self.prompt_index, self.group, list(self.prompt_ids), list(self.response_ids), list(self.loss_mask),
                       list(self.logprobs), self.finish_reason or "length", self.version if self.version is not None else -1)
        t.env_rewards = dict(self.rewards)
        return t
