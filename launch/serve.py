"""Serves a saved policy over openpi's websocket protocol (PyPI `openpi-client` talks to it).

  python launch/serve.py --policy_dir=runs/vla/policy                     # ws://127.0.0.1:8000
  python launch/serve.py --policy_dir=runs/vla/policy --host=0.0.0.0 --api_key=$KEY
  curl http://127.0.0.1:8000/healthz                                      # 200 once listening

Concurrent requests are answered in batches of up to --max_batch, gathered for up to
--max_wait_ms (--max_batch=1: one at a time, like openpi). Messages above --max_message_mb are
refused by the websocket layer (close 1009); past --max_connections open connections a new one
gets HTTP 503. A host other than loopback needs --api_key (clients send `Authorization: Api-Key
<key>`; openpi-client's `api_key=`) unless --insecure.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("policy_dir", None, "Policy directory (policy.json + model files) written by a trainer.",
                    required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on; anything but loopback needs --api_key or --insecure.")
flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port, logged).")
flags.DEFINE_string("api_key", None, "Require the header 'Authorization: Api-Key <key>' on every connection.")
flags.DEFINE_bool("insecure", False, "Allow a non-loopback --host without --api_key.")
flags.DEFINE_integer("max_batch", 8, "Most requests answered by one batched forward (1: no batching).")
flags.DEFINE_float("max_wait_ms", 5.0, "How long the first request of a batch waits for others to join it.")
flags.DEFINE_bool("warmup", True, "Compile every batch shape before listening (/healthz answers after that).")
flags.DEFINE_float("max_message_mb", 64.0, "Largest accepted request, MiB (a 224x224x3 uint8 image is 0.14 MiB).")
flags.DEFINE_integer("max_connections", 256, "Most open connections; more are refused with HTTP 503 (idle "
                     "connections are not timed out: openpi's client keeps one for a whole rollout).")
flags.DEFINE_float("handshake_timeout_s", 10.0, "A connection that has not finished its handshake by then is dropped.")


def main(argv):
  del argv
  from roboalign_jax import policies
  from roboalign_jax.serving import PolicyServer, server as server_lib
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  server_args = dict(host=FLAGS.host, port=FLAGS.port, api_key=FLAGS.api_key, insecure=FLAGS.insecure,
                     max_batch=FLAGS.max_batch, max_wait_ms=FLAGS.max_wait_ms,
                     max_message_bytes=int(FLAGS.max_message_mb * 2 ** 20), max_connections=FLAGS.max_connections,
                     handshake_timeout_s=FLAGS.handshake_timeout_s)
  check_args = dict(server_args)
  del check_args["port"]
  try:  # refuse bad flags (e.g. a public host without a key) before spending time on loading
    server_lib.check_options(**check_args)
  except ValueError as error:
    sys.exit(f"launch/serve.py: {error}")
  policy = policies.load(FLAGS.policy_dir)
  server = PolicyServer(policy, warmup=FLAGS.warmup, **server_args)
  logging.info("loaded the %s policy from %s", policy.description.kind, FLAGS.policy_dir)

  async def run():
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
      loop.add_signal_handler(sig, server.stop)
    await server.serve()

  asyncio.run(run())


if __name__ == "__main__":
  app.run(main)
