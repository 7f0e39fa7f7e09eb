"""Serving a Policy over openpi's websocket protocol (the client is PyPI's `openpi-client`).

    python launch/serve.py --policy_dir=runs/vla/policy       # ws://127.0.0.1:8000, GET /healthz
"""

from roboalign_jax.serving import msgpack_numpy
from roboalign_jax.serving.server import DEFAULT_MAX_MESSAGE_BYTES, PolicyServer, serve_in_thread

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "PolicyServer", "msgpack_numpy", "serve_in_thread"]
