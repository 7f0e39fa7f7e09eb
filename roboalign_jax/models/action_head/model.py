"""The GR00T N1.5 flow-matching action head as one Flax Linen module, `FlowMatchingHead`.

Data flow (shapes for the released config; B batch, T VL tokens, H = action_horizon 16)::

    vl_features [B, T, F]  --eagle_linear (only if F != 2048)--> [B, T, 2048]
                           --vlln (affine LN)--> --vl_self_attention (4 blocks)--> vl [B, T, 2048]
    state [B, 1, 64]       --state_encoder (per embodiment)--> [B, 1, 1536]
    x_t [B, H, 32], bucket --action_encoder (per embodiment, + [sin|cos] of bucket)--> + pos --> [B, H, 1536]
    [state, future x 32, action x H] --DiT (16 blocks, cross-attends vl, AdaLN on temb(bucket))--> [B, 49, 1024]
    last H tokens          --action_decoder (per embodiment)--> velocity [B, H, 32]

Methods, each usable through `apply(..., method=...)`: `encode_vl`, `encode_state`, `cross_kv` (done
once per sample), `velocity` (once per Euler step), and `__call__` = the first two and `velocity`
(training). GR00T passes no
padding mask to the VL self-attention or the cross-attention; `vl_mask=None` reproduces that,
a bool `vl_mask` [B, T] (True = real token) removes padded tokens from the keys — our extension
for left-padded prompts.

Dropout (rate `dit_dropout` / `vl_dropout`, four sites per block) is active only with
`deterministic=False` and an rng named "dropout".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from roboalign_jax.models.action_head.config import ActionHeadConfig
from roboalign_jax.models.action_head.layers import (Dense, EmbodimentLinear, EmbodimentMLP, LayerNorm,
                                                     TimestepEncoder, TransformerBlock, action_timestep_features,
                                                     layer_norm)


class VLSelfAttention(nn.Module):
  """GR00T's SelfAttentionTransformer over the VL tokens: blocks with affine LayerNorms, no positions."""
  config: ActionHeadConfig

  @nn.compact
  def __call__(self, x, vl_mask=None, deterministic: bool = True):
    c = self.config
    for i in range(c.vl_num_layers):
      x = TransformerBlock(c.backbone_embedding_dim, c.vl_num_heads, c.vl_head_dim, c.vl_dropout, c.vl_final_dropout,
                           ada_norm=False, dtype=c.dtype, param_dtype=c.param_dtype, name=f"transformer_blocks_{i}")(
                               x, key_mask=vl_mask, deterministic=deterministic)
    return x


class DiT(nn.Module):
  """GR00T's DiT: timestep embedding of the bucket, blocks (cross-attention to the VL tokens in even
  blocks, self-attention in odd ones when interleaved), then LN(eps 1e-6) * (1 + scale) + shift
  with (shift, scale) = proj_out_1(SiLU(temb)), then proj_out_2.

  x [B, L, dit_width], vl [B, T, backbone_embedding_dim], bucket int [B] -> [B, L, hidden_size].
  `cross_kv(vl)` projects the VL tokens for every cross-attention block once; passing the result
  as `kv` skips those projections (the sampler reuses them across Euler steps: they do not
  depend on the step).
  """
  config: ActionHeadConfig

  def setup(self):
    c = self.config
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
    self.timestep_encoder = TimestepEncoder(c.dit_width, **kw)
    self.transformer_blocks = [
        TransformerBlock(c.dit_width, c.dit_num_heads, c.dit_head_dim, c.dit_dropout, c.dit_final_dropout,
                         ada_norm=True, **kw) for _ in range(c.dit_num_layers)]
    self.proj_out_1 = Dense(2 * c.dit_width, ("embed", "mlp"), **kw)
    self.proj_out_2 = Dense(c.hidden_size, ("embed", "mlp"), **kw)

  def _cross(self, i: int) -> bool:
    return not (self.config.dit_interleave_self_attention and i % 2 == 1)

  def cross_kv(self, vl):
    """Per block: (keys, values) of the VL tokens for cross-attention blocks, None for the others."""
    return [blk.kv(vl) if self._cross(i) else None for i, blk in enumerate(self.transformer_blocks)]

  def __call__(self, x, vl, bucket, vl_mask=None, deterministic: bool = True, kv=None):
    c = self.config
    temb = nn.with_logical_constraint(self.timestep_encoder(bucket), ("batch", "embed"))
    for i, blk in enumerate(self.transformer_blocks):
      cross = self._cross(i)
      x = blk(x, temb, vl if cross else None, vl_mask if cross else None, deterministic=deterministic,
              kv=kv[i] if kv is not None else None)
    mod = nn.with_logical_constraint(self.proj_out_1(nn.silu(temb)), ("batch", "embed"))
    shift, scale = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
    x = (layer_norm(x, 1e-6) * (1 + scale[:, None]) + shift[:, None]).astype(c.dtype)
    return self.proj_out_2(x)


