"""Fault injection and fuzzing of the policy server (issue 17), in process (PolicyServer on a
thread) with a numpy model behind the real LIBERO request validation, so nothing compiles.

Every bad message (random bytes, truncated msgpack, forged arrays, refused dtypes, each request key
of the wrong type, text frames, a 1 GB frame header) gets an error frame and/or a close on its
own connection; 100 concurrent clients, idle connections and connections dropped mid-handshake or
mid-message leave the server up, leak no descriptor, and a well-formed openpi client keeps being
answered at about its usual latency (generous bounds; the numbers are printed, run with -s).
An audit hook records any unpickling during the whole module.
"""

import ast
import base64
import collections
import os
import pickle
import re
import socket
import statistics
import struct
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from configs_loader import REPO_ROOT
from roboalign_jax.data import normalization
from roboalign_jax.data.specs import get_spec
from roboalign_jax.policies.policy import Policy, PolicyDescription
from roboalign_jax.serving import PolicyServer, msgpack_numpy, serve_in_thread
from roboalign_jax.serving import server as server_lib

HORIZON = 4
MAX_BATCH, MAX_WAIT_MS, MAX_CONNECTIONS, HANDSHAKE_TIMEOUT_S = 8, 50.0, 160, 1.0
LATENCY = {}  # phase -> median ms of the well-formed client, printed at the end

# ---- the audit hook: records unpickling for the whole module (hooks cannot be removed, so it
# records only while `recording`). marshal.loads is not watched: every .pyc import fires it.
AUDIT = {"recording": False, "events": []}


def _audit(event, args):
  if AUDIT["recording"] and event == "pickle.find_class":
    AUDIT["events"].append((event, args))


if not getattr(sys, "_roboalign_serving_audit", False):
  sys.addaudithook(_audit)
  sys._roboalign_serving_audit = True


class _Model:
  """Actions from the state (each answer is checkable); a prompt with "explode" crashes it, and
  with it the whole batch it is in."""

  def __call__(self, inputs):
    if "explode" in inputs["instruction"]:
      raise RuntimeError("crashed on purpose")
    return np.tile(inputs["state"][:7], (HORIZON, 1))

  def batch(self, inputs):
    return np.stack([self(x) for x in inputs])


def _policy():
  spec, rng = get_spec("libero"), np.random.default_rng(0)
  stats = normalization.DatasetStatistics(normalization.Stats.of(rng.normal(size=(200, 7))),
                                          normalization.Stats.of(rng.normal(size=(200, spec.state_dim))), 200, 2)
  description = PolicyDescription(kind="oracle", layout="libero", cameras=("primary", "wrist"), image_size=(32, 32),
                                  state_width=16, action_horizon=HORIZON, statistics=stats)
  return Policy(description, _Model())


def _observation(i=0):
  rng = np.random.default_rng(i)
  return {"observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
          "observation/wrist_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
          "observation/state": np.linspace(-1, 1, 8, dtype=np.float32) * (1 + i % 7) / 7, "prompt": "pick up the bowl"}


def _client(port):
  return WebsocketClientPolicy(host="127.0.0.1", port=port)


def _median_ms(client, n=15, observation=None):
  observation = observation or _observation()
  times = []
  for _ in range(n):
    started = time.perf_counter()
    client.infer(observation)
    times.append((time.perf_counter() - started) * 1e3)
  return statistics.median(times)


def _bound(before):
  return 5 * before + 50


@pytest.fixture(scope="module")
def served():
  AUDIT["recording"] = True
  server = PolicyServer(_policy(), port=0, max_batch=MAX_BATCH, max_wait_ms=MAX_WAIT_MS,
                        max_connections=MAX_CONNECTIONS, handshake_timeout_s=HANDSHAKE_TIMEOUT_S)
  with serve_in_thread(server):
    good = _client(server.port)  # the well-formed client, connected for the whole module
    LATENCY["before"] = _median_ms(good, n=25)
    yield {"server": server, "port": server.port, "good": good, "expected": _policy().infer(_observation())["actions"]}
    good._ws.close()
  AUDIT["recording"] = False
  print("\nwell-formed client median latency (ms):", {k: round(v, 2) for k, v in LATENCY.items()})


def _check_good(served):
  out = served["good"].infer(_observation())
  np.testing.assert_array_equal(out["actions"], served["expected"])
  return out


