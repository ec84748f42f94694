"""Learning-rate schedules: the multiplier by hand, and the torch scheduler's state across a save/load."""
import math

import pytest
import torch

from rlhf_dist.config import LRSchedule, load_config
from rlhf_dist.learner.schedule import lr_multiplier, make_scheduler


def test_constant_with_warmup_by_hand():
    # warmup 4: the first step trains at 1/4, the fourth reaches 1, then it stays there
    got = [lr_multiplier(s, 10, "constant", warmup=4) for s in range(10)]
    assert got == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_linear_decays_to_min_ratio_at_the_last_step():
    # 5 steps, no warmup, min 0.2: 1, 0.8, 0.6, 0.4, 0.2
    got = [lr_multiplier(s, 5, "linear", min_ratio=0.2) for s in range(5)]
    assert got == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def test_cosine_with_warmup_by_hand():
    # warmup 2, then 5 decay steps over progress 0, 1/4, 1/2, 3/4, 1 with min 0.1
    got = [lr_multiplier(s, 7, "cosine", warmup=2, min_ratio=0.1) for s in range(7)]
    half_cos = [0.5 * (1 + math.cos(math.pi * p)) for p in (0, 0.25, 0.5, 0.75, 1.0)]
    assert got == pytest.approx([0.5, 1.0] + [0.1 + 0.9 * c for c in half_cos])
    assert got[-1] == pytest.approx(0.1)
    assert got[4] == pytest.approx(0.55)  # the middle of the decay is halfway between 1 and min_ratio


def test_steps_past_the_end_stay_at_min_ratio():
    assert lr_multiplier(50, 10, "cosine", min_ratio=0.3) == pytest.approx(0.3)
    assert lr_multiplier(50, 10, "linear") == 0.0


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'exp'"):
        lr_multiplier(0, 10, "exp")


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_scheduler_counts_warmup_in_ppo_steps_and_resumes_from_its_state():
    schedule = LRSchedule(kind="cosine", warmup_steps=1, min_ratio=0.1)

    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
        # 3 PPO steps of 2 optimizer steps: warmup is the first 2 optimizer steps
        return opt, make_scheduler(opt, schedule, total_steps=3, steps_per_unit=2)

    opt, sched = fresh()
    full = _lrs(sched, opt, 6)
    assert full[:2] == pytest.approx([0.25, 0.5])
    assert full[-1] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(full[1:], full[2:]))  # decays after warmup

    opt, sched = fresh()
    first = _lrs(sched, opt, 3)
    state = sched.state_dict()
    opt2, sched2 = fresh()
    sched2.load_state_dict(state)
    # LambdaLR recomputes the rate on load only at the next step; the optimizer's own state holds it meanwhile
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]
    assert first + _lrs(sched2, opt2, 3) == pytest.approx(full)


def test_schedule_config_fields(tmp_path):
    from tests.conftest import demo_config_dict

    d = demo_config_dict(str(tmp_path / "m"), "p.jsonl", str(tmp_path / "o"))
    cfg = load_config(None, ["ppo.lr_schedule={kind: cosine, warmup_steps: 3, min_ratio: 0.1}", "run.steps=4"], base=d)
    assert cfg.ppo.lr_schedule == LRSchedule(kind="cosine", warmup_steps=3, min_ratio=0.1)
    from rlhf_dist.config import ConfigError

    with pytest.raises(ConfigError, match="ppo.lr_schedule.kind"):
        load_config(None, ["ppo.lr_schedule.kind=exponential"], base=d)
    with pytest.raises(ConfigError, match="ppo.lr_schedule.min_ratio"):
        load_config(None, ["ppo.lr_schedule.min_ratio=2"], base=d)


def test_schedule_length_can_differ_from_the_run():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fixed = make_scheduler(opt, LRSchedule(kind="linear", total_steps=4), total_steps=2, steps_per_unit=1)
    assert fixed.lr_lambdas[0].total == 4  # total_steps in the config wins over the run's length
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert make_scheduler(opt, LRSchedule(kind="linear"), total_steps=2, steps_per_unit=3).lr_lambdas[0].total == 6
