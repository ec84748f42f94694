"""Chat templates on every data path, with tokenizers in the two real chat formats (Qwen2/ChatML and Llama-3),
made locally. Expected ids are computed independently: the template rendered to text, then tokenized without
the tokenizer's own special-token processing (the rendered text already holds BOS and the turn markers)."""
import json

import pytest
import torch

from rlhf_dist.config import ConfigError, DataConfig, load_config
from rlhf_dist.data.chat import reward_batch
from rlhf_dist.data.prompts import load_prompts
from rlhf_dist.data.stage_data import load_examples, make_batch
from rlhf_dist.config.stages import StageData

from tests.conftest import demo_config_dict

FAMILIES = ["qwen2", "llama3"]
# Where each format's prompt must start and how each assistant turn must end.
STARTS = {"qwen2": "<|im_start|>system\n", "llama3": "<|begin_of_text|><|start_header_id|>user"}
GEN_PROMPT = {"qwen2": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}
TURN_END = {"qwen2": "<|im_end|>", "llama3": "<|eot_id|>"}


@pytest.fixture(scope="module", params=FAMILIES)
def chat_model(request, tmp_path_factory):
    from rlhf_dist.data.tiny_chat import make_chat_model

    return request.param, str(make_chat_model(tmp_path_factory.mktemp("chat") / request.param, request.param))


@pytest.fixture(scope="module")
def tok(chat_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_model[1])


def rendered(tok, messages, gen: bool) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def user(text):
    return [{"role": "user", "content": text}]


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_prompts_are_rendered_as_a_user_turn(tmp_path, chat_model, tok):
    family = chat_model[0]
    path = write(tmp_path / "p.jsonl", [{"prompt": "the red cat"}, {"prompt": "a dog runs"}])
    ps = load_prompts(DataConfig(prompts=path, apply_chat_template=True, max_prompt_tokens=128), tok)
    for text, ids in zip(ps.texts, ps.ids):
        assert all(type(i) is int for i in ids)  # the transformers 5 BatchEncoding would give its keys
        assert ids == rendered(tok, user(text), gen=True)
        decoded = tok.decode(ids)
        assert decoded.startswith(STARTS[family]) and decoded.endswith(GEN_PROMPT[family])
        if tok.bos_token_id is not None:
            assert ids.count(tok.bos_token_id) == 1
    plain = load_prompts(DataConfig(prompts=path, max_prompt_tokens=128), tok)
    assert plain.ids[0] == tok("the red cat")["input_ids"] and plain.ids[0] != ps.ids[0]


def test_a_tokenizer_without_a_template_is_refused_naming_the_field(tmp_path, tok):
    path = write(tmp_path / "p.jsonl", [{"prompt": "the red cat"}])
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ConfigError, match=r"^data.apply_chat_template: .* has no chat template"):
            load_prompts(DataConfig(prompts=path, apply_chat_template=True), tok)
        with pytest.raises(ConfigError, match=r"^data.messages_key: .* has no chat template"):
            load_examples(path, "data.train", "sft", StageData(train=path, messages_key="messages"), tok)
    finally:
        tok.chat_template = saved


def test_sft_rows_prompt_is_the_template_and_response_ends_the_turn(tmp_path, chat_model, tok):
    family = chat_model[0]
    msgs = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "is happy"}]
    path = write(tmp_path / "d.jsonl", [{"messages": msgs}, {"prompt": "the cat", "response": "is happy"}])
    by_messages = load_examples(path, "data.train", "sft", StageData(train=path, messages_key="messages", skip_bad_lines=True), tok)
    by_fields = load_examples(path, "data.train", "sft", StageData(train=path, apply_chat_template=True, skip_bad_lines=True), tok)
    for ex in (by_messages, by_fields):
        assert len(ex) == 1 and ex.prompts[0] == rendered(tok, msgs[:1], gen=True)
        assert tok.convert_ids_to_tokens(ex.responses[0][-1]) == TURN_END[family] == tok.eos_token
        # Prompt then response is the whole conversation as the template writes it (up to its trailing newline).
        whole = tok.apply_chat_template(msgs, tokenize=False)
        assert whole.startswith(tok.decode(ex.prompts[0] + ex.responses[0]))


def test_dpo_pairs_share_the_chat_prompt(tmp_path, chat_model, tok):
    family = chat_model[0]
    path = write(tmp_path / "d.jsonl", [{"prompt": "the cat", "chosen": "is happy", "rejected": "is sad"}])
    ex = load_examples(path, "data.train", "dpo", StageData(train=path, apply_chat_template=True), tok)
    assert ex.prompts[0] == rendered(tok, user("the cat"), gen=True)
    for resp in (ex.chosen[0], ex.rejected[0]):
        assert tok.convert_ids_to_tokens(resp[-1]) == TURN_END[family]


