"""The KV-cache sampler of the backbones: GRPO rollouts, greedy held-out evaluation, the MLLM
benchmarks and serving all sample through `generate` (also importable as `rl.rollout.generate`).

    out = sampling.generate(model, params, input_ids, attention_mask, pixel_values, image_grid_thw,
                           max_new_tokens=256, temperature=1.0, num_samples=5, rng=key,
                           eos_token_id=[im_end, endoftext])
    out.tokens    # int32 [B*G, N]: row b*G + g is sample g of prompt b; pad_token_id after EOS
    out.logprobs  # f32 [B*G, N]: log softmax(logits / temperature) at the sampled token, 0 on padding
    out.mask      # bool [B*G, N]: True on generated tokens up to and including EOS

One jitted program per shape: the (left-padded, possibly image-bearing) prompts are prefilled
once, their cache is repeated G times, and a `lax.while_loop` samples one token per step for
every row until all rows have emitted EOS or N tokens exist.

Sampling follows transformers' order: logits / temperature, then top-k, then top-p. The
returned log-probs are under logits / temperature *before* top-k / top-p filtering, which is
what the trainer recomputes for the importance ratio (they equal the sampling distribution's
when both filters are off, as in the paper). temperature = 0 is greedy decoding; its
log-probs are under the untempered logits (see `token_logprobs`).

Given `mesh`, rows are split over ('data', 'fsdp') and the model's activation constraints
follow `rules` (params keep whatever sharding they arrive with, e.g. from
`parallel.sharding.logical_shardings`). B*G must divide over those axes; when the prompt
count B alone does not, the prefill runs batch-replicated and the repeat splits the rows.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from roboalign_jax.parallel import sharding as sharding_lib


@flax.struct.dataclass
class Rollout:
  tokens: jax.Array     # int32 [B*G, N]
  logprobs: jax.Array   # float32 [B*G, N]
  mask: jax.Array       # bool [B*G, N]
  num_steps: jax.Array  # int32 []: columns sampled (< N when every row stopped early)

  @property
  def lengths(self) -> jax.Array:
    """int32 [B*G]: generated tokens per row, EOS included."""
    return self.mask.sum(-1, dtype=jnp.int32)


def generate(model, params, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             num_samples: int = 1, rng=None, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, mesh: Mesh | None = None, rules=None,
             suppress_token_ids: Sequence[int] = ()) -> Rollout:
  """Samples `num_samples` responses per prompt. See the module docstring.

  input_ids: int [B, T], left-padded (the last position is real in every row);
  attention_mask: int [B, T] or None; pixel_values: float [N_patches, 1176] and
  image_grid_thw: int [N_images, 3] for prompts with images. rng: a PRNG key, required when
  temperature > 0. eos_token_id: an id or a list of ids that end a row; None never stops early.
  pad_token_id: written after EOS (default: the model config's, else 0). mesh / rules: see
  the module docstring (rules default to `parallel.sharding.DEFAULT_RULES`).
  suppress_token_ids: ids never sampled (e.g. the vision placeholders, which a full forward over
  the response would read as image slots); like top-k / top-p this only filters the sampling
  distribution, the returned log-probs stay under the unfiltered logits / temperature.
  """
  max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
  num_samples = _positive_int(num_samples, "num_samples")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
    raise ValueError(f"generate: top_k must be an int >= 0 (0 = off), got {top_k!r}")
  temperature, top_p = float(temperature), float(top_p)
  if not np.isfinite(temperature) or temperature < 0:
    raise ValueError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature}")
  if not 0 < top_p <= 1:
    raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
  greedy = temperature == 0
  if rng is None:
    if not greedy:
      raise ValueError("generate: rng (a jax.random key) is required when temperature > 0")
    rng = jax.random.key(0)  # unused by greedy decoding
  eos = _eos_ids(eos_token_id)
  if pad_token_id is None:
    pad_token_id = getattr(model.config, "pad_token_id", None) or 0

  input_ids = jnp.asarray(input_ids)
  if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise ValueError(f"generate: input_ids must be int [B, T], got {input_ids.dtype} {input_ids.shape}")
  input_ids = input_ids.astype(jnp.int32)
  if attention_mask is None:
    attention_mask = jnp.ones(input_ids.shape, jnp.int32)
  attention_mask = jnp.asarray(attention_mask)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(f"generate: attention_mask shape {attention_mask.shape} differs from input_ids {input_ids.shape}")
  attention_mask = attention_mask.astype(jnp.int32)
  if attention_mask.is_fully_addressable and not np.all(np.asarray(attention_mask)[:, -1]):
    raise ValueError("generate: prompts must be left-padded (attention_mask[:, -1] == 1 in every row)")
  if (pixel_values is None) != (image_grid_thw is None):
    raise ValueError("generate: pixel_values and image_grid_thw must be given together")

  batch = input_ids.shape[0]
  suppress = tuple(sorted({int(i) for i in suppress_token_ids}))
  if any(i < 0 for i in suppress):
    raise ValueError(f"generate: suppress_token_ids must be ids >= 0, got {suppress_token_ids!r}")
  static = dict(model=model, max_new_tokens=max_new_tokens, num_samples=num_samples, greedy=greedy,
                top_k=int(top_k), use_top_p=top_p < 1, pad_id=int(pad_token_id), suppress=suppress)
  args = [params, input_ids, attention_mask, pixel_values, image_grid_thw,
          jnp.float32(temperature), jnp.float32(top_p), rng, eos]
  if mesh is None:
    if rules is not None:
      raise ValueError("generate: rules were given without a mesh")
    return _rollout(*args, **static, mesh=None, rules=None, prefill_rules=None)

  rules = sharding_lib.as_rules(sharding_lib.DEFAULT_RULES if rules is None else rules)
  ways = sharding_lib.data_parallel_size(mesh)
  if (batch * num_samples) % ways:
    raise ValueError(f"generate: {batch} prompts x {num_samples} samples = {batch * num_samples} rows do not "
                     f"split over the mesh's data x fsdp = {ways} ways")
  prefill_rules = rules
  if batch % ways:
    prefill_rules = tuple((name, None) if name == "batch" else (name, target) for name, target in rules)
  prompt = sharding_lib.batch_sharding(mesh) if batch % ways == 0 else sharding_lib.replicated(mesh)
  args[1:3] = jax.device_put(args[1:3], prompt)
  with jax.sharding.set_mesh(mesh):
    return _rollout(*args, **static, mesh=mesh, rules=rules, prefill_rules=prefill_rules)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_samples", "greedy", "top_k",
                                             "use_top_p", "pad_id", "mesh", "rules", "prefill_rules",
                                             "suppress"))
def _rollout(params, input_ids, attention_mask, pixel_values, image_grid_thw, temperature, top_p, rng, eos, *,
             model, max_new_tokens, num_samples, greedy, top_k, use_top_p, pad_id, mesh, rules,
             prefill_rules, suppress=()) -> Rollout:
  variables = {"params": params}
  b, t = input_ids.shape
  n = max_new_tokens
  rows = b * num_samples
  # n - 1 decode steps: the last sampled token is never fed back.
  with nn.logical_axis_rules(prefill_rules or ()):
    logits, cache = model.apply(variables, input_ids, attention_mask, pixel_values, image_grid_thw,
                                max_length=t + n - 1, method=model.prefill)

  def split_rows(x):
    # Rows over ('data', 'fsdp'); no-op without a mesh.
    return x if mesh is None else jax.lax.with_sharding_constraint(x, sharding_lib.batch_sharding(mesh))

  def repeat(x):
    # Samples of one prompt are consecutive rows: repeat, not tile.
    return split_rows(jnp.repeat(x, num_samples, axis=0))

  logits = repeat(logits)
  cache = cache.replace(keys=tuple(map(repeat, cache.keys)), values=tuple(map(repeat, cache.values)),
                        mask=repeat(cache.mask), next_position=repeat(cache.next_position),
                        rope_deltas=repeat(cache.rope_deltas))

  def choose(logits, step):
    allowed = logits if not suppress else logits.at[..., jnp.asarray(suppress)].set(-jnp.inf)
    if greedy:
      token = first_argmax(allowed)
    else:
      scaled = allowed / temperature
      if top_k:
        scaled = _top_k_filter(scaled, top_k)
      if use_top_p:
        scaled = _top_p_filter(scaled, top_p)
      # jax.random.categorical's Gumbel-max draw, with its argmax replaced (same samples).
      noise = jax.random.gumbel(jax.random.fold_in(rng, step), scaled.shape, scaled.dtype)
      token = first_argmax(noise + scaled)
    return token, token_logprobs(logits, token, 0.0 if greedy else temperature)

  def record(state, step, token, logprob):
    tokens, logprobs, mask, done = state
    active = ~done
    token = jnp.where(active, token, pad_id)
    tokens = tokens.at[:, step].set(token)
    logprobs = logprobs.at[:, step].set(jnp.where(active, logprob, 0.0))
    mask = mask.at[:, step].set(active)
    ended = (token[:, None] == eos[None, :]).any(-1)
    return (tokens, logprobs, mask, done | (active & ended)), token

  state = (split_rows(jnp.full((rows, n), pad_id, jnp.int32)), split_rows(jnp.zeros((rows, n), jnp.float32)),
           split_rows(jnp.zeros((rows, n), bool)), split_rows(jnp.zeros((rows,), bool)))
  state, token = record(state, 0, *choose(logits, 0))

  def cond(carry):
    step, _, _, state = carry
    return (step < n) & ~jnp.all(state[3])

  def body(carry):
    step, token, cache, state = carry
    with nn.logical_axis_rules(rules or ()):
      logits, cache = model.apply(variables, token, cache, method=model.decode_step)
    state, token = record(state, step, *choose(logits, step))
    return step + 1, token, cache, state

  step, _, _, (tokens, logprobs, mask, _) = jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, state))
  return Rollout(tokens=tokens, logprobs=logprobs, mask=mask, num_steps=step)


def token_logprobs(logits, tokens, temperature=1.0) -> jax.Array:
  """log softmax(logits / temperature) at `tokens`, in float32. Jit-able.

  logits: float [..., V]; tokens: int [...] -> float32 [...]. temperature may be a Python
  number or a traced scalar; temperature <= 0 (greedy decoding) scores under the untempered
  logits, so greedy rollouts report ordinary model log-probs.
  """
  logits = jnp.asarray(logits, jnp.float32)
  tokens = jnp.asarray(tokens)
  if logits.shape[:-1] != tokens.shape:
    raise ValueError(f"token_logprobs: logits {logits.shape} must be tokens' shape {tokens.shape} + [vocab]")
  temperature = jnp.asarray(temperature, jnp.float32)
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  picked = jnp.take_along_axis(scaled, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(scaled, axis=-1)


def first_argmax(x: jax.Array) -> jax.Array:
  """int32 [...]: jnp.argmax(x, -1) (the first maximum; the first NaN if a row has one) as two
  plain reductions. XLA's CPU backend runs argmax's (value, index) reduction several times slower
  than a max and a min, and it was a quarter of a tiny model's rollout step."""
  top = jnp.max(x, axis=-1, keepdims=True)
  hit = (x == top) | jnp.isnan(x)
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def _top_k_filter(logits, k: int):
  """Keeps the k largest logits per row (ties with the k-th kept), the rest -inf."""
  if k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p_filter(logits, top_p):
  """Nucleus filter: keeps the most likely tokens whose preceding mass is < top_p (so at least
  the top one; tokens tied with the last kept one are kept too), the rest -inf.

  Token i is kept iff the mass of the tokens strictly more likely than it is < top_p, i.e. iff
  p_i >= tau, the smallest probability with that property. tau is found by bisection over the
  float32 bit patterns of [0, max p] (monotone for non-negative floats): 31 masked sums over the
  vocabulary instead of a sort of it, which was two thirds of a CPU sampling step.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  def mass_above(tau):
    return jnp.sum(jnp.where(probs > tau, probs, 0.0), axis=-1, keepdims=True)

  def as_float(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float32)

  def halve(_, bounds):  # invariant: mass_above(hi) < top_p <= mass_above(lo)
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    below = mass_above(as_float(mid)) < top_p
    return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

  hi = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1, keepdims=True), jnp.int32)
  _, hi = jax.lax.fori_loop(0, 31, halve, (jnp.zeros_like(hi), hi))
  zero = jnp.zeros_like(probs[..., :1])
  tau = jnp.where(mass_above(zero) < top_p, zero, as_float(hi))  # rounding left every token's mass < top_p
  return jnp.where(probs >= tau, logits, -jnp.inf)


def _positive_int(value: Any, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"generate: {name} must be a positive int, got {value!r}")
  return int(value)


def _eos_ids(eos_token_id) -> jax.Array:
  """int32 [E]: the ids, padded with -1 (matches no token) to a multiple of 8 so that changing
  the EOS set rarely changes the compiled program."""
  ids = [] if eos_token_id is None else (
      [eos_token_id] if np.ndim(eos_token_id) == 0 else list(np.asarray(eos_token_id).reshape(-1)))
  for i in ids:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or i < 0:
      raise ValueError(f"generate: eos_token_id must be an int >= 0 or a list of them, got {eos_token_id!r}")
  padded = np.full(max(8, -(-len(ids) // 8) * 8), -1, np.int32)
  padded[:len(ids)] = ids
  return jnp.asarray(padded)