class ActionEncoder(nn.Module):
  """GR00T's MultiEmbodimentActionEncoder: W3(swish(W2([W1(x_t) | sincos(bucket)]))), per embodiment.

  actions [B, H, action_dim], bucket int [B], embodiment_id int [B] -> [B, H, input_embedding_dim].
  """
  config: ActionHeadConfig

  @nn.compact
  def __call__(self, actions, bucket, embodiment_id):
    c = self.config
    w = c.input_embedding_dim
    kw = dict(num_embodiments=c.max_num_embodiments, dtype=c.dtype, param_dtype=c.param_dtype, init_std=c.embodiment_init_std)
    b, h, _ = actions.shape
    a = EmbodimentLinear(w, ("io", "mlp"), name="W1", **kw)(actions, embodiment_id)
    tau = action_timestep_features(jnp.broadcast_to(bucket[:, None], (b, h)), w).astype(a.dtype)
    x = nn.silu(EmbodimentLinear(w, ("mlp", "embed"), name="W2", **kw)(jnp.concatenate([a, tau], -1), embodiment_id))
    return EmbodimentLinear(w, ("embed", "mlp"), name="W3", **kw)(x, embodiment_id)


class FlowMatchingHead(nn.Module):
  """GR00T N1.5's FlowmatchingActionHead (see the module docstring for the data flow)."""
  config: ActionHeadConfig

  def setup(self):
    c = self.config
    kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
    if c.has_projection:
      self.eagle_linear = Dense(c.backbone_embedding_dim, ("mlp", "embed"), **kw)
    if c.use_vlln:
      self.vlln = LayerNorm(1e-5, **kw)
      self.vl_self_attention = VLSelfAttention(c)
    self.model = DiT(c)
    e, std = c.max_num_embodiments, c.embodiment_init_std
    self.state_encoder = EmbodimentMLP(c.hidden_size, c.input_embedding_dim, ("io", "mlp", "embed"), e, **kw,
                                       init_std=std)
    self.action_encoder = ActionEncoder(c)
    self.action_decoder = EmbodimentMLP(c.hidden_size, c.action_dim, ("embed", "mlp", "io"), e, **kw, init_std=std)
    emb_init = nn.initializers.normal(0.02)
    self.future_tokens = self.param("future_tokens", nn.with_logical_partitioning(emb_init, ("length", "embed")),
                                    (c.num_target_vision_tokens, c.input_embedding_dim), c.param_dtype)
    if c.add_pos_embed:
      self.position_embedding = self.param(
          "position_embedding", nn.with_logical_partitioning(emb_init, ("length", "embed")),
          (c.max_seq_len, c.input_embedding_dim), c.param_dtype)

  def encode_vl(self, vl_features, vl_mask=None, deterministic: bool = True):
    """vl_features [B, T, feature_dim] -> VL tokens [B, T, backbone_embedding_dim]."""
    c = self.config
    x = vl_features.astype(c.dtype)
    if c.has_projection:
      x = self.eagle_linear(x)
    if c.use_vlln:
      x = self.vl_self_attention(self.vlln(x), vl_mask, deterministic)
    return x

  def encode_state(self, state, embodiment_id):
    """state [B, S, max_state_dim] -> state tokens [B, S, input_embedding_dim]."""
    return self.state_encoder(state.astype(self.config.dtype), embodiment_id)

  def cross_kv(self, vl_tokens):
    """The DiT's cross-attention keys/values of `encode_vl`'s tokens (see `DiT.cross_kv`)."""
    return self.model.cross_kv(vl_tokens)

  def velocity(self, vl_tokens, state_tokens, x_t, bucket, embodiment_id, vl_mask=None, deterministic: bool = True,
               kv=None):
    """Predicted velocity [B, H, action_dim] for x_t [B, H, action_dim] at bucket int [B]; `kv` =
    `cross_kv(vl_tokens)` when already computed."""
    c = self.config
    b, h, _ = x_t.shape
    actions = self.action_encoder(x_t.astype(c.dtype), bucket, embodiment_id)
    if c.add_pos_embed:
      actions = actions + self.position_embedding[:h].astype(c.dtype)[None]
    future = jnp.broadcast_to(self.future_tokens.astype(c.dtype)[None], (b, *self.future_tokens.shape))
    tokens = jnp.concatenate([state_tokens.astype(c.dtype), future, actions], axis=1)
    tokens = nn.with_logical_constraint(tokens, ("batch", "length", "embed"))
    out = self.model(tokens, vl_tokens, bucket, vl_mask, deterministic, kv=kv)
    # The decoder is per token, so decoding only the action positions equals GR00T's decode-then-slice.
    return self.action_decoder(out[:, -h:], embodiment_id)

  def __call__(self, vl_features, state, x_t, bucket, embodiment_id, vl_mask=None, deterministic: bool = True):
    """Velocity [B, H, action_dim] from raw features (training forward)."""
    check_inputs(self.config, vl_features, state, embodiment_id, actions=x_t, vl_mask=vl_mask)
    vl = self.encode_vl(vl_features, vl_mask, deterministic)
    return self.velocity(vl, self.encode_state(state, embodiment_id), x_t, bucket, embodiment_id, vl_mask,
                         deterministic)


