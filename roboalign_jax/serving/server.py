"""A websocket policy server speaking openpi's protocol, with dynamic batching.

    server = PolicyServer(policies.load(policy_dir), host="127.0.0.1", port=8000)
    asyncio.run(server.serve())          # until stop() (launch/serve.py wires SIGINT/SIGTERM to it)

    with serve_in_thread(PolicyServer(policy, port=0)) as server:   # notebooks, tests: a background
      client = WebsocketClientPolicy(port=server.port)               # thread, stopped on exit

Protocol (what openpi's `WebsocketClientPolicy` from PyPI `openpi-client` expects):
  * on connect the server sends the policy's metadata (msgpack_numpy);
  * then each binary message is an observation dict, answered with
    {"actions": float32 [H, 7], "policy_timing": {"infer_ms"}, "server_timing": {"infer_ms",
    "batch_size", "queue_ms", "prev_total_ms"}};
  * a request the server cannot answer (not msgpack, not a dict, an observation the policy's own
    validation rejects) gets the error text as a text frame and the connection is closed with
    1011, as openpi does; other connections are unaffected;
  * `GET /healthz` -> 200 (no key needed, for load balancers / readiness probes).

Faults (tests/test_serving_faults.py injects each): a message over `max_message_bytes` is closed
with 1009 as soon as its frame header declares the size (nothing is buffered); a handshake not
completed within `handshake_timeout_s` is dropped; a peer that stops answering websockets' pings
(every 20 s) is dropped 20 s later. Idle but live connections are not timed out (openpi's client
holds one connection for a whole rollout and does not reconnect), so the number of open
connections is capped instead: past `max_connections` the upgrade is refused with 503 and the
connections already open keep being served (with an API key, only key holders can take a place).
Nothing a client sends is ever unpickled.

Auth: with an API key, the websocket upgrade needs the header `Authorization: Api-Key <key>`
(what openpi-client sends for `api_key=`), else 401. A host other than loopback needs a key
unless `insecure=True`: a policy server runs a large model for anyone who can reach it.

Dynamic batching (not in openpi): requests from all connections go to one queue; the batcher
takes the first, waits up to `max_wait_ms` for more (at most `max_batch`, and no longer once
every active connection has a request in the batch; a connection is active for `ACTIVE_S` after
it connected or last asked, so idle connections do not delay anyone) and answers them with one
`Policy.infer_batch`. If a batch fails inside the model, its requests are run again one by one,
so a request that crashes the model fails alone. Inference runs on one worker thread, so the
event loop keeps accepting and queueing requests while a batch runs. Before listening the server
runs `Policy.warmup`, so every batch shape is compiled before the first client waits on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import http
import ipaddress
import logging
import threading
import time

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request

from roboalign_jax.policies.policy import Policy
from roboalign_jax.serving import msgpack_numpy

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a few 224x224 uint8 images are ~150 KB each
DEFAULT_MAX_CONNECTIONS = 256  # far above a robot fleet's; well below a process's file descriptor limit
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
# A connection that neither connected nor sent a request this recently is idle: the batcher does not
# wait for it (a robot's control loop asks several times a second).
ACTIVE_S = 1.0
GATHER_POLL_S = 0.005  # while gathering a batch, how often the number of active connections is re-read
MAX_ERROR_CHARS = 1000  # an error naming a huge value (a 1 MB prompt list) is cut, in the log and the reply
HEALTH_PATH = "/healthz"
ERROR_CLOSE_CODE = 1011  # "internal error": what openpi closes with after sending the error text
# What a policy's input validation raises for a bad observation (a bad request, not a server fault).
REQUEST_ERRORS = (msgpack_numpy.MessageError, KeyError, ValueError, TypeError)


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:  # a hostname other than localhost: may resolve to a public address
    return False


def error_text(error: BaseException) -> str:
  # KeyError's str() is the repr of its argument; the message itself reads better.
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return f"bad request: {message}"


def shorten(text: str) -> str:
  if len(text) <= MAX_ERROR_CHARS:
    return text
  return f"{text[:MAX_ERROR_CHARS]}... ({len(text) - MAX_ERROR_CHARS} more characters)"


def check_options(*, host: str, api_key: str | None, insecure: bool, max_batch: int, max_wait_ms: float,
                  max_message_bytes: int, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                  handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S) -> None:
  """ValueError for options a server must not start with (checked before a policy is loaded)."""
  if not api_key and not insecure and not is_loopback(host):
    raise ValueError(f"host {host!r} is not loopback: set an API key (--api_key) so only clients holding it are "
                     "answered, or pass --insecure to serve it to anyone who can reach the port")
  if max_batch < 1 or max_wait_ms < 0 or max_message_bytes < 1:
    raise ValueError(f"max_batch={max_batch}, max_wait_ms={max_wait_ms}, max_message_bytes={max_message_bytes}; "
                     "expected max_batch >= 1, max_wait_ms >= 0, max_message_bytes >= 1")
  if max_connections < 1 or not handshake_timeout_s > 0:
    raise ValueError(f"max_connections={max_connections}, handshake_timeout_s={handshake_timeout_s}; expected "
                     "max_connections >= 1 and handshake_timeout_s > 0")


class InferenceError(RuntimeError):
  """A batch failed inside the model (not a bad request); the details are in the server log."""


@dataclasses.dataclass
class _Pending:
  observation: dict
  future: asyncio.Future
  queued: float


class PolicyServer:
  """Serves one Policy over openpi's websocket protocol (see the module docstring)."""

  def __init__(self, policy: Policy, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               insecure: bool = False, max_batch: int = 8, max_wait_ms: float = 5.0,
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, warmup: bool = True,
               max_connections: int = DEFAULT_MAX_CONNECTIONS,
               handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S):
    check_options(host=host, api_key=api_key, insecure=insecure, max_batch=max_batch, max_wait_ms=max_wait_ms,
                  max_message_bytes=max_message_bytes, max_connections=max_connections,
                  handshake_timeout_s=handshake_timeout_s)
    self.policy, self.host, self.port = policy, host, port
    self.api_key = api_key or None
    self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1e3
    self.max_message_bytes = int(max_message_bytes)
    self.warmup = warmup
    self.max_connections, self.handshake_timeout_s = int(max_connections), float(handshake_timeout_s)
    # Open connections (those that received the metadata) -> when they connected or last sent a request.
    self._activity: dict[ServerConnection, float] = {}
    self._queue: asyncio.Queue[_Pending] | None = None
    self._stop: asyncio.Event | None = None
    self.listening = threading.Event()  # set while bound (self.port is then the real port)
    # One inference thread: JAX calls are serialised and the event loop stays free.
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")

  # ---- HTTP side: health and auth, before the websocket upgrade --------------------------------
  def _process_request(self, connection: ServerConnection, request: Request):
    if request.path == HEALTH_PATH:
      return connection.respond(http.HTTPStatus.OK, "OK\n")
    if self.api_key is not None:
      given = request.headers.get("Authorization", "")
      if not hmac.compare_digest(given.encode(), f"Api-Key {self.api_key}".encode()):
        log.warning("refused a connection from %s: missing or wrong API key", connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                  "missing or wrong API key; expected the header 'Authorization: Api-Key <key>'\n")
    # Counted after the handshake, so a burst of simultaneous upgrades may pass the cap by a few.
    if len(self._activity) >= self.max_connections:
      log.warning("refused a connection from %s: %d connections open (max_connections)", connection.remote_address,
                  len(self._activity))
      return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                f"server busy: {len(self._activity)} connections open, the most it serves "
                                f"(max_connections={self.max_connections}); retry later\n")
    return None

  # ---- one connection ------------------------------------------------------------------------
  async def _handle(self, ws: ServerConnection) -> None:
    log.info("connection from %s", ws.remote_address)
    try:
      await ws.send(msgpack_numpy.packb(self.policy.metadata))
    except websockets.ConnectionClosed:
      return
    self._activity[ws] = time.monotonic()
    try:
      await self._serve_connection(ws)
    finally:
      del self._activity[ws]

  @property
  def open_connections(self) -> int:
    """Connections being served (handshake done, not yet closed)."""
    return len(self._activity)

  def _active_connections(self) -> int:
    since = time.monotonic() - ACTIVE_S
    return sum(t >= since for t in self._activity.values())

  async def _serve_connection(self, ws: ServerConnection) -> None:
    previous_total = None
    while True:
      try:
        message = await ws.recv()
      except websockets.ConnectionClosed:
        return
      received = time.perf_counter()
      self._activity[ws] = time.monotonic()
      try:
        if isinstance(message, str):
          raise msgpack_numpy.MessageError("expected a binary msgpack message; got a text frame")
        observation = msgpack_numpy.unpackb(message)
        if not isinstance(observation, dict):
          raise msgpack_numpy.MessageError(f"expected a msgpack map of observation keys; got "
                                           f"{type(observation).__name__}")
        result, timing = await self._submit(observation)
      except REQUEST_ERRORS as error:
        await self._refuse(ws, error_text(error))
        return
      except InferenceError as error:  # logged by the batcher; the client learns only that it failed
        await self._refuse(ws, f"inference failed ({error}); see the server log")
        return
      result["server_timing"] = {**timing, "prev_total_ms": previous_total}
      if previous_total is None:
        del result["server_timing"]["prev_total_ms"]
      try:
        await ws.send(msgpack_numpy.packb(result))
      except websockets.ConnectionClosed:
        return
      previous_total = (time.perf_counter() - received) * 1e3

  async def _refuse(self, ws: ServerConnection, text: str) -> None:
    text = shorten(text)
    log.info("refused a request from %s: %s", ws.remote_address, text)
    try:
      await ws.send(text)
      # A close reason must fit in a control frame (123 bytes); the full text went in the frame above.
      await ws.close(ERROR_CLOSE_CODE, text.encode()[:120].decode(errors="ignore"))
    except websockets.ConnectionClosed:
      pass

  async def _submit(self, observation: dict) -> tuple[dict, dict]:
    future = asyncio.get_running_loop().create_future()
    await self._queue.put(_Pending(observation, future, time.perf_counter()))
    return await future

  # ---- the batcher -----------------------------------------------------------------------------
  async def _batcher(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = [await self._queue.get()]
      deadline = loop.time() + self.max_wait
      # Each connection has at most one request in flight (openpi's client waits for each answer),
      # so once every active connection is in the batch nobody else can join: do not wait. The count
      # is re-read while waiting: a connection that closes or turns idle stops holding the batch.
      while len(batch) < min(self.max_batch, self._active_connections()):
        remaining = deadline - loop.time()
        try:
          batch.append(self._queue.get_nowait() if remaining <= 0 else
                       await asyncio.wait_for(self._queue.get(), min(remaining, GATHER_POLL_S)))
        except asyncio.QueueEmpty:
          break
        except asyncio.TimeoutError:
          continue
      started = time.perf_counter()
      try:
        results = await self._infer(batch)
      except Exception as error:
        if len(batch) == 1:
          log.exception("a request failed inside the model")
          results = [InferenceError(type(error).__name__)]
        else:  # one request may have crashed the model: run them one by one so only its own fails
          log.warning("a batch of %d requests failed (%s: %s); answering them one by one", len(batch),
                      type(error).__name__, error)
          results = []
          for pending in batch:
            try:
              results += await self._infer([pending])
            except Exception as single_error:
              log.exception("a request failed inside the model")
              results.append(InferenceError(type(single_error).__name__))
      infer_ms = (time.perf_counter() - started) * 1e3
      for pending, result in zip(batch, results):
        if pending.future.done():
          continue
        if isinstance(result, BaseException):
          pending.future.set_exception(result)
        else:
          pending.future.set_result((result, {"infer_ms": infer_ms, "batch_size": len(batch),
                                              "queue_ms": (started - pending.queued) * 1e3}))

  async def _infer(self, batch: list[_Pending]) -> list:
    return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: self.policy.infer_batch(
        [p.observation for p in batch], return_errors=True))

  # ---- lifecycle -------------------------------------------------------------------------------
  async def serve(self) -> None:
    """Listens until `stop()`; `self.port` is the bound port (useful with port=0)."""
    self._queue, self._stop = asyncio.Queue(), asyncio.Event()
    if self.warmup:  # compile before listening: /healthz answers only once requests are fast
      started = time.perf_counter()
      await asyncio.get_running_loop().run_in_executor(self._executor, self.policy.warmup, self.max_batch)
      log.info("warmed up (batches up to %d) in %.1f s", self.max_batch, time.perf_counter() - started)
    batcher = asyncio.create_task(self._batcher())
    try:
      async with serve(self._handle, self.host, self.port, process_request=self._process_request,
                       max_size=self.max_message_bytes, compression=None,
                       open_timeout=self.handshake_timeout_s) as server:
        self.port = server.sockets[0].getsockname()[1]
        self.listening.set()
        host = f"[{self.host}]" if ":" in self.host else self.host
        log.info("serving the %s policy on ws://%s:%d (health: http://%s:%d%s; max batch %d, max wait %.1f ms, "
                 "max message %.1f MiB%s)", self.policy.description.kind, host, self.port, host, self.port,
                 HEALTH_PATH, self.max_batch, self.max_wait * 1e3, self.max_message_bytes / 2 ** 20,
                 ", API key required" if self.api_key else "")
        await self._stop.wait()
    finally:
      self.listening.clear()
      batcher.cancel()
      self._executor.shutdown(wait=False, cancel_futures=True)

  def stop(self) -> None:
    if self._stop is not None:
      self._stop.set()


