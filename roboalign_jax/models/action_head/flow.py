"""Flow matching as GR00T N1.5 trains and samples its head.

Training: t = (s - u) / s with u ~ Beta(alpha, beta) (1.5, 1, s = 0.999: t near 1, i.e. near
the data, is drawn most often); x_t = (1 - t) * noise + t * action; the head predicts the
velocity action - noise from the timestep bucket floor(t * buckets) (continuous t only
interpolates); loss = sum(MSE * action_mask) / sum(action_mask).
Inference: Euler from noise at t = 0 to 1 in `num_inference_timesteps` steps of dt = 1 / N,
step i at bucket int(i / N * buckets) (0, 250, 500, 750 for N = 4).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from roboalign_jax.models.action_head.config import ActionHeadConfig
from roboalign_jax.models.action_head.model import FlowMatchingHead, check_inputs


def sample_time(rng: jax.Array, batch_size: int, config: ActionHeadConfig) -> jax.Array:
  """t f32 [batch_size] = (s - u) / s, u ~ Beta(noise_beta_alpha, noise_beta_beta).

  Lies in ((s - 1) / s, 1): GR00T's formula reaches slightly below 0 when u > s (probability
  1 - s^alpha, 0.15% for N1.5); the bucket of such a t is 0, as in GR00T (truncation to int).
  """
  u = jax.random.beta(rng, config.noise_beta_alpha, config.noise_beta_beta, (batch_size,), jnp.float32)
  return (config.noise_s - u) / config.noise_s


def timestep_bucket(t: jax.Array, config: ActionHeadConfig) -> jax.Array:
  """int32 bucket of t [B]: t * buckets truncated toward zero (torch's `.long()`)."""
  return (t.astype(jnp.float32) * config.num_timestep_buckets).astype(jnp.int32)


def interpolate(noise: jax.Array, actions: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x_t, velocity target) for noise, actions [B, H, D] and t [B]."""
  t = t[:, None, None]
  return (1 - t) * noise + t * actions, actions - noise


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """sum((pred - target)^2 * mask) / sum(mask), all [B, H, D]."""
  mask = mask.astype(jnp.float32)
  err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.sum(err * mask) / jnp.sum(mask)


def euler_buckets(config: ActionHeadConfig) -> list[int]:
  """Bucket of each Euler step: int(i / N * buckets), in Python floats exactly as GR00T computes it."""
  n = config.num_inference_timesteps
  return [int(i / float(n) * config.num_timestep_buckets) for i in range(n)]


def flow_matching_loss(head: FlowMatchingHead, params, vl_features, state, actions, action_mask, embodiment_id, *,
                       rng: jax.Array | None, deterministic: bool = False, noise=None, t=None, vl_mask=None):
  """GR00T's training loss for one batch -> (loss, metrics).

  vl_features f32 [B, T, feature_dim]; state [B, 1, max_state_dim]; actions, action_mask
  [B, action_horizon, action_dim] (mask 0 on padded dims/steps); embodiment_id int [B].
  `noise` [B, H, D] and `t` [B] default to draws from `rng` (noise, t and dropout use
  independent sub-keys); dropout runs unless `deterministic`. Pure: jit it inside a train step.
  metrics: loss, t_mean.
  """
  c = head.config
  check_inputs(c, vl_features, state, embodiment_id, actions=actions, action_mask=action_mask, vl_mask=vl_mask,
               noise=noise)
  needs_rng = noise is None or t is None or not deterministic
  if rng is None and needs_rng:
    raise ValueError("flow_matching_loss: rng is required unless noise, t are given and deterministic=True")
  if rng is None:
    rng = jax.random.key(0)  # unused: nothing is drawn
  k_noise, k_time, k_dropout = jax.random.split(rng, 3)
  actions = jnp.asarray(actions, jnp.float32)
  b = actions.shape[0]
  if noise is None:
    noise = jax.random.normal(k_noise, actions.shape, jnp.float32)
  if t is None:
    t = sample_time(k_time, b, c)
  t = jnp.asarray(t, jnp.float32)
  if t.shape != (b,):
    raise ValueError(f"t: expected f32 [B={b}], got shape {tuple(t.shape)}")
  x_t, target = interpolate(jnp.asarray(noise, jnp.float32), actions, t)
  pred = head.apply({"params": params}, vl_features, state, x_t, timestep_bucket(t, c), embodiment_id,
                    vl_mask=vl_mask, deterministic=deterministic, rngs={"dropout": k_dropout})
  loss = masked_mse(pred, target, action_mask)
  return loss, {"loss": loss, "t_mean": jnp.mean(t)}


def sample(head: FlowMatchingHead, params, vl_features, state, embodiment_id, noise=None, rng=None, *, vl_mask=None):
  """Actions f32 [B, action_horizon, action_dim] by Euler integration of the predicted velocity.

  vl_features [B, T, feature_dim] (backbone hidden states, before vlln); state [B, 1,
  max_state_dim]; embodiment_id int [B]; noise f32 [B, H, D] (the start, or drawn from `rng`);
  vl_mask bool [B, T] or None (GR00T: None). Dropout is off. Compiled once per shape.

  Numerics: in fp32 on CPU this equals GR00T's get_action to ~1e-6 relative. On a GPU, XLA's
  default fp32 matmuls use reduced-precision passes (measured on an H200 at the N1.5 shapes:
  8.6e-4 relative vs a float64 run, 6e-7 under `jax.default_matmul_precision("highest")`);
  `config.dtype=bfloat16` gives ~1e-2.
  """
  c = head.config
  vl_features = jnp.asarray(vl_features)
  state = jnp.asarray(state)
  embodiment_id = jnp.asarray(embodiment_id)
  if vl_mask is not None:
    vl_mask = jnp.asarray(vl_mask, bool)
  check_inputs(c, vl_features, state, embodiment_id, vl_mask=vl_mask, noise=noise)
  if noise is None:
    if rng is None:
      raise ValueError("sample: pass noise [B, action_horizon, action_dim] or an rng to draw it")
    noise = jax.random.normal(rng, (vl_features.shape[0], c.action_horizon, c.action_dim), jnp.float32)
  return _sample(c, nn.unbox(params), vl_features, state, embodiment_id, jnp.asarray(noise, jnp.float32), vl_mask)


@functools.partial(jax.jit, static_argnums=0)
def _sample(config: ActionHeadConfig, params, vl_features, state, embodiment_id, noise, vl_mask):
  head = FlowMatchingHead(config)
  variables = {"params": params}
  vl = head.apply(variables, vl_features, vl_mask, method=FlowMatchingHead.encode_vl)
  state_tokens = head.apply(variables, state, embodiment_id, method=FlowMatchingHead.encode_state)
  # The cross-attention keys/values depend on the VL tokens only: project them once, not per step.
  kv = head.apply(variables, vl, method=FlowMatchingHead.cross_kv)
  dt = 1.0 / config.num_inference_timesteps

  def step(actions, bucket):
    buckets = jnp.full((actions.shape[0],), bucket, jnp.int32)
    v = head.apply(variables, vl, state_tokens, actions, buckets, embodiment_id, vl_mask,
                   method=FlowMatchingHead.velocity, kv=kv)
    return actions + dt * v.astype(jnp.float32), None

  actions, _ = jax.lax.scan(step, noise, jnp.asarray(euler_buckets(config), jnp.int32))
  return actions
