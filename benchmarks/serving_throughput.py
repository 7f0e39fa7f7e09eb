"""Policy server throughput: requests/s and median latency with 1, 4 and 16 concurrent openpi
clients, against launch/serve.py answering one request at a time (--max_batch=1, as openpi's
server does) and with dynamic batching (--max_batch=16).

    .venv/bin/python benchmarks/serving_throughput.py [--kind vla|fast --clients 1,4,16 --seconds 5
                                                       --max_wait_ms 5 --policy_dir DIR]

Without --policy_dir it serves a tiny policy of the random test backbone (tests/tiny_policies.py,
a LIBERO fixture): "vla" (the default) has a batched forward, "fast" answers a batch one request
after another, so it shows the batching overhead only. Each client (a thread with its own
connection) sends requests back to back; every level first runs untimed so all batch shapes are
compiled, then alternates between the two servers for `--rounds` timed runs (medians reported). Prints the load average before and after: the numbers are only comparable
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from timing import load_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

HORIZON = 4


def tiny_policy(kind: str, root: str) -> tuple[str, list[dict]]:
  """A tiny policy directory and 16 LIBERO requests."""
  import numpy as np
  from roboalign_jax import data
  from roboalign_jax.data import image_transforms
  import tiny_policies
  path = data.write_fixture("libero", os.path.join(root, "rlds"), 3, 0, episode_length=(20, 24))
  config = data.data_config(datasets=[data.dataset_entry("libero", path)], cache_dir=os.path.join(root, "cache"),
                            progress=False, augment=False, action_horizon=HORIZON, image_size=tiny_policies.IMAGE_SIZE)
  handles = data.open_datasets(config)
  source = handles[0].source
  episode = source.episode(int(handles[0].index.episodes[0]))
  requests = []
  for t in range(16):
    request = {"observation/state": episode.states[t], "prompt": episode.instruction}
    for camera, (key, shape) in source.spec.cameras.items():
      request[key] = np.asarray(image_transforms.decode(episode.images[camera][t], shape, dataset="x", episode=0,
                                                        step=t, path=key))
    requests.append(request)
  policy_dir = os.path.join(root, kind)
  if kind == "vla":
    tiny_policies.vla_policy_dir(policy_dir, handles[0], HORIZON)
  else:
    tiny_policies.fast_policy_dir(policy_dir, handles, HORIZON)
  return policy_dir, requests


def start_server(policy_dir: str, port: int, max_batch: int, max_wait_ms: float, log_path: str):
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "serve.py"), f"--policy_dir={policy_dir}",
                           f"--port={port}", f"--max_batch={max_batch}", f"--max_wait_ms={max_wait_ms}"],
                          stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  while True:
    if proc.poll() is not None:
      raise RuntimeError(f"the server exited: {open(log_path).read()[-2000:]}")
    try:
      with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        if response.status == 200:
          return proc
    except OSError:
      time.sleep(0.5)


def load(port: int, clients: int, seconds: float, requests: list[dict]) -> tuple[float, list[float], list[int]]:
  """(requests/s, latencies ms, batch sizes seen) of `clients` threads for `seconds`."""
  from openpi_client.websocket_client_policy import WebsocketClientPolicy
  connections = [WebsocketClientPolicy(host="127.0.0.1", port=port) for _ in range(clients)]
  latencies, batches, lock = [], [], threading.Lock()
  barrier = threading.Barrier(clients)

  def client(i):
    barrier.wait()
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
      started = time.perf_counter()
      out = connections[i].infer(requests[(i + n) % len(requests)])
      with lock:
        latencies.append((time.perf_counter() - started) * 1e3)
        batches.append(out["server_timing"]["batch_size"])
      n += 1

  started = time.perf_counter()
  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - started
  for connection in connections:
    connection._ws.close()
  return len(latencies) / elapsed, latencies, batches


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kind", default="vla", choices=("vla", "fast"))
  parser.add_argument("--policy_dir", default="")
  parser.add_argument("--clients", default="1,4,16")
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--max_wait_ms", type=float, default=5.0)
  parser.add_argument("--rounds", type=int, default=3, help="interleaved timed runs per side and level")
  args = parser.parse_args()
  import portpicker
  root = tempfile.mkdtemp(prefix="serving_bench_")
  policy_dir, requests = tiny_policy(args.kind, root)
  policy_dir = args.policy_dir or policy_dir
  levels = [int(c) for c in args.clients.split(",")]
  if max(levels) < 2:
    parser.error(f"--clients={args.clients}: batching is compared at up to max(clients) requests, so some "
                 "level must be >= 2 (with 1 both servers would be max_batch=1)")
  print(f"{args.kind} policy {policy_dir}; before: {load_line()}")
  # Both servers run side by side (idle while the other is measured); each level alternates
  # between them for --rounds timed runs, so load drift hits both sides alike; medians are reported.
  sides = (1, max(levels))
  procs = {}
  try:
    for max_batch in sides:
      port = portpicker.pick_unused_port()
      procs[max_batch] = (port, start_server(policy_dir, port, max_batch, args.max_wait_ms,
                                             os.path.join(root, f"serve_{max_batch}.log")))
    for clients in levels:
      for max_batch in sides:
        load(procs[max_batch][0], clients, 2 * args.seconds, requests)  # warm-up: compiles this level's shapes
      runs = {max_batch: [] for max_batch in sides}
      for _ in range(args.rounds):
        for max_batch in sides:
          runs[max_batch].append(load(procs[max_batch][0], clients, args.seconds, requests))
      medians = {}
      for max_batch in sides:
        rps = statistics.median(r[0] for r in runs[max_batch])
        latency = statistics.median(statistics.median(r[1]) for r in runs[max_batch])
        batch = statistics.mean(b for r in runs[max_batch] for b in r[2])
        medians[max_batch] = rps
        print(f"max_batch {max_batch:2d}  clients {clients:2d}: median {rps:7.2f} requests/s over {args.rounds} "
              f"interleaved runs, latency median {latency:7.1f} ms; mean batch {batch:.1f}; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
      print(f"{clients:2d} clients: batching {medians[sides[1]] / medians[1]:.2f}x the requests/s of one at a time",
            flush=True)
  finally:
    for _, proc in procs.values():
      proc.terminate()
      proc.wait(timeout=30)
  print(f"after: {load_line()}")


if __name__ == "__main__":
  main()
