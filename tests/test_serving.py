"""The policy server: openpi's msgpack encoding (byte-identical to openpi-client's, refusing what
cannot travel safely); launch/serve.py answering the real openpi-client as the policy does in
process, with /healthz, API keys, bad requests refused per connection, and batched concurrency;
a VLA policy's batched forward answering as its single calls do."""

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import portpicker
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from configs_loader import REPO_ROOT
from roboalign_jax import policies
from roboalign_jax.policies.policy import Policy, PolicyDescription
from roboalign_jax.serving import PolicyServer, msgpack_numpy, serve_in_thread
from test_transforms_policy import HORIZON, _request, libero  # noqa: F401  (the LIBERO fixture and requests)
import tiny_policies

SERVE = os.path.join(REPO_ROOT, "launch", "serve.py")
KEY = "test-key"


# ---- msgpack_numpy -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_, "S3"])
def test_msgpack_round_trip_matches_openpi_client(dtype):
  rng = np.random.default_rng(0)
  array = (rng.uniform(0, 100, (2, 3, 4))).astype(dtype)
  message = {"array": array, "scalar": array.reshape(-1)[1], "empty": np.zeros((0, 3), dtype),
             "nested": {"list": [1, "two", 3.0], "text": "prompt"}}
  packed = msgpack_numpy.packb(message)
  assert packed == openpi_msgpack.packb(message)  # the same bytes on the wire as openpi
  for back in (msgpack_numpy.unpackb(packed), openpi_msgpack.unpackb(packed)):
    np.testing.assert_array_equal(back["array"], array)
    assert back["array"].dtype == array.dtype and back["empty"].shape == (0, 3)
    # (np.float64 subclasses float, so msgpack packs it as a plain float, as openpi does)
    assert back["scalar"] == array.reshape(-1)[1] and np.asarray(back["scalar"]).dtype == array.dtype
    assert back["nested"] == {"list": [1, "two", 3.0], "text": "prompt"}


@pytest.mark.parametrize("value", [np.array([object(), 1], dtype=object), np.zeros(3, np.complex64),
                                   np.complex128(1j), np.zeros(2, dtype=[("a", "<i4")])])
def test_msgpack_refuses_object_complex_and_void_dtypes(value):
  with pytest.raises(ValueError, match="dtype"):
    msgpack_numpy.packb({"x": value})


