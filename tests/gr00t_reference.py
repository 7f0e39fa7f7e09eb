"""The public GR00T N1.5 action head (torch) as a test oracle, plus GR00T-layout checkpoint writers.

The head ships in the `lerobot` wheel (installed without its dependencies, see the Makefile)
under `lerobot/policies/groot/action_head/`. Its three module files need only torch, diffusers,
transformers and `lerobot.utils.import_utils`; the packages above them (`lerobot.policies`,
`lerobot.policies.groot`) import every policy and the Eagle backbone, so the three files are
executed from the installed wheel under their own module names without running those package
`__init__`s. Nothing is stubbed: every line that runs is the released code.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

_PACKAGE = "lerobot.policies.groot.action_head"


@functools.lru_cache(maxsize=None)
def reference_modules():
  """{'action_encoder', 'cross_attention_dit', 'flow_matching_action_head'} -> the loaded modules."""
  spec = importlib.util.find_spec("lerobot")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("lerobot is not installed; `make install` adds it (pip install --no-deps 'lerobot==0.4.4')")
  root = os.path.join(list(spec.submodule_search_locations)[0], "policies", "groot", "action_head")
  modules = {}
  # Dependency order: flow_matching_action_head imports the other two by their full names.
  for name in ("action_encoder", "cross_attention_dit", "flow_matching_action_head"):
    full = f"{_PACKAGE}.{name}"
    if full not in sys.modules:
      mspec = importlib.util.spec_from_file_location(full, os.path.join(root, f"{name}.py"))
      module = importlib.util.module_from_spec(mspec)
      sys.modules[full] = module
      mspec.loader.exec_module(module)
    modules[name] = sys.modules[full]
  return modules


def build_reference(action_head_cfg: dict, device: str = "cpu"):
  """GR00T's FlowmatchingActionHead for an `action_head_cfg` dict (random init, fp32)."""
  fm = reference_modules()["flow_matching_action_head"]
  cfg = fm.FlowmatchingActionHeadConfig(**json.loads(json.dumps(action_head_cfg)))
  # On the meta device (shapes only) torch's argument validation of the head's Beta distribution
  # would read a tensor value; it validates constants (1.5, 1.0) that need no check here.
  validate = torch.distributions.Distribution._validate_args
  torch.distributions.Distribution.set_default_validate_args(device != "meta")
  try:
    with torch.device(device):
      return fm.FlowmatchingActionHead(cfg)
  finally:
    torch.distributions.Distribution.set_default_validate_args(validate)


def perturb_(module: torch.nn.Module, seed: int) -> None:
  """Adds noise to EVERY parameter so zero biases, unit norms and zero inits hide nothing."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(module.named_parameters()):
      p.add_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim == 1 else 0.05))


def random_reference(action_head_cfg: dict, seed: int = 0):
  """A perturbed reference head in eval mode."""
  torch.manual_seed(seed)
  head = build_reference(action_head_cfg)
  perturb_(head, seed + 1)
  return head.eval()


def write_checkpoint(out_dir: str, head: torch.nn.Module, action_head_cfg: dict, *, shards: int = 1,
                     extra: dict | None = None, project_to_dim=None, dtype=torch.float32) -> str:
  """A GR00T-layout checkpoint: config.json + `action_head.*` tensors + `extra` (e.g. backbone
  tensors that must be ignored), in one file or `shards` files with an index."""
  os.makedirs(out_dir, exist_ok=True)
  tensors = {f"action_head.{k}": v.detach().to(dtype).contiguous() for k, v in head.state_dict().items()}
  tensors.update({k: v.to(dtype).contiguous() for k, v in (extra or {}).items()})
  config = dict(architectures=["GR00T_N1_5"], model_type="gr00t_n1_5", action_head_cfg=action_head_cfg,
                action_dim=action_head_cfg["action_dim"], action_horizon=action_head_cfg["action_horizon"],
                backbone_cfg=dict(project_to_dim=project_to_dim, select_layer=12), torch_dtype=str(dtype)[6:])
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir
  weight_map = {}
  for i, chunk in enumerate(np.array_split(np.array(names, dtype=object), shards)):
    fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
    save_file({n: tensors[n] for n in chunk}, os.path.join(out_dir, fname), metadata={"format": "pt"})
    weight_map.update({n: fname for n in chunk})
  with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return out_dir


def tmp_dir(prefix: str) -> str:
  return tempfile.mkdtemp(prefix=prefix)


def batch_feature(**kw):
  from transformers.feature_extraction_utils import BatchFeature
  return BatchFeature(data={k: torch.as_tensor(np.asarray(v)) for k, v in kw.items()})


def reference_get_action(head, vl_features, state, embodiment_id, seed: int) -> np.ndarray:
  """GR00T's get_action; its noise is the first draw after `torch.manual_seed(seed)`."""
  torch.manual_seed(seed)
  with torch.no_grad():
    out = head.get_action(batch_feature(backbone_features=vl_features),
                          batch_feature(state=state, embodiment_id=np.asarray(embodiment_id, np.int64)))
  return out["action_pred"].numpy()


def reference_noise(seed: int, shape) -> np.ndarray:
  """The noise `reference_get_action(..., seed)` starts from."""
  torch.manual_seed(seed)
  return torch.randn(*shape).numpy()


def reference_loss(head, vl_features, state, actions, action_mask, embodiment_id, seed: int):
  """GR00T's training forward loss (eval mode: no dropout) and the (noise, t) it drew after
  `torch.manual_seed(seed)`: randn(actions.shape), then Beta time — its own order of draws."""
  torch.manual_seed(seed)
  with torch.no_grad():
    out = head(batch_feature(backbone_features=vl_features, backbone_attention_mask=np.ones(vl_features.shape[:2])),
               batch_feature(state=state, action=actions, action_mask=action_mask,
                             embodiment_id=np.asarray(embodiment_id, np.int64)))
  torch.manual_seed(seed)
  noise = torch.randn(*np.shape(actions))
  t = head.sample_time(np.shape(actions)[0], device="cpu", dtype=torch.float32)
  return float(out["loss"]), noise.numpy(), t.numpy()


def max_rel_err(ours, ref) -> float:
  """max |ours - ref| / max |ref|."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())
