"""CALVIN ABC->D evaluation of a policy served over the openpi protocol, where CALVIN is installed.

Needs the CALVIN repository (its `calvin_env` package and `calvin_models/conf` task and annotation
configs) and the task D validation data; neither can be installed here, so this binding is kept to
the calls the benchmark's own evaluation makes and everything it feeds (chains, initial scenes,
accounting, resume) lives in protocol.py / sequences.py, which are tested.

    python -m roboalign_jax.eval.calvin.run --calvin_root=~/calvin --dataset=~/calvin/dataset/task_ABC_D \\
        --port=8000 --out_dir=runs/eval/calvin
"""

from __future__ import annotations

import argparse
import json
import os

from roboalign_jax.eval.calvin import protocol


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--calvin_root", required=True, help="the CALVIN repository (calvin_models/conf)")
  parser.add_argument("--dataset", required=True, help="dataset root with validation/ (task D)")
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8000)
  parser.add_argument("--api_key", default=None)
  parser.add_argument("--replan", type=int, default=5)
  parser.add_argument("--num_sequences", type=int, default=1000)
  parser.add_argument("--out_dir", required=True)
  args = parser.parse_args(argv)
  # The benchmark's own packages: present only where CALVIN is installed.
  import hydra  # noqa: PLC0415
  from calvin_env.envs.play_table_env import get_env  # noqa: PLC0415
  from omegaconf import OmegaConf  # noqa: PLC0415
  from openpi_client import websocket_client_policy  # noqa: PLC0415
  conf = os.path.join(os.path.expanduser(args.calvin_root), "calvin_models", "conf")
  oracle = hydra.utils.instantiate(OmegaConf.load(os.path.join(conf, "callbacks/rollout/tasks/new_playtable_tasks.yaml")))
  annotations = OmegaConf.load(os.path.join(conf, "annotations/new_playtable_validation.yaml"))
  instructions = {task: annotations[task][0] for task in annotations}
  env = get_env(os.path.join(os.path.expanduser(args.dataset), "validation"), show_gui=False)
  client = websocket_client_policy.WebsocketClientPolicy(args.host, args.port, api_key=args.api_key)
  os.makedirs(args.out_dir, exist_ok=True)
  scores = protocol.evaluate(env, protocol.ServedChainPolicy(client.infer, args.replan), oracle, instructions,
                             os.path.join(args.out_dir, "results.jsonl"), num_sequences=args.num_sequences)
  with open(os.path.join(args.out_dir, "summary.json"), "w") as f:
    json.dump(scores, f, indent=1)
  print(" ".join(f"{k} in a row: {100 * v:.1f}%" for k, v in scores.items() if k != "avg_len"),
        f"| average length {scores['avg_len']:.2f}")


if __name__ == "__main__":
  main()