def _exchange(port, payload):
  """`payload` on a fresh connection: (the text frame answered, the close code)."""
  with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None,
                                      open_timeout=10) as ws:
    ws.recv(timeout=10)  # metadata
    ws.send(payload)
    text = ws.recv(timeout=10)
    with pytest.raises(websockets.exceptions.ConnectionClosedError):
      ws.recv(timeout=10)
    return text, ws.close_code


def _array(dtype, shape, data=b""):
  return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def _raw(changes):
  """A valid request with some keys replaced by forged msgpack values (tagged maps written by hand)."""
  encoded = {k: _array(v.dtype.str, list(v.shape), v.tobytes()) if isinstance(v, np.ndarray) else v
             for k, v in _observation().items()}
  return msgpack.packb({**encoded, **changes}, use_bin_type=True)


# What openpi-style object arrays would carry: a pickle (this one only names os.getpid, so loading it
# looks the function up and calls nothing). It must never be unpickled.
TRAP = pickle.dumps(os.getpid)


def _wrong_values(key, value):
  """Replacements for one request key: (label, value)."""
  shape = np.shape(value) if isinstance(value, np.ndarray) else (8,)
  out = [] if key == "prompt" else [("a string", "oops")]  # (a string is what a prompt is)
  out += [("a list", [1, 2, 3]), ("a dict", {"a": 1}), ("None", None),
         ("a wrong-shape array", np.zeros((2, 2), np.uint8)), ("NaN", np.full(shape, np.nan)),
         ("inf", np.full(shape, np.inf, np.float32)), ("a bool array", np.zeros(shape, bool)),
         ("bytes", b"\x00\x01")]
  if key.startswith("observation/") and key.endswith("image"):
    out.append(("a float image", np.zeros(shape, np.float32)))
  if key == "prompt":
    out.append(("a blank prompt", "   "))
  return out


def _fuzz_cases():
  """(label, payload, regex the error text must match)."""
  rng = np.random.default_rng(17)
  cases = [(f"random bytes seed {seed}", rng.bytes(int(rng.integers(1, 4096))), "") for seed in range(150)]
  valid = msgpack_numpy.packb(_observation())
  cuts = sorted(set(range(0, 48)) | set(int(c) for c in rng.integers(48, len(valid), 60)) | {len(valid) - 1})
  cases += [(f"truncated to {n} of {len(valid)} bytes", valid[:n], "not a valid msgpack message|expected a msgpack "
             "map") for n in cuts]
  cases += [
      ("a text frame", "observation/state", "expected a binary msgpack message; got a text frame"),
      ("2**40 float32 elements in 8 bytes", _raw({"observation/state": _array("<f4", [2 ** 40], b"\0" * 8)}),
       r"shape \(1099511627776,\) and dtype float32 needs 4398046511104 bytes; the message has 8"),
      ("an empty image 2**40 wide", _raw({"observation/image": _array("|u1", [0, 2 ** 40, 3])}),
       "has a dimension over 2147483647"),
      ("an empty image 2**31 wide", _raw({"observation/image": _array("|u1", [0, 2 ** 31, 3])}),
       "has a dimension over 2147483647"),
      ("an object array holding a pickle", _raw({"observation/state": _array("|O", [1], TRAP)}), "object dtype"),
      ("a complex array", _raw({"observation/state": _array("<c8", [8], b"\0" * 64)}), "complex dtype"),
      ("a structured array", _raw({"observation/state": _array("<f4,<i4", [8], b"\0" * 64)}), "structured/void"),
      ("a void array", _raw({"observation/state": _array("|V8", [8], b"\0" * 64)}), "structured/void"),
      ("a zero-size dtype", _raw({"observation/state": _array("S0", [8])}), "zero-size items"),
      ("an unknown dtype", _raw({"observation/state": _array("<q9", [8], b"\0" * 64)}), "unknown dtype"),
      ("a negative shape", _raw({"observation/state": _array("<f4", [-8], b"\0" * 32)}), "non-negative"),
      ("an object numpy scalar", _raw({"prompt": {b"__npgeneric__": True, b"data": 1, b"dtype": "|O"}}),
       "object dtype"),
      ("a list, not a map", msgpack_numpy.packb([1, 2, 3]), "expected a msgpack map of observation keys; got list"),
      ("an empty map", msgpack_numpy.packb({}), "no 'observation/image'"),
      ("integer keys", msgpack.packb({1: 2, 3: 4}), "no 'observation/image'"),
      ("a msgpack ext type", msgpack.packb({"x": msgpack.ExtType(5, b"xx")}), "no 'observation/image'"),
  ]
  for key, value in _observation().items():
    for label, wrong in _wrong_values(key, value):
      cases.append((f"{key} as {label}", msgpack_numpy.packb({**_observation(), key: wrong}),
                    f"observation\\[{re.escape(repr(key))}\\] (is|has non-finite)"))
  cases.append(("a missing key", msgpack_numpy.packb({k: v for k, v in _observation().items() if k != "prompt"}),
                "observation\\['prompt'\\] is None"))
  return cases


