"""The deepseek-tiny preset: the real DeepSeek-V3 architecture at a size that trains on 2 CPU cores.

MLA attention (low-rank q and kv projections with decoupled RoPE heads), one dense layer then MoE
layers with routed + shared experts and top-k routing, exactly as ``DeepseekV3ForCausalLM`` in
transformers implements them; only the widths are small.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TinyPreset:
    vocab_size: int = 8000
    hidden_size: int = 256
    intermediate_size: int = 512
    moe_intermediate_size: int = 128
    num_hidden_layers: int = 4
    first_k_dense_replace: int = 1
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 1
    topk_group: int = 1
    q_lora_rank: int = 64
    kv_lora_rank: int = 32
    qk_rope_head_dim: int = 16
    qk_nope_head_dim: int = 32
    v_head_dim: int = 32
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0


def tiny_config(preset: TinyPreset | None = None, **overrides):
    """A ``DeepseekV3Config`` for deepseek-tiny (``overrides`` replace preset fields)."""
    from transformers import DeepseekV3Config

    fields = asdict(preset or TinyPreset())
    fields.update(overrides)
    return DeepseekV3Config(
        **fields,
        # The routing vLLM expects for DeepSeek-V3 (sigmoid scores, aux-loss-free top-k).
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        tie_word_embeddings=False,
    )


def build_untrained(tokenizer, seed: int = 0, **overrides):
    """A randomly initialised deepseek-tiny sized to ``tokenizer`` (used by tests and by pre-training)."""
    import torch
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    model = DeepseekV3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
