"""GRPO as EasyR1 runs it: group-normalised outcome advantages and the clipped policy loss with
a `low_var_kl` penalty to the frozen reference policy inside the loss.

Per valid response token, with d = logp - old_logp and A the sequence's advantage:

    ratio   = exp(clip(d, -20, 20))
    clipped = exp(clip(d, log(1 - clip_low), log(1 + clip_high)))
    pg      = max(-A * ratio, -A * clipped)              # PPO's pessimistic surrogate
    pg      = min(pg, -A * clip_dual)   where A < 0      # dual clip
    x       = clip(ref_logp - logp, -20, 20)
    kl      = clip(exp(x) - x - 1, -10, 10)              # low_var_kl (Schulman's k3)
    loss    = token_mean(pg) + kl_coef * token_mean(kl)  # means over all valid tokens of the batch

Log-probs are of the sampled tokens under logits / temperature (`token_logprobs`), both in
the rollout and when the trainer recomputes old log-probs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from roboalign_jax.models.sampling import token_logprobs

# token_logprobs lives with the sampler (which scores its samples with it); the trainer recomputes
# old and reference log-probs with the same function, reached from here.
__all__ = ["GRPOLossConfig", "group_advantages", "low_var_kl", "policy_loss", "token_logprobs"]

_LOG_RATIO_LIMIT = 20.0   # exp() stays finite, and gradients past it are zero
_KL_LIMIT = 10.0


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
  """EasyR1's defaults, which the paper used."""
  clip_low: float = 0.2     # ratio floor 1 - clip_low
  clip_high: float = 0.3    # ratio ceiling 1 + clip_high (DAPO's clip-higher)
  clip_dual: float = 3.0    # bound on the loss of negative-advantage tokens: -A * clip_dual
  kl_coef: float = 1e-2     # weight of low_var_kl to the reference policy


def group_advantages(rewards, group_size: int, eps: float = 1e-6) -> jax.Array:
  """(r - mean_group) / (std_group + eps) with the unbiased std (ddof=1).

  rewards: float [B*G], the G samples of one prompt consecutive -> float [B*G].
  group_size=1: a group holds no comparison, so every advantage is 0 (r equals its group
  mean and the std is taken as 0) instead of the NaN that ddof=1 gives.
  """
  if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"group_advantages: group_size must be a positive int, got {group_size!r}")
  rewards = jnp.asarray(rewards)
  if rewards.ndim != 1:
    raise ValueError(f"group_advantages: rewards must be float [B*G], got shape {rewards.shape}")
  if rewards.shape[0] % group_size:
    raise ValueError(f"group_advantages: {rewards.shape[0]} rewards do not split into groups of "
                     f"{group_size} consecutive samples")
  if not jnp.issubdtype(rewards.dtype, jnp.floating):
    rewards = rewards.astype(jnp.float32)
  if group_size == 1:
    return jnp.zeros_like(rewards)
  groups = rewards.reshape(-1, group_size)
  # Shifting by the group's first reward first makes an all-equal group exactly 0: a float32
  # mean (XLA multiplies by 1/G) would leave ~1e-8, which eps then blows up to ~1e-2.
  shifted = groups - groups[:, :1]
  centred = shifted - shifted.mean(axis=1, keepdims=True)
  std = jnp.sqrt((centred ** 2).sum(axis=1, keepdims=True) / (group_size - 1))
  return (centred / (std + eps)).reshape(-1)