def test_fuzzed_messages_are_refused_and_the_server_keeps_serving(served):
  """Each fuzz case on its own connection gets a "bad request: ..." text frame and close 1011,
  while the well-formed client, asking all along, is answered within a generous latency bound."""
  cases, failures, during, tried = _fuzz_cases(), [], [], []
  done = threading.Event()

  def fuzz():
    try:
      for label, payload, pattern in cases:
        try:
          text, code = _exchange(served["port"], payload)
        except Exception as error:  # a hang or a dropped connection is a failure too
          failures.append((label, repr(error)))
          continue
        tried.append(label)
        if not (isinstance(text, str) and text.startswith("bad request: ") and code == 1011
                and re.search(pattern, text) and "Traceback" not in text and REPO_ROOT not in text):
          failures.append((label, code, text[:300]))
    finally:
      done.set()

  thread = threading.Thread(target=fuzz)
  thread.start()
  while not done.is_set():  # the well-formed client, while the fuzzer runs
    during.append(_median_ms(served["good"], n=3))
  thread.join()
  assert not failures, failures[:10]
  assert len(tried) == len(cases) > 300
  LATENCY["during fuzzing"] = statistics.median(during)
  LATENCY["after fuzzing"] = _median_ms(served["good"])
  _check_good(served)
  assert LATENCY["during fuzzing"] < _bound(LATENCY["before"]), LATENCY
  assert LATENCY["after fuzzing"] < _bound(LATENCY["before"]), LATENCY
  # An error naming a huge value is cut (the reply and the log stay small).
  text, code = _exchange(served["port"], msgpack_numpy.packb({**_observation(), "prompt": list(range(200_000))}))
  assert code == 1011 and len(text) < server_lib.MAX_ERROR_CHARS + 100 and text.endswith("more characters)"), text[-80:]


def test_a_request_that_crashes_the_model_fails_alone(served):
  """Three good requests and one that crashes the (batched) model arrive together: the batch is
  answered one by one, so only the crashing request fails."""
  port, n = served["port"], 4
  connections = [websockets.sync.client.connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None)
                 for _ in range(n)]
  barrier, answers = threading.Barrier(n), [None] * n
  payloads = [msgpack_numpy.packb({**_observation(i), "prompt": "explode" if i == 2 else "pick"}) for i in range(n)]

  def ask(i):
    connections[i].recv(timeout=10)
    barrier.wait()
    connections[i].send(payloads[i])
    answers[i] = connections[i].recv(timeout=30)

  threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(timeout=60)
  for connection in connections:
    connection.close()
  assert answers[2] == "inference failed (RuntimeError); see the server log"
  expected = _policy()
  good = [msgpack_numpy.unpackb(answers[i]) for i in (0, 1, 3)]
  for i, out in zip((0, 1, 3), good):
    np.testing.assert_array_equal(out["actions"], expected.infer({**_observation(i), "prompt": "pick"})["actions"])
  assert max(out["server_timing"]["batch_size"] for out in good) > 1  # they did share a batch with it
  _check_good(served)


def _handshake(port):
  """A raw socket that completed the websocket handshake (the metadata frame is left unread)."""
  sock = socket.create_connection(("127.0.0.1", port), timeout=10)
  key = base64.b64encode(os.urandom(16)).decode()
  sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
  response = b""
  while b"\r\n\r\n" not in response:
    chunk = sock.recv(4096)
    assert chunk, response
    response += chunk
  assert response.startswith(b"HTTP/1.1 101"), response[:200]
  return sock, response.split(b"\r\n\r\n", 1)[1]