def _forged(fields):
  entry = {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": (2,)}
  entry.update(fields)
  return msgpack.packb({"x": entry}, use_bin_type=True)


@pytest.mark.parametrize("fields, message", [
    ({b"shape": (2 ** 40, 2 ** 20)}, r"shape \(1099511627776, 1048576\) .* needs \d+ bytes; the message has 8"),
    ({b"shape": (3,)}, "needs 12 bytes; the message has 8"),
    ({b"shape": (-2, -1)}, "must be non-negative integers"),
    ({b"dtype": "|O"}, "object dtype"),
    ({b"dtype": "<c8", b"shape": (1,)}, "complex dtype"),
    ({b"dtype": "not-a-dtype"}, "unknown dtype"),
])
def test_msgpack_unpack_refuses_inconsistent_arrays(fields, message):
  with pytest.raises(msgpack_numpy.MessageError, match=message):
    msgpack_numpy.unpackb(_forged(fields))
  with pytest.raises(msgpack_numpy.MessageError, match="not a valid msgpack message"):
    msgpack_numpy.unpackb(b"\xc1\x00garbage")
  with pytest.raises(msgpack_numpy.MessageError, match="object dtype"):
    msgpack_numpy.unpackb(msgpack.packb({"s": {b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}}))


# ---- the server --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_dir(libero, tmp_path_factory):
  return tiny_policies.fast_policy_dir(str(tmp_path_factory.mktemp("served") / "policy"), libero["handles"], HORIZON)


def serve_command(policy_dir, port, *flags):
  return [sys.executable, SERVE, f"--policy_dir={policy_dir}", f"--port={port}", *flags]


def _health(port):
  try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
      return response.status
  except (urllib.error.URLError, ConnectionError):
    return None


@pytest.fixture(scope="module")
def server(policy_dir, tmp_path_factory):
  """launch/serve.py with an API key, batches of up to 4 gathered for up to 1 s."""
  port = portpicker.pick_unused_port()
  log_path = tmp_path_factory.mktemp("server") / "serve.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(serve_command(policy_dir, port, f"--api_key={KEY}", "--max_batch=4", "--max_wait_ms=1000"),
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
  deadline = time.time() + 240
  while _health(port) != 200:
    assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
    time.sleep(0.5)
  yield {"port": port, "proc": proc, "log": log_path}
  proc.terminate()
  assert proc.wait(timeout=30) == 0, open(log_path).read()[-3000:]


@pytest.fixture(scope="module")
def requests(libero, policy_dir):
  """Four requests and what the policy answers to them in process."""
  handle = libero["handles"][0]
  episode = int(handle.index.episodes[0])
  out = [_request(handle, episode, t)[0] for t in range(4)]
  policy = policies.load(policy_dir)
  return out, [policy.infer(r)["actions"] for r in out], policy.metadata


def _client(port, api_key=KEY):
  return WebsocketClientPolicy(host="127.0.0.1", port=port, api_key=api_key)


def test_openpi_client_round_trip(server, requests):
  observations, expected, metadata = requests
  assert _health(server["port"]) == 200
  client = _client(server["port"])
  assert client.get_server_metadata() == metadata
  for observation, actions in zip(observations[:2], expected):
    out = client.infer(observation)
    assert out["actions"].dtype == np.float32 and out["actions"].shape == (HORIZON, 7)
    np.testing.assert_array_equal(out["actions"], actions)
    assert out["policy_timing"]["infer_ms"] > 0 and out["server_timing"]["infer_ms"] > 0
    assert out["server_timing"]["batch_size"] == 1
    # The only open connection: the batcher does not wait its 1 s for others.
    assert out["server_timing"]["queue_ms"] < 500, out["server_timing"]


def test_api_key_is_required(server, requests):
  with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
    _client(server["port"], api_key=None)
  with pytest.raises(websockets.exceptions.InvalidStatus, match="401"):
    _client(server["port"], api_key="wrong")


def _bad_exchange(port, payload):
  """Sends `payload` on a fresh connection: (the text frame answered, the close code)."""
  with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", additional_headers={"Authorization": f"Api-Key {KEY}"},
                                      max_size=None, compression=None) as ws:
    ws.recv()  # metadata
    ws.send(payload)
    text = ws.recv()
    with pytest.raises(websockets.exceptions.ConnectionClosedError):
      ws.recv()
    return text, ws.close_code


@pytest.mark.parametrize("change, message", [
    (lambda r: os.urandom(64), "bad request: not a valid msgpack message"),
    (lambda r: msgpack_numpy.packb([1, 2, 3]), "expected a msgpack map of observation keys; got list"),
    (lambda r: msgpack_numpy.packb({"prompt": r["prompt"]}), "no 'observation/image'"),
    (lambda r: msgpack_numpy.packb({**r, "observation/image": r["observation/image"].astype(np.float32)}),
     r"observation\['observation/image'\] is float32 .*expected uint8"),
])
def test_bad_requests_close_1011_and_the_server_keeps_serving(server, requests, change, message):
  observations, expected, _ = requests
  text, code = _bad_exchange(server["port"], change(observations[0]))
  assert isinstance(text, str) and code == 1011
  assert __import__("re").search(message, text), text
  assert "Traceback" not in text and REPO_ROOT not in text
  np.testing.assert_array_equal(_client(server["port"]).infer(observations[0])["actions"], expected[0])


