"""Demonstration and preference data: every bad row is named by file and line (or parquet row) before any
actor starts; token layouts match what the PPO roles read."""
import json
from collections.abc import Mapping

import pytest
import torch

from rlhf_dist.config import ConfigError
from rlhf_dist.data.records import DataError
from rlhf_dist.data.stage_data import load_examples, make_batch, train_eval_split
from rlhf_dist.config.stages import StageData, load_stage_config


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD_SFT = {"prompt": "the cat", "response": " is happy"}
GOOD_PAIR = {"prompt": "the cat", "chosen": " is happy", "rejected": " is sad"}

BAD_ROWS = [
    ("sft", "{not json", "malformed JSON"),
    ("sft", {"prompt": "the cat"}, "missing field 'response' (data.response_key)"),
    ("sft", {"prompt": "the cat", "response": "   "}, "field 'response' must be a non-empty string"),
    ("sft", {"prompt": "the cat", "response": " is" * 40}, "more than data.max_length=32"),
    ("sft", [1, 2], "each line must be a JSON object"),
    ("rm", {"prompt": "the cat", "chosen": " is happy"}, "missing field 'rejected' (data.rejected_key)"),
    ("rm", {"prompt": "the cat", "chosen": " is", "rejected": " is"}, "chosen and rejected are the same text"),
    ("dpo", {"prompt": "", "chosen": " a", "rejected": " b"}, "field 'prompt' must be a non-empty string"),
]


@pytest.mark.parametrize("kind,bad,message", BAD_ROWS)
def test_bad_row_named_by_file_and_line(tmp_path, tok, kind, bad, message):
    good = GOOD_SFT if kind == "sft" else GOOD_PAIR
    path = write(tmp_path / "d.jsonl", [good, good, bad, good])
    cfg = StageData(train=path, max_length=32)
    with pytest.raises(DataError) as e:
        load_examples(path, "data.train", kind, cfg, tok)
    assert f"{path}:3: " in str(e.value) and message in str(e.value)
    # With skip_bad_lines the row is skipped and listed, never silently.
    ex = load_examples(path, "data.train", kind, StageData(train=path, max_length=32, skip_bad_lines=True), tok)
    assert len(ex) == 3 and len(ex.skipped) == 1 and ex.skipped[0].startswith(f"{path}:3: ")


def test_margin_must_be_a_number(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [{**GOOD_PAIR, "m": 1.5}, {**GOOD_PAIR, "m": "big"}])
    with pytest.raises(DataError, match=r":2: field 'm' \(data.margin_key\) must be a number"):
        load_examples(path, "data.train", "rm", StageData(train=path, margin_key="m"), tok)


def test_missing_file_and_unknown_format(tmp_path, tok):
    with pytest.raises(DataError, match=r"data.train: .*nope.jsonl' does not exist"):
        load_examples(str(tmp_path / "nope.jsonl"), "data.train", "sft", StageData(train="x"), tok)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"neither .jsonl nor .parquet"):
        load_examples(str(tmp_path / "d.csv"), "data.train", "sft", StageData(train="x"), tok)


def test_parquet_through_datasets_names_the_row(tmp_path, tok):
    from datasets import Dataset

    path = str(tmp_path / "d.parquet")
    Dataset.from_list([GOOD_PAIR, {**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]}]).to_parquet(path)
    with pytest.raises(DataError, match=r"d.parquet row 2: chosen and rejected are the same text"):
        load_examples(path, "data.train", "dpo", StageData(train=path), tok)
    Dataset.from_list([GOOD_PAIR] * 3).to_parquet(path)
    assert len(load_examples(path, "data.train", "dpo", StageData(train=path), tok)) == 3


def test_sft_tokens_prompt_then_response_with_eos(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [GOOD_SFT])
    ex = load_examples(path, "data.train", "sft", StageData(train=path), tok)
    assert ex.prompts[0] == tok("the cat")["input_ids"]
    assert ex.responses[0] == tok(" is happy", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_chat_messages_use_the_template_and_train_on_the_last_turn(tmp_path, tok):
    msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "is happy"}]
    path = write(tmp_path / "d.jsonl", [{"messages": msgs}, {"messages": msgs[:1] + [{"role": "user", "content": "x"}]}])
    cfg = StageData(train=path, messages_key="messages", skip_bad_lines=True)
    ex = load_examples(path, "data.train", "sft", cfg, tok)
    want = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, Mapping) else want  # transformers 5: a BatchEncoding
    assert ex.prompts[0] == list(want)
    assert tok.decode(ex.responses[0], skip_special_tokens=True) == "is happy"
    assert "non-empty assistant turn" in ex.skipped[0]


def test_reward_model_text_is_tokenized_as_the_ppo_scorer_does(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [GOOD_PAIR, {"prompt": "a dog", "chosen": " runs fast and far", "rejected": " no"}])
    ex = load_examples(path, "data.train", "rm", StageData(train=path), tok)
    batch = make_batch(ex, [0, 1], "rm", tok.pad_token_id)
    assert batch["input_ids"].shape[:2] == (2, 2)
    # The PPO reward role calls the tokenizer on prompt + response texts with right padding.
    tok.padding_side = "right"
    enc = tok(["the cat is happy", "the cat is sad", "a dog runs fast and far", "a dog no"], padding=True, return_tensors="pt")
    flat = batch["input_ids"].flatten(0, 1)
    L = enc["input_ids"].shape[1]
    assert torch.equal(flat[:, :L], enc["input_ids"][[0, 1, 2, 3]])
    assert torch.equal(batch["attention_mask"].flatten(0, 1)[:, :L], enc["attention_mask"])


