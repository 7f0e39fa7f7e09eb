"""Configuration of the GR00T N1.5 flow-matching action head: one frozen dataclass, the named
variants (`gr00t_n1_5`, `tiny`), and the translation to and from GR00T's `action_head_cfg`
(the dict inside a GR00T checkpoint's config.json), so a released checkpoint loads with its own
shapes and an exported one loads back into GR00T's code.

GR00T keeps three nested dicts (`action_head_cfg`, its `diffusion_model_cfg` and
`vl_self_attention_cfg`); we flatten them into one record with `dit_*` / `vl_*` prefixes and
derive the widths GR00T repeats (DiT width = `input_embedding_dim`, cross-attention width =
`backbone_embedding_dim`, DiT output = `hidden_size`), checking them when a GR00T dict is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# Width of the DiT's sinusoidal timestep features (fixed in GR00T's TimestepEncoder).
TIMESTEP_FEATURES = 256


@dataclasses.dataclass(frozen=True)
class ActionHeadConfig:
  """Shapes and flow-matching constants of the head. Defaults are the released GR00T N1.5 ones.

  Sequence the DiT sees: [state tokens, `num_target_vision_tokens` learned "future" tokens,
  `action_horizon` action tokens]; the last `action_horizon` outputs are decoded to velocities.

  Width question (`backbone_feature_dim`): GR00T N1.5's head reads `backbone_embedding_dim`
  (2048) wide features, the width of its Eagle LLM; RoboAlign feeds Qwen2.5-VL-7B layer 18,
  which is 3584 wide. GR00T's own answer to a different width is a trained Linear in front of
  the head (`backbone.eagle_linear`, enabled by `backbone_cfg.project_to_dim`). We make that a
  field: `backbone_feature_dim=None` (the default) means no projection, the features must
  already be `backbone_embedding_dim` wide — exactly the released N1.5 layout
  (`project_to_dim: null`), so released checkpoints load and export unchanged. An int adds
  Linear(backbone_feature_dim -> backbone_embedding_dim) with bias, exported as
  `backbone.eagle_linear.{weight,bias}` with `project_to_dim = backbone_embedding_dim`. For
  Qwen2.5-VL-7B use `config_from_variant("gr00t_n1_5", backbone_feature_dim=3584)`: every head
  tensor keeps the N1.5 shape (so N1.5 weights can initialise it) and the only new parameters
  are the 3584 x 2048 projection, instead of resizing the VL self-attention and the K/V
  projections of the 8 cross-attention blocks to the backbone width. (The `action_head.*`
  tensors of such an export load into GR00T's FlowmatchingActionHead; the 3584-input
  eagle_linear does not fit GR00T's Eagle backbone, which builds it with 2048 inputs.)

  `dtype` is the compute dtype; parameters are stored in `param_dtype` (fp32 by default).
  """
  action_horizon: int = 16
  action_dim: int = 32
  max_state_dim: int = 64
  hidden_size: int = 1024            # state encoder hidden, DiT output, action decoder width
  input_embedding_dim: int = 1536    # token width inside the DiT (= dit heads x head dim)
  backbone_embedding_dim: int = 2048  # VL token width inside the head (= vl heads x head dim)
  backbone_feature_dim: int | None = None  # width of the features handed in; None = no projection
  # DiT (GR00T `diffusion_model_cfg`)
  dit_num_layers: int = 16
  dit_num_heads: int = 32
  dit_head_dim: int = 48
  dit_interleave_self_attention: bool = True  # even blocks cross-attend, odd blocks self-attend
  dit_dropout: float = 0.2
  dit_final_dropout: bool = True
  # VL self-attention transformer (GR00T `vl_self_attention_cfg`); used only with `use_vlln`
  use_vlln: bool = True
  vl_num_layers: int = 4
  vl_num_heads: int = 32
  vl_head_dim: int = 64
  vl_dropout: float = 0.2
  vl_final_dropout: bool = True
  # tokens
  num_target_vision_tokens: int = 32
  add_pos_embed: bool = True
  max_seq_len: int = 1024            # rows of the action-token position table
  max_num_embodiments: int = 32
  # flow matching
  num_timestep_buckets: int = 1000
  num_inference_timesteps: int = 4
  noise_beta_alpha: float = 1.5
  noise_beta_beta: float = 1.0
  noise_s: float = 0.999
  # Initial std of the per-embodiment encoder/decoder weights: GR00T's 0.02, i.e. about 1/sqrt(fan in)
  # at its widths (1024-3072). At CPU-sized widths (32-128) 0.02 shrinks every such layer's output
  # ~10x and the head barely reads its inputs for thousands of steps; 0 = 1/sqrt(fan in). Only the
  # initialisation depends on it (checkpoints do not record it).
  embodiment_init_std: float = 0.02
  # numerics
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @property
  def dit_width(self) -> int:
    return self.dit_num_heads * self.dit_head_dim

  @property
  def vl_width(self) -> int:
    return self.vl_num_heads * self.vl_head_dim

  @property
  def feature_dim(self) -> int:
    """Width of the `vl_features` the head accepts."""
    return self.backbone_embedding_dim if self.backbone_feature_dim is None else self.backbone_feature_dim

  @property
  def has_projection(self) -> bool:
    return self.backbone_feature_dim is not None

  def replace(self, **kw) -> "ActionHeadConfig":
    return dataclasses.replace(self, **kw).validate()

  def validate(self) -> "ActionHeadConfig":
    positive = ("action_horizon", "action_dim", "max_state_dim", "hidden_size", "input_embedding_dim",
                "backbone_embedding_dim", "dit_num_layers", "dit_num_heads", "dit_head_dim", "vl_num_heads",
                "vl_head_dim", "max_seq_len", "max_num_embodiments", "num_timestep_buckets",
                "num_inference_timesteps")
    bad = [f"{k}={getattr(self, k)}" for k in positive if int(getattr(self, k)) < 1]
    if bad:
      raise ValueError(f"action head config: expected positive sizes, got {', '.join(bad)}")
    if self.vl_num_layers < 0 or self.num_target_vision_tokens < 0:
      raise ValueError(f"action head config: vl_num_layers={self.vl_num_layers} and num_target_vision_tokens="
                       f"{self.num_target_vision_tokens} must be >= 0")
    if self.dit_width != self.input_embedding_dim:
      raise ValueError(f"action head config: DiT width dit_num_heads x dit_head_dim = {self.dit_num_heads} x "
                       f"{self.dit_head_dim} = {self.dit_width} must equal input_embedding_dim "
                       f"{self.input_embedding_dim} (the DiT reads the action/state tokens at that width)")
    if self.input_embedding_dim % 2:
      raise ValueError(f"action head config: input_embedding_dim {self.input_embedding_dim} must be even "
                       "(the action encoder's timestep features are [sin | cos] halves)")
    if self.use_vlln and self.vl_num_layers and self.vl_width != self.backbone_embedding_dim:
      raise ValueError(f"action head config: VL self-attention width vl_num_heads x vl_head_dim = "
                       f"{self.vl_num_heads} x {self.vl_head_dim} = {self.vl_width} must equal "
                       f"backbone_embedding_dim {self.backbone_embedding_dim}")
    if self.backbone_feature_dim is not None and self.backbone_feature_dim < 1:
      raise ValueError(f"action head config: backbone_feature_dim {self.backbone_feature_dim} must be None or positive")
    if self.add_pos_embed and self.max_seq_len < self.action_horizon:
      raise ValueError(f"action head config: max_seq_len {self.max_seq_len} (position table rows) < "
                       f"action_horizon {self.action_horizon}")
    if self.embodiment_init_std < 0:
      raise ValueError(f"action head config: embodiment_init_std={self.embodiment_init_std} must be >= 0 "
                       "(0 = 1/sqrt(fan in))")
    for k in ("dit_dropout", "vl_dropout"):
      if not 0.0 <= getattr(self, k) < 1.0:
        raise ValueError(f"action head config: {k}={getattr(self, k)} must be in [0, 1)")
    if not (self.noise_beta_alpha > 0 and self.noise_beta_beta > 0 and 0 < self.noise_s <= 1):
      raise ValueError(f"action head config: Beta({self.noise_beta_alpha}, {self.noise_beta_beta}) and noise_s "
                       f"{self.noise_s} must have positive parameters and s in (0, 1]")
    return self

  # ---- GR00T action_head_cfg <-> ours ------------------------------------------------------------
  def to_gr00t_dict(self) -> dict:
    """GR00T N1.5's `action_head_cfg` for this config (keys as in the released config.json)."""
    return dict(
        action_dim=self.action_dim, action_horizon=self.action_horizon, add_pos_embed=self.add_pos_embed,
        backbone_embedding_dim=self.backbone_embedding_dim,
        diffusion_model_cfg=dict(
            attention_head_dim=self.dit_head_dim, cross_attention_dim=self.backbone_embedding_dim,
            dropout=self.dit_dropout, final_dropout=self.dit_final_dropout,
            interleave_self_attention=self.dit_interleave_self_attention, norm_type="ada_norm",
            num_attention_heads=self.dit_num_heads, num_layers=self.dit_num_layers, output_dim=self.hidden_size,
            positional_embeddings=None),
        hidden_size=self.hidden_size, input_embedding_dim=self.input_embedding_dim,
        max_action_dim=self.action_dim, max_state_dim=self.max_state_dim, max_num_embodiments=self.max_num_embodiments,
        max_seq_len=self.max_seq_len, model_dtype="float32", noise_beta_alpha=self.noise_beta_alpha,
        noise_beta_beta=self.noise_beta_beta, noise_s=self.noise_s,
        num_inference_timesteps=self.num_inference_timesteps, num_target_vision_tokens=self.num_target_vision_tokens,
        num_timestep_buckets=self.num_timestep_buckets, tune_diffusion_model=True, tune_projector=True,
        use_vlln=self.use_vlln,
        vl_self_attention_cfg=dict(
            attention_head_dim=self.vl_head_dim, dropout=self.vl_dropout, final_dropout=self.vl_final_dropout,
            num_attention_heads=self.vl_num_heads, num_layers=self.vl_num_layers, positional_embeddings=None))

  @classmethod
  def from_gr00t_dict(cls, d: dict, source: str = "action_head_cfg", **overrides) -> "ActionHeadConfig":
    """From GR00T's `action_head_cfg` dict. Defaults follow GR00T's own config class; options our
    head does not implement (sinusoidal block positions, other norms or activations, batch
    expansion) are refused with the key named. `source` names the input in errors."""
    if not isinstance(d, dict):
      raise ValueError(f"{source}: expected a dict (GR00T action_head_cfg), got {type(d).__name__}")
    missing = [k for k in ("action_dim", "action_horizon", "max_state_dim", "diffusion_model_cfg",
                           "num_inference_timesteps") if d.get(k) is None]
    if missing:
      raise ValueError(f"{source}: missing {missing}; expected a GR00T N1.5 action_head_cfg")
    dit = d["diffusion_model_cfg"]
    use_vlln = bool(d.get("use_vlln", True))
    vl = d.get("vl_self_attention_cfg") or {}
    if use_vlln and not vl:
      raise ValueError(f"{source}: use_vlln is true but vl_self_attention_cfg is missing")

    def need(cfg: dict, name: str, key: str, allowed, default):
      value = cfg.get(key, default)
      if value not in allowed:
        raise ValueError(f"{source}: {name}.{key} = {value!r} is not supported; expected one of {list(allowed)} "
                         "(GR00T N1.5 uses the first)")

    # GR00T's DiT/SelfAttentionTransformer defaults are "sinusoidal" positions; N1.5 sets None.
    need(dit, "diffusion_model_cfg", "positional_embeddings", (None,), "sinusoidal")
    need(dit, "diffusion_model_cfg", "norm_type", ("ada_norm",), "ada_norm")
    need(dit, "diffusion_model_cfg", "activation_fn", ("gelu-approximate",), "gelu-approximate")
    need(dit, "diffusion_model_cfg", "attention_bias", (True,), True)
    need(dit, "diffusion_model_cfg", "norm_elementwise_affine", (False,), False)
    need(dit, "diffusion_model_cfg", "norm_eps", (1e-5,), 1e-5)
    if use_vlln:
      need(vl, "vl_self_attention_cfg", "positional_embeddings", (None,), "sinusoidal")
      need(vl, "vl_self_attention_cfg", "activation_fn", ("gelu-approximate",), "gelu-approximate")
      need(vl, "vl_self_attention_cfg", "attention_bias", (True,), True)
    need(d, "action_head_cfg", "expand_batch", (None,), None)
    backbone = int(d.get("backbone_embedding_dim", 1536))
    cross = dit.get("cross_attention_dim")
    if cross is not None and int(cross) != backbone:
      raise ValueError(f"{source}: diffusion_model_cfg.cross_attention_dim {cross} != backbone_embedding_dim "
                       f"{backbone}; the DiT cross-attends to the VL tokens at the backbone width")
    hidden = int(d.get("hidden_size", 1024))
    if int(dit.get("output_dim", hidden)) != hidden:
      raise ValueError(f"{source}: diffusion_model_cfg.output_dim {dit.get('output_dim')} != hidden_size {hidden}; "
                       "the action decoder reads the DiT output at hidden_size")
    max_action = d.get("max_action_dim")
    if max_action is not None and int(max_action) != int(d["action_dim"]):
      raise ValueError(f"{source}: max_action_dim {max_action} != action_dim {d['action_dim']}; GR00T sizes the "
                       "action encoder/decoder by action_dim (pad actions to it)")
    kw = dict(
        action_horizon=int(d["action_horizon"]), action_dim=int(d["action_dim"]),
        max_state_dim=int(d["max_state_dim"]), hidden_size=hidden,
        input_embedding_dim=int(d.get("input_embedding_dim", 1536)), backbone_embedding_dim=backbone,
        dit_num_layers=int(dit.get("num_layers", 12)), dit_num_heads=int(dit.get("num_attention_heads", 8)),
        dit_head_dim=int(dit.get("attention_head_dim", 64)),
        dit_interleave_self_attention=bool(dit.get("interleave_self_attention", False)),
        dit_dropout=float(dit.get("dropout", 0.1)), dit_final_dropout=bool(dit.get("final_dropout", True)),
        use_vlln=use_vlln,
        # Read even without use_vlln (then unused) so that to/from GR00T round-trips every field.
        vl_num_layers=int(vl.get("num_layers", 12)), vl_num_heads=int(vl.get("num_attention_heads", 8)),
        vl_head_dim=int(vl.get("attention_head_dim", 64)), vl_dropout=float(vl.get("dropout", 0.1)),
        vl_final_dropout=bool(vl.get("final_dropout", True)),
        num_target_vision_tokens=int(d.get("num_target_vision_tokens", 32)),
        add_pos_embed=bool(d.get("add_pos_embed", True)), max_seq_len=int(d.get("max_seq_len", 1024)),
        max_num_embodiments=int(d.get("max_num_embodiments", 32)),
        num_timestep_buckets=int(d.get("num_timestep_buckets", 1000)),
        num_inference_timesteps=int(d["num_inference_timesteps"]),
        noise_beta_alpha=float(d.get("noise_beta_alpha", 1.5)), noise_beta_beta=float(d.get("noise_beta_beta", 1.0)),
        noise_s=float(d.get("noise_s", 0.999)))
    kw.update(overrides)
    try:
      return cls(**kw).validate()
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None


# ---- variants -------------------------------------------------------------------------------------
def _variants() -> dict[str, dict]:
  return {
      # The released GR00T N1.5 head (nvidia/GR00T-N1.5-3B `action_head_cfg`).
      "gr00t_n1_5": {},
      # CPU tests: small even widths (they split 2 ways on the test mesh) but every structural
      # feature: cross and self DiT blocks, VL self-attention, future tokens, several embodiments.
      "tiny": dict(action_horizon=6, action_dim=7, max_state_dim=9, hidden_size=32, input_embedding_dim=48,
                   backbone_embedding_dim=32, dit_num_layers=4, dit_num_heads=4, dit_head_dim=12,
                   vl_num_layers=2, vl_num_heads=4, vl_head_dim=8, num_target_vision_tokens=4,
                   max_seq_len=32, max_num_embodiments=3),
      # The smallest head that learns in CPU budgets (Stage 3's tiny config): GR00T's structure at
      # widths 64-128, fan-in initialisation of the per-embodiment layers (see embodiment_init_std).
      "small": dict(hidden_size=128, input_embedding_dim=128, backbone_embedding_dim=64, dit_num_layers=4,
                    dit_num_heads=8, dit_head_dim=16, vl_num_layers=1, vl_num_heads=4, vl_head_dim=16,
                    num_target_vision_tokens=8, max_seq_len=64, embodiment_init_std=0.0),
  }


VARIANTS = tuple(_variants())


def config_from_variant(variant: str, **overrides) -> ActionHeadConfig:
  """`"gr00t_n1_5"` (released shapes), `"tiny"` (parity tests: odd widths) or `"small"` (CPU
  training), with field overrides."""
  table = _variants()
  if variant not in table:
    raise ValueError(f"unknown action head variant {variant!r}; expected one of {list(table)}")
  fields = {f.name for f in dataclasses.fields(ActionHeadConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown action head config fields {unknown}; known: {sorted(fields)}")
  return ActionHeadConfig(**{**table[variant], **overrides}).validate()
