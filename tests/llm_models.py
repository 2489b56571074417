"""Tiny random causal language models built offline (tokenizer trained here, weights random),
saved with `save_pretrained`, for tests that need a real Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a model server answers requests over http and grpc",
    "hello world, this is a tiny language model for tests",
    "tokens stream back one at a time to the client",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_llm(out: Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """A GPT-2- or Llama-style model + tokenizer with a chat template in `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    ids = {"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id,
           "pad_token_id": fast.pad_token_id}  # fmt: skip
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=256, n_embd=64,
                                           n_layer=2, n_head=4, **ids))  # fmt: skip
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=64,
                                             intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, **ids))  # fmt: skip
    model.save_pretrained(out, safe_serialization=True)
    return out