def _frames(data):
  """Server frames (unmasked) in `data`: [(opcode, payload)]."""
  frames, i = [], 0
  while i + 2 <= len(data):
    opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
    i += 2
    if length == 126:
      length, i = struct.unpack(">H", data[i:i + 2])[0], i + 2
    elif length == 127:
      length, i = struct.unpack(">Q", data[i:i + 8])[0], i + 8
    frames.append((opcode, data[i:i + length]))
    i += length
  return frames


def _read_to_eof(sock, already=b"", timeout=10.0):
  data, deadline = already, time.monotonic() + timeout
  sock.settimeout(timeout)
  while time.monotonic() < deadline:
    try:
      chunk = sock.recv(65536)
    except (ConnectionResetError, socket.timeout):
      break
    if not chunk:
      break
    data += chunk
  return data


def _frame_header(length, opcode=0x2):
  # A client frame: FIN + opcode, masked, 64-bit length, then the mask key.
  return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", length) + os.urandom(4)


def test_a_1gb_frame_is_closed_1009_without_buffering(served):
  """A frame header declaring 1 GiB (then a little data, never 1 GiB): closed with 1009 at once."""
  sock, rest = _handshake(served["port"])
  sock.sendall(_frame_header(2 ** 30))
  sent = 0
  try:  # keep sending: the server must close long before 1 GB arrives
    for _ in range(256):
      sock.sendall(b"\0" * 65536)
      sent += 65536
  except (BrokenPipeError, ConnectionResetError):
    pass
  frames = _frames(_read_to_eof(sock, rest))
  sock.close()
  closes = [payload for opcode, payload in frames if opcode == 0x8]
  assert closes and struct.unpack(">H", closes[0][:2])[0] == 1009, frames[:3]
  assert b"frame with 1073741824 bytes exceeds limit" in closes[0], closes[0]
  assert sent < 2 ** 30
  _check_good(served)


def test_100_concurrent_connections_are_answered_and_batched(served):
  """100 openpi clients, 3 requests each at once: every answer is right and batches fill up."""
  n, rounds = 100, 3
  clients = [_client(served["port"]) for _ in range(n)]
  barrier, outs, errors = threading.Barrier(n), [[] for _ in range(n)], []
  expected = _policy()

  def run(i):
    try:
      barrier.wait()
      for r in range(rounds):
        outs[i].append((r, clients[i].infer(_observation(i + r))))
    except Exception as error:  # reported below
      errors.append((i, repr(error)))

  threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
  for thread in threads:
    thread.start()
  during = _median_ms(served["good"], n=10)
  for thread in threads:
    thread.join(timeout=120)
  for client in clients:
    client._ws.close()
  assert not errors, errors[:5]
  sizes = []
  for i, results in enumerate(outs):
    assert len(results) == rounds
    for r, out in results:
      np.testing.assert_array_equal(out["actions"], expected.infer(_observation(i + r))["actions"])
      sizes.append(out["server_timing"]["batch_size"])
  assert max(sizes) == MAX_BATCH and min(sizes) >= 1, collections.Counter(sizes)
  assert statistics.mean(sizes) > 2, collections.Counter(sizes)  # batching works under load
  LATENCY["while 100 clients ask"] = during
  print("\nbatch sizes with 100 concurrent clients:", sorted(collections.Counter(sizes).items()))
  _check_good(served)


def _wait_until(condition, timeout=10.0):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, "timed out waiting"
    time.sleep(0.05)


