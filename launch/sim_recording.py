"""What launch/record_libero.py and launch/record_metaworld.py share: running a simulator-side
module in the simulator's own environment, and turning the .npz episodes it writes into RLDS
episode dicts. Standard library and NumPy only (the launchers stay light)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from typing import Callable, Mapping, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAMERA_KEYS = ("image", "wrist_image")


def headless_env() -> dict[str, str]:
  """This environment plus the repo on PYTHONPATH and MuJoCo rendering through EGL (no display)."""
  return {**os.environ, "PYTHONPATH": REPO_ROOT, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
          "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "egl")}


def run_in_simulator(sim_python: str, module: str, args: Sequence[str], *, make_target: str, tag: str) -> None:
  """Runs `sim_python -m module args...`; a missing simulator environment names its make target."""
  if not os.path.isfile(sim_python):
    raise FileNotFoundError(f"--sim_python={sim_python} does not exist; expected the simulator environment's "
                            f"python: run `make {make_target}` first")
  command = [sim_python, "-m", module, *args]
  print(f"[{tag}] " + " ".join(command), flush=True)
  result = subprocess.run(command, cwd=REPO_ROOT, env=headless_env(), stdin=subprocess.DEVNULL)
  if result.returncode:
    raise RuntimeError(f"the simulator process exited with {result.returncode}: {' '.join(command)}")


def fresh_episodes_dir(episodes_dir: str) -> None:
  """Creates `episodes_dir`, removing the .npz files and log of an earlier recording (they would be written too)."""
  if os.path.isdir(episodes_dir):
    for path in glob.glob(os.path.join(episodes_dir, "*.npz")) + glob.glob(os.path.join(episodes_dir, "episodes.jsonl")):
      os.remove(path)
  os.makedirs(episodes_dir, exist_ok=True)


def read_episode_log(episodes_dir: str) -> tuple[list[dict], list[str], list[dict]]:
  """(every episode's summary, .npz paths of the successful ones, summaries of the failed ones)."""
  with open(os.path.join(episodes_dir, "episodes.jsonl")) as f:
    summaries = [json.loads(line) for line in f if line.strip()]
  files = [os.path.join(episodes_dir, s["file"]) for s in summaries if s["success"]]
  return summaries, files, [s for s in summaries if not s["success"]]


def npz_episode(path: str, *, widths: Mapping[str, int], recorder: str, metadata_keys: Sequence[str] = (),
                metadata: Callable[[dict], dict] = lambda data: {}) -> dict:
  """One .npz of a simulator recorder -> the RLDS episode dict: both cameras, the observation
  vectors and the action (`widths`: key -> width; "action" among them), the instruction, and
  episode_metadata (file_path plus `metadata(data)` of the scalar `metadata_keys`).
  Raises ValueError naming the file and the key when the arrays are not the recorder's layout."""
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  expected = {**{k: 4 for k in CAMERA_KEYS}, **{k: 2 for k in widths}, "instruction": 0,
              **{k: 0 for k in metadata_keys}}
  for key, ndim in expected.items():
    if key not in data or data[key].ndim != ndim:
      raise ValueError(f"{path}: {key} is {'missing' if key not in data else f'of shape {data[key].shape}'}; "
                       f"expected a {ndim}-d array (see {recorder})")
  n = len(data["action"])
  vectors = [k for k in widths if k != "action"]
  for key in (*CAMERA_KEYS, *vectors):
    if len(data[key]) != n:
      raise ValueError(f"{path}: {key} has {len(data[key])} steps; expected {n}, as many as actions")
  for key, width in widths.items():
    if data[key].shape[1] != width:
      raise ValueError(f"{path}: {key} has shape {data[key].shape}; expected [T, {width}]")
  instruction = str(data["instruction"])
  steps = []
  for t in range(n):
    steps.append({
        "observation": {**{k: data[k][t] for k in CAMERA_KEYS}, **{k: data[k][t].astype(np.float32) for k in vectors}},
        "action": data["action"][t].astype(np.float32), "discount": np.float32(1.0),
        "reward": np.float32(t == n - 1), "is_first": t == 0, "is_last": t == n - 1, "is_terminal": t == n - 1,
        "language_instruction": instruction})
  return {"steps": steps, "episode_metadata": {"file_path": os.path.basename(path), **metadata(data)}}