def test_reward_model_trains_on_the_format_ppo_scores(tmp_path, chat_model, tok):
    """RM rows are the whole conversation, and the PPO reward role's batch for the same pairs is identical."""
    rows = [{"prompt": "the cat", "chosen": "is happy", "rejected": "is sad"},
            {"prompt": "a dog", "chosen": "runs fast and far", "rejected": "no"}]
    path = write(tmp_path / "d.jsonl", rows)
    ex = load_examples(path, "data.train", "rm", StageData(train=path, apply_chat_template=True), tok)
    convo = lambda r, k: user(r["prompt"]) + [{"role": "assistant", "content": r[k]}]  # noqa: E731
    for i, r in enumerate(rows):
        assert ex.chosen[i] == rendered(tok, convo(r, "chosen"), gen=False)
        assert ex.rejected[i] == rendered(tok, convo(r, "rejected"), gen=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train = make_batch(ex, [0, 1], "rm", pad)
    pairs = [(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")]
    scored = reward_batch(tok, pairs, chat=True)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(train[key].flatten(0, 1), scored[key])


def test_reward_worker_scores_the_conversation(tmp_path, chat_model, tok):
    """The PPO reward role (in process) against the model read directly on the rendered conversation."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_dist.data.tiny import make_tiny_reward_model
    from rlhf_dist.learner.frozen import RewardModelWorker
    from rlhf_dist.trainers.rl_roles import reward_spec

    rm = str(make_tiny_reward_model(tmp_path / "rm", chat_model[1]))
    d = demo_config_dict(chat_model[1], str(tmp_path / "p.jsonl"), str(tmp_path / "run"))
    d["data"]["apply_chat_template"] = True
    d["reward"]["model"] = rm
    d["placement"]["reward"] = {"pool": "main", "num_gpus": 1}
    worker = RewardModelWorker(reward_spec(load_config(None, base=d)), rank=0, world_size=1)
    worker.setup()
    pairs = [("the red cat", "is happy"), ("a dog runs fast and the sun is hot", "yes")]
    got = worker.score(pairs)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    # Reward-model training pads with EOS where the tokenizer has no pad token (Llama-3), so the score is read
    # at the last token that is not EOS there; the worker must read it at the same place.
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        for (p, r), g in zip(pairs, got):
            ids = rendered(tok, user(p) + [{"role": "assistant", "content": r}], gen=False)
            want = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
            assert g == pytest.approx(want, abs=1e-5)


def test_llm_judge_reads_its_prompt_as_a_user_turn(chat_model, tok):
    from rlhf_dist.config.stages import JudgeConfig
    from rlhf_dist.trainers.label import _round_robin

    class Recorder:  # stands in for the judge engines' group: records the prompts it is given
        def call_judge(self, method, ids, labels):
            self.ids = ids
            return [[-1.0, -2.0] for _ in ids]

    j = JudgeConfig(kind="llm", max_prompt_tokens=256)
    roles = Recorder()
    scores = _round_robin("the cat", ["is happy", "is sad"], j, tok, [[1], [2]], roles, True)
    assert len(scores) == 2 and len(roles.ids) == 2
    want = j.template.format(prompt="the cat", a="is happy", b="is sad")
    assert roles.ids[0] == rendered(tok, user(want), gen=True)


def test_ppo_refuses_a_reward_model_trained_on_the_other_format(tmp_path):
    from rlhf_dist.data.chat import check_reward_format

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "n": 4, "apply_chat_template": False}))
    check_reward_format(str(rm), False)
    with pytest.raises(ConfigError, match=r"^data.apply_chat_template=true: the reward model .* was trained with apply_chat_template=false"):
        check_reward_format(str(rm), True)
    (rm / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "n": 4}))  # written before the format was recorded
    check_reward_format(str(rm), True)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_models_embed_every_token_their_tokenizer_loads_with(tmp_path, arch):
    """As transformers loads them (a qwen2 checkpoint gets Qwen2Tokenizer, which adds <|endoftext|> if missing),
    every token id the tokenizer can produce has a row in the model's embedding."""
    from transformers import AutoConfig, AutoTokenizer

    from rlhf_dist.data.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / arch, arch=arch)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) <= AutoConfig.from_pretrained(path).vocab_size
    assert max(tok.all_special_ids) < AutoConfig.from_pretrained(path).vocab_size