def test_idle_connections_do_not_delay_others_and_are_capped(served):
  """100 connections that never send: the batcher stops waiting for them once they are idle, so the
  well-formed client's requests do not sit out max_wait_ms; past max_connections upgrades get 503."""
  server = served["server"]
  base = server.open_connections
  idle = [_handshake(served["port"])[0] for _ in range(100)]
  _wait_until(lambda: server.open_connections == base + 100)
  time.sleep(server_lib.ACTIVE_S + 0.2)  # they are idle now: the batcher must not wait for them
  LATENCY["with 100 idle connections"] = _median_ms(served["good"])
  queue_ms = [_check_good(served)["server_timing"]["queue_ms"] for _ in range(5)]
  assert statistics.median(queue_ms) < MAX_WAIT_MS / 2, queue_ms  # (it would be ~MAX_WAIT_MS)
  assert LATENCY["with 100 idle connections"] < _bound(LATENCY["before"]), LATENCY
  # Past max_connections the upgrade is refused with 503; the open ones keep being served.
  idle += [_handshake(served["port"])[0] for _ in range(MAX_CONNECTIONS - server.open_connections)]
  _wait_until(lambda: server.open_connections == MAX_CONNECTIONS)
  with pytest.raises(websockets.exceptions.InvalidStatus, match="503") as refused:
    _client(served["port"])
  assert b"server busy: 160 connections open" in refused.value.response.body
  with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/healthz", timeout=5) as response:
    assert response.status == 200
  _check_good(served)
  for sock in idle:
    sock.close()
  _wait_until(lambda: server.open_connections == base)
  client = _client(served["port"])  # room again
  np.testing.assert_array_equal(client.infer(_observation())["actions"], served["expected"])
  client._ws.close()
  with pytest.raises(ValueError, match="max_connections=0, .*expected max_connections >= 1"):
    PolicyServer(_policy(), max_connections=0)


def _open_fds():
  return len(os.listdir("/proc/self/fd"))


def test_dropped_and_stalled_connections_leak_nothing(served):
  """Eight ways a connection ends badly, during the handshake or mid-message: the server drops each
  (a stalled handshake after handshake_timeout_s), keeps serving, and its descriptors and
  connection count come back to where they were."""
  port, server = served["port"], served["server"]
  _check_good(served)
  fds, base = _open_fds(), server.open_connections
  request = msgpack_numpy.packb(_observation())
  # 1. TCP connect and close; 2. half an HTTP request, then close; 3. a plain HTTP GET (no upgrade).
  socket.create_connection(("127.0.0.1", port)).close()
  with socket.create_connection(("127.0.0.1", port)) as sock:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
  with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _read_to_eof(sock).startswith(b"HTTP/1.1 4")  # 426 Upgrade Required
  # 4. half a handshake, then silence: dropped after handshake_timeout_s.
  with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    _read_to_eof(sock, timeout=HANDSHAKE_TIMEOUT_S + 5)
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT_S + 4
  # 5. a frame cut mid-payload; 6. a frame cut mid-header; 7. a whole frame (its payload not masked, so
  # garbage to the server), the socket closed before the refusal can be sent.
  for cut in (_frame_header(len(request)) + request[:1000], _frame_header(len(request))[:5],
              _frame_header(len(request)) + request):
    sock, _ = _handshake(port)
    sock.sendall(cut)
    sock.close()
  # 8. a valid request, then gone without a close frame before the answer.
  with websockets.sync.client.connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as ws:
    ws.recv(timeout=10)
    ws.send(request)
    ws.socket.shutdown(socket.SHUT_RDWR)
  _check_good(served)
  _wait_until(lambda: server.open_connections == base and _open_fds() == fds)
  assert server.listening.is_set()


def test_nothing_is_unpickled_while_serving(served):
  """No pickle.find_class audit event in the whole module, though pickles were sent."""
  # The object-dtype pickle once more, so this test stands alone; then the module's whole record.
  text, code = _exchange(served["port"], _raw({"observation/state": _array("|O", [1], TRAP)}))
  assert code == 1011 and "object dtype" in text
  assert AUDIT["events"] == [], AUDIT["events"]
  pickle.loads(TRAP)  # the hook does see unpickling (the trap only calls os.getpid)
  assert [args[1] for _, args in AUDIT["events"]] == ["getpid"]
  AUDIT["events"].clear()


def test_serving_and_policies_never_unpickle():
  """Static: no pickle-family import and no np.load(allow_pickle=...) in serving/ or policies/."""
  found = []
  for package in ("serving", "policies"):
    folder = os.path.join(REPO_ROOT, "roboalign_jax", package)
    for name in sorted(os.listdir(folder)):
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      for node in ast.walk(ast.parse(open(path).read(), path)):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{path}:{node.lineno} imports {m}" for m in modules
                  if m.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib")]
        if isinstance(node, ast.Call) and any(k.arg == "allow_pickle" for k in node.keywords):
          found.append(f"{path}:{node.lineno} passes allow_pickle")
  assert not found, found