def test_openpi_client_raises_with_the_servers_message(server, requests):
  observations, _, _ = requests
  client = _client(server["port"])
  with pytest.raises(RuntimeError, match="Error in inference server:\nbad request: .*observation/state"):
    client.infer({k: v for k, v in observations[0].items() if k != "observation/state"})


def test_concurrent_clients_are_batched(server, requests):
  observations, expected, _ = requests
  clients = [_client(server["port"]) for _ in observations]
  barrier, results = threading.Barrier(len(clients)), [None] * len(clients)

  def ask(i):
    barrier.wait()
    results[i] = clients[i].infer(observations[i])

  threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(clients))]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=120)
  for result, actions in zip(results, expected):
    np.testing.assert_array_equal(result["actions"], actions)
  # All four arrive well within the 1 s gathering window: one batch of four.
  assert [r["server_timing"]["batch_size"] for r in results] == [4] * 4, [r["server_timing"] for r in results]


def test_public_host_without_a_key_is_refused(policy_dir):
  proc = subprocess.run(serve_command(policy_dir, 0, "--host=0.0.0.0"), cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0
  assert "host '0.0.0.0' is not loopback: set an API key (--api_key)" in proc.stderr and "--insecure" in proc.stderr


def test_vla_batched_inference_equals_single_calls(libero, requests, tmp_path):
  handle = libero["handles"][0]
  policy = policies.load(tiny_policies.vla_policy_dir(str(tmp_path / "vla"), handle, HORIZON))
  observations = requests[0][:3]  # 3: padded to a batch of 4 inside
  policy.warmup()  # compiles the single-request shape and leaves the noise numbering as it was
  assert policy._model.calls == 0
  single = [policy.infer(o)["actions"] for o in observations]
  policy._model.calls = 0  # the batch draws the noise of calls 0, 1, 2 again
  bad = {k: v for k, v in observations[1].items() if k != "observation/wrist_image"}
  batched = policy.infer_batch([observations[0], bad, observations[1], observations[2]], return_errors=True)
  assert isinstance(batched[1], KeyError) and "observation/wrist_image" in str(batched[1])
  for out, actions in zip([batched[0]] + batched[2:], single):
    assert out["actions"].shape == (HORIZON, 7) and out["actions"].dtype == np.float32
    np.testing.assert_allclose(out["actions"], actions, atol=1e-5)
  assert policy._model.calls == 3
  with pytest.raises(KeyError, match="observation/wrist_image"):
    policy.infer_batch([observations[0], bad])


def test_a_model_failure_is_not_leaked_and_the_server_keeps_serving(libero, requests):
  """In process (PolicyServer on a thread): a model that raises answers 1011 with the error's type
  only (its message may hold server internals), and the next request is answered."""
  handle = libero["handles"][0]
  description = PolicyDescription(kind="oracle", layout="libero", cameras=("primary", "wrist"), image_size=(112, 112),
                                  state_width=64, action_horizon=HORIZON, statistics=handle.statistics)

  def model(inputs):
    if inputs["instruction"] == "explode":
      raise RuntimeError("secret /srv/internal/path")
    return np.zeros((HORIZON, 7), np.float32)

  with serve_in_thread(PolicyServer(Policy(description, model), port=0, max_batch=2, max_wait_ms=1)) as server:
    assert _health(server.port) == 200
    observation = requests[0][0]
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}") as ws:
      ws.recv()
      ws.send(msgpack_numpy.packb({**observation, "prompt": "explode"}))
      text = ws.recv()
      with pytest.raises(websockets.exceptions.ConnectionClosedError):
        ws.recv()
    assert text == "inference failed (RuntimeError); see the server log" and ws.close_code == 1011
    out = WebsocketClientPolicy(host="127.0.0.1", port=server.port).infer(observation)
    assert out["actions"].shape == (HORIZON, 7)
  assert not server.listening.is_set()  # stopped on leaving the block