def test_held_out_split_is_seeded_and_disjoint(tmp_path, tok):
    rows = [{"prompt": f"the cat {i}", "response": " is"} for i in range(50)]
    path = write(tmp_path / "d.jsonl", rows)
    cfg = StageData(train=path, eval_fraction=0.2)
    a_train, a_eval = train_eval_split(cfg, "sft", tok, seed=3)
    b_train, b_eval = train_eval_split(cfg, "sft", tok, seed=3)
    assert len(a_eval) == 10 and len(a_train) == 40
    assert a_eval.prompts == b_eval.prompts
    assert not {tuple(p) for p in a_eval.prompts} & {tuple(p) for p in a_train.prompts}


STAGE_BASE = {
    "model": {"path": "m"},
    "data": {"train": "d.jsonl"},
    "placement": {"pools": {"main": {"nodes": 1, "gpus_per_node": 2}}, "learner": {"pool": "main", "num_gpus": 2}},
}


@pytest.mark.parametrize(
    "kind,overrides,message",
    [
        ("sft", ["train.batch_size=12", "train.micro_batch_size=4"], "train.batch_size: 12 is not a multiple of micro_batch_size x learner ranks (4 x 2 = 8)"),
        ("sft", ["placement.learner.num_gpus=3"], "placement.learner: needs 3 GPUs but pool 'main' has 2"),
        ("sft", ["placement.learner.pool=other"], "placement.learner.pool: 'other' is not one of placement.pools"),
        ("sft", ["train.lr=0"], "train.lr: Input should be greater than 0"),
        ("rm", ["dpo.beta=0.1"], "dpo: unknown key"),
        ("dpo", ["dpo.loss=hinge"], "dpo.loss: Input should be 'sigmoid' or 'ipo'"),
        ("sft", ["data.eval_fraction=1"], "data.eval_fraction: Input should be less than 1"),
    ],
)
def test_stage_config_errors_name_the_field(kind, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_stage_config(kind, None, overrides, base=json.loads(json.dumps(STAGE_BASE)))
    assert message in str(e.value)


LABEL_BASE = {
    "model": {"policy": "m"},
    "data": {"prompts": "p.jsonl"},
    "judge": {"kind": "function", "function": {"name": "a.b:c"}},
    "placement": {"pools": {"main": {"nodes": 1, "gpus_per_node": 1}}, "rollout": {"pool": "main"}},
}


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rollout.n_samples_per_prompt=1"], "labelling compares samples of one prompt; needs at least 2"),
        (["judge.kind=reward_model"], "judge.model: a reward_model judge needs the path"),
        (["judge.kind=llm"], "placement.judge: a llm judge runs on GPUs of its own role"),
        (["judge.kind=llm", "judge.template=no fields", "placement.judge.pool=main"], "judge.template: must contain {prompt}"),
    ],
)
def test_label_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_stage_config("label", None, overrides, base=json.loads(json.dumps(LABEL_BASE)))
    assert message in str(e.value)


def test_pipeline_overrides_name_their_stage():
    from rlhf_dist.trainers.pipeline import stage_overrides

    assert stage_overrides(["ppo:run.steps=3", "sft:train.epochs=1"]) == {"sft": ["train.epochs=1"], "rm": [], "ppo": ["run.steps=3"]}
    with pytest.raises(ConfigError, match="must look like STAGE:dotted.key=value"):
        stage_overrides(["run.steps=3"])


@pytest.mark.parametrize(
    "kind,overrides,message",
    [
        ("sft", ["train.micro_batch_tokens=100", "data.max_length=128"],
         "train.micro_batch_tokens: 100 is smaller than the longest sample (128 tokens: data.max_length); raise it to at least 128"),
        ("dpo", ["train.micro_batch_tokens=200", "data.max_length=128", "data.packing=true"],
         "train.micro_batch_tokens: 200 is smaller than the longest sample (256 tokens: a pair, 2 x data.max_length=128)"),
        ("rm", ["train.micro_batch_tokens=0"], "train.micro_batch_tokens: Input should be greater than or equal to 1"),
    ],
)
def test_token_budget_config_errors(kind, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_stage_config(kind, None, overrides, base=json.loads(json.dumps(STAGE_BASE)))
    assert message in str(e.value)


def test_ppo_prompts_read_parquet_too(tmp_path, tok):
    from datasets import Dataset

    from rlhf_dist.config import DataConfig
    from rlhf_dist.data.prompts import load_prompts

    path = str(tmp_path / "p.parquet")
    Dataset.from_list([{"prompt": "the cat"}, {"prompt": "a dog"}]).to_parquet(path)
    got = load_prompts(DataConfig(prompts=path), tok)
    assert got.texts == ["the cat", "a dog"] and got.ids[0] == tok("the cat")["input_ids"]
    Dataset.from_list([{"prompt": "the cat"}, {"prompt": ""}]).to_parquet(path)
    with pytest.raises(DataError, match=r"p.parquet row 2: field 'prompt' must be a non-empty string"):
        load_prompts(DataConfig(prompts=path), tok)
