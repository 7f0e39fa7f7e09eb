"""Qwen3-VL text decoder (a Qwen3 LM): the Qwen2.5-VL decoder (`qwen2_5_vl/text.py`) with Qwen3's
attention and rotary. Token embedding, GQA decoder layers with per-head q/k RMSNorm and
interleaved M-RoPE, DeepStack injection, final RMSNorm.

Differences from the Qwen2.5-VL decoder, all settings of that module: explicit `head_dim` (a config
field, not hidden / heads), no q/k/v bias, `q_norm` / `k_norm` (RMSNorm over head_dim, applied per
head before the rotary), interleaved M-RoPE sections, and DeepStack: the model passes
`deepstack=` features, and after decoder layer i (0-based, i < len(deepstack)) the i-th is added
to the hidden states of the image tokens. Parameter names are those of the Qwen2.5-VL decoder
(`embed_tokens/embedding`, `layers_i/self_attn/{q,k,v,o}_proj`, `layers_i/mlp/*`,
`input_layernorm`, `post_attention_layernorm`, `norm`) plus `self_attn/{q_norm,k_norm}/weight`,
so `qwen2_5_vl.vocab_extension.resize_vocabulary` and the logical-axis sharding rules apply as is.

Hidden states follow HF's `output_hidden_states` exactly (transformers records the *input* of
layer 0 and the *output* of every decoder layer with forward hooks, then replaces the last entry
with the final-normed state):

    hidden_states[0]      = token embeddings (image features scattered in), before any layer;
    hidden_states[k]      = output of decoder layer k-1, *before* the DeepStack addition that
                            follows it (HF adds DeepStack to a copy after the hook has fired);
                            the next layer's input is this plus DeepStack;
    hidden_states[L]      = norm(output of the last layer (+ its DeepStack when L <= levels)).

`num_layers=k < L` returns the first k + 1 entries (the last one un-normed), each equal to the
full run's entry.
"""

from __future__ import annotations

from typing import Callable

from roboalign_jax.models.qwen2_5_vl import text
from roboalign_jax.models.qwen3_vl import rope
from roboalign_jax.models.qwen3_vl.config import TextConfig


class TextDecoder(text.TextDecoder):
  """Called as the Qwen2.5-VL decoder, with `deepstack=` (see the module docstring)."""
  cfg: TextConfig
  qkv_bias: bool = False
  qk_norm: bool = True
  rope_cos_sin: Callable = rope.interleaved_mrope_cos_sin