# ---- inputs -----------------------------------------------------------------------------------------
def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_inputs(config: ActionHeadConfig, vl_features, state, embodiment_id, actions=None, action_mask=None,
                 vl_mask=None, noise=None) -> None:
  """Raises ValueError naming the input whose shape (or, when concrete, value) is not what the
  head expects. Shapes are static, so this also runs while tracing under jit."""
  c = config
  if getattr(vl_features, "ndim", None) != 3 or vl_features.shape[-1] != c.feature_dim:
    hint = ("" if c.has_projection else
            " (set backbone_feature_dim in the config to add a projection from another backbone width)")
    raise ValueError(f"vl_features: expected float [B, T, {c.feature_dim}], got shape "
                     f"{tuple(getattr(vl_features, 'shape', ()))}{hint}")
  b, t = vl_features.shape[:2]
  if getattr(state, "ndim", None) != 3 or state.shape[0] != b or state.shape[-1] != c.max_state_dim:
    raise ValueError(f"state: expected float [B={b}, S, max_state_dim={c.max_state_dim}] (usually S = 1; pad "
                     f"the state with zeros to max_state_dim), got shape {tuple(getattr(state, 'shape', ()))}")
  if getattr(embodiment_id, "ndim", None) != 1 or embodiment_id.shape[0] != b:
    raise ValueError(f"embodiment_id: expected int [B={b}], got shape {tuple(getattr(embodiment_id, 'shape', ()))}")
  if not jnp.issubdtype(embodiment_id.dtype, jnp.integer):
    raise ValueError(f"embodiment_id: expected an integer array, got dtype {embodiment_id.dtype}")
  if _concrete(embodiment_id):
    ids = np.asarray(embodiment_id)
    bad = ids[(ids < 0) | (ids >= c.max_num_embodiments)]
    if bad.size:
      raise ValueError(f"embodiment_id: values {sorted(set(bad.tolist()))} outside [0, {c.max_num_embodiments}) "
                       f"(max_num_embodiments = {c.max_num_embodiments})")
  for name, x in (("actions", actions), ("action_mask", action_mask), ("noise", noise)):
    want = (b, c.action_horizon, c.action_dim)
    if x is not None and tuple(x.shape) != want:
      raise ValueError(f"{name}: expected [B, action_horizon, action_dim] = {list(want)}, got {tuple(x.shape)} "
                       "(pad actions to action_dim and mask the padding)")
  if vl_mask is not None and tuple(vl_mask.shape) != (b, t):
    raise ValueError(f"vl_mask: expected bool [B, T] = {[b, t]} like vl_features, got {tuple(vl_mask.shape)}")