def low_var_kl(logp, ref_logp) -> jax.Array:
  """Per-token KL(policy || reference) estimate exp(x) - x - 1, x = ref_logp - logp, clamped."""
  x = jnp.clip(ref_logp - logp, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
  return jnp.clip(jnp.exp(x) - x - 1.0, -_KL_LIMIT, _KL_LIMIT)


def policy_loss(logp, old_logp, ref_logp, advantages, mask, config) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO loss of one update batch (see the module docstring for the formula).

  logp: float [N, T] under the current params (differentiated); old_logp: [N, T] from the
  rollout policy; ref_logp: [N, T] from the frozen reference, or None when kl_coef == 0;
  advantages: float [N]; mask: bool/float [N, T], 1 on response tokens (EOS included).
  config: anything with clip_low, clip_high, clip_dual, kl_coef (`GRPOLossConfig`,
  ml_collections.ConfigDict, ...). old_logp, ref_logp and advantages are treated as constants.

  Returns (loss [], metrics) where metrics hold means over valid tokens: pg_loss, kl,
  entropy (-mean logp, an estimate), ratio, ppo_kl (mean old_logp - logp), and the fractions
  of tokens whose gradient is cut: clip_frac_upper (A > 0, ratio > 1 + clip_high),
  clip_frac_lower (A < 0, ratio < 1 - clip_low), clip_frac_dual (A < 0, ratio > clip_dual).
  EasyR1's `pg_clipfrac_higher` is upper + lower, its `pg_clipfrac_lower` is dual.
  """
  clip_low, clip_high, clip_dual, kl_coef = _read_config(config)
  logp = jnp.asarray(logp)
  if logp.ndim != 2:
    raise ValueError(f"policy_loss: logp must be float [N, T], got shape {logp.shape}")
  n, t = logp.shape
  if ref_logp is None and kl_coef != 0:
    raise ValueError(f"policy_loss: ref_logp is None but kl_coef is {kl_coef}; pass the reference log-probs")
  named = dict(old_logp=old_logp, mask=mask) | ({} if ref_logp is None else dict(ref_logp=ref_logp))
  for name, value in named.items():
    if jnp.shape(value) != (n, t):
      raise ValueError(f"policy_loss: {name} must have logp's shape {(n, t)}, got {jnp.shape(value)}")
  if jnp.shape(advantages) != (n,):
    raise ValueError(f"policy_loss: advantages must be float [N={n}] (one per sequence), got {jnp.shape(advantages)}")

  dtype = jnp.promote_types(logp.dtype, jnp.float32)  # never accumulate the loss in bf16
  logp = logp.astype(dtype)
  old_logp = jax.lax.stop_gradient(jnp.asarray(old_logp, dtype))
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, dtype))[:, None]
  mask = jnp.asarray(mask).astype(dtype)
  count = jnp.maximum(mask.sum(), 1.0)  # an all-padding batch gives 0, not NaN

  def token_mean(x):
    return (x * mask).sum() / count

  log_ratio = logp - old_logp
  ratio = jnp.exp(jnp.clip(log_ratio, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT))
  lo, hi = math.log(1.0 - clip_low), math.log(1.0 + clip_high)
  clipped_ratio = jnp.exp(jnp.clip(log_ratio, lo, hi))
  surrogate = jnp.maximum(-adv * ratio, -adv * clipped_ratio)
  dual = jnp.minimum(surrogate, -adv * clip_dual)
  pg = jnp.where(adv < 0, dual, surrogate)
  pg_loss = token_mean(pg)

  if ref_logp is None:
    kl = jnp.zeros_like(logp)
  else:
    kl = low_var_kl(logp, jax.lax.stop_gradient(jnp.asarray(ref_logp, dtype)))
  kl_mean = token_mean(kl)
  loss = pg_loss + kl_coef * kl_mean

  fraction = lambda cond: token_mean(cond.astype(dtype))
  metrics = dict(
      loss=loss, pg_loss=pg_loss, kl=kl_mean,
      entropy=token_mean(-logp), ratio=token_mean(ratio), ppo_kl=token_mean(-log_ratio),
      clip_frac_upper=fraction((adv > 0) & (log_ratio > hi)),
      clip_frac_lower=fraction((adv < 0) & (log_ratio < lo)),
      clip_frac_dual=fraction((adv < 0) & (surrogate > -adv * clip_dual)),
  )
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)


def _read_config(config: Any) -> tuple[float, float, float, float]:
  values = []
  for name in ("clip_low", "clip_high", "clip_dual", "kl_coef"):
    try:
      value = getattr(config, name)
    except (AttributeError, KeyError):
      raise ValueError(f"policy_loss: config {type(config).__name__} has no field {name!r}; expected "
                       "clip_low, clip_high, clip_dual, kl_coef (see GRPOLossConfig)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(f"policy_loss: config.{name} must be a number, got {value!r}")
    values.append(float(value))
  clip_low, clip_high, clip_dual, kl_coef = values
  if not 0 <= clip_low < 1:
    raise ValueError(f"policy_loss: clip_low must be in [0, 1), got {clip_low}")
  if clip_high < 0:
    raise ValueError(f"policy_loss: clip_high must be >= 0, got {clip_high}")
  if clip_dual <= 1:
    raise ValueError(f"policy_loss: clip_dual must be > 1 (it bounds ratios above 1), got {clip_dual}")
  if kl_coef < 0:
    raise ValueError(f"policy_loss: kl_coef must be >= 0, got {kl_coef}")
  return clip_low, clip_high, clip_dual, kl_coef