@contextlib.contextmanager
def serve_in_thread(server: PolicyServer, *, start_timeout: float = 600.0):
  """Runs `server` on a daemon thread with its own event loop and yields it once it listens (after
  its warm-up compiles); stops it on exit. For notebooks and tests, where the caller's thread must
  stay free to run clients; `stop()` is not thread-safe, so it is scheduled on the server's loop."""
  loop = asyncio.new_event_loop()
  failure: list[BaseException] = []

  def run() -> None:
    try:
      loop.run_until_complete(server.serve())
    except BaseException as error:  # handed to the caller below
      failure.append(error)
    finally:
      loop.close()

  thread = threading.Thread(target=run, name="policy-server", daemon=True)
  thread.start()
  deadline = time.monotonic() + start_timeout
  try:
    while not server.listening.wait(0.05):
      if not thread.is_alive():
        raise RuntimeError("the policy server stopped before listening") from (failure[0] if failure else None)
      if time.monotonic() > deadline:
        raise TimeoutError(f"the policy server did not listen within {start_timeout:.0f} s (warm-up included)")
    yield server
  finally:
    if thread.is_alive():
      with contextlib.suppress(RuntimeError):  # the loop closed in between: already stopped
        loop.call_soon_threadsafe(server.stop)
      thread.join(timeout=30)
