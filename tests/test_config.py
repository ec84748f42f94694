"""Config: validation names the field; derived batch arithmetic; dotted overrides."""
import pytest

from rlhf_dist.config import ConfigError, derive, load_config

from tests.conftest import demo_config_dict


def base(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    return demo_config_dict(str(tmp_path / "m"), str(prompts), str(tmp_path / "run"))


def test_derived_values(tmp_path):
    cfg = load_config(None, ["ppo.epochs=2"], base=base(tmp_path))
    d = derive(cfg)
    assert d.samples_per_step == 16
    assert d.grad_accum_policy == 1  # 8 / (4 x 2 ranks)
    assert d.optimizer_steps_per_step == 4  # 2 epochs x 16 / 8
    assert d.gpus_per_pool == {"main": 2}
    assert d.roles_per_pool["main"] == ["policy", "critic", "reference", "rollout"]
    assert "samples per step" in d.table()


def test_yaml_and_overrides(tmp_path):
    import yaml

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(base(tmp_path)))
    cfg = load_config(f, ["run.steps=7", "ppo.kl_estimator=k3", "placement.policy.zero_stage=1"])
    assert (cfg.run.steps, cfg.ppo.kl_estimator, cfg.placement.policy.zero_stage) == (7, "k3", 1)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["ppo.mini_batch_sise=4"], "ppo.mini_batch_sise: unknown key"),
        (["ppo.mini_batch_size=6"], "ppo.mini_batch_size: 6 does not divide the samples per step"),
        (["ppo.micro_batch_size=8"], "ppo.mini_batch_size: 8 is not a multiple of micro_batch_size x policy ranks"),
        (["run.steps=zero"], "run.steps: Input should be a valid integer"),
        (["placement.policy.zero_stage=4"], "placement.policy.zero_stage"),
        (["placement.policy.pool=gpu"], "placement.policy.pool: 'gpu' is not one of placement.pools"),
        (["placement.rollout.num_engines=3"], "placement.rollout: needs 3 GPUs but pool 'main' has 2"),
        (["reward.functions=[]"], "set reward.model and/or reward.functions"),
        (["reward.model=/nowhere"], "placement.reward: reward.model is set"),
        (["ppo.kl_estimator=k7"], "ppo.kl_estimator"),
        (["rollout.temperature=0"], "rollout.temperature"),
        (["placement.rollout.tensor_parallel_size=4", "placement.rollout.num_engines=1"], "placement.rollout: needs 4 GPUs"),
    ],
)
def test_bad_config_names_the_field(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, base=base(tmp_path))
    assert expected in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    import yaml

    from rlhf_dist.commands.cli import main

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(base(tmp_path)))
    assert main(["train", str(f), "ppo.mini_batch_size=5"]) == 2
    err = capsys.readouterr().err
    assert "ppo.mini_batch_size: 5 does not divide" in err and "Traceback" not in err
