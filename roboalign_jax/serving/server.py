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

Auth: with an API key, the websocket upgrade needs the header `Authorization: Api-Key <key>`
(what openpi-client sends for `api_key=`), else 401. A host other than loopback needs a key
unless `insecure=True`: a policy server runs a large model for anyone who can reach it.

Dynamic batching (not in openpi): requests from all connections go to one queue; the batcher
takes the first, waits up to `max_wait_ms` for more (at most `max_batch`, and no longer once
every open connection has a request in the batch) and answers them with one `Policy.infer_batch`. Inference runs on one worker thread, so the event loop keeps accepting
and queueing requests while a batch runs. Before listening the server runs `Policy.warmup`, so
every batch shape is compiled before the first client waits on it.
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


def check_options(*, host: str, api_key: str | None, insecure: bool, max_batch: int, max_wait_ms: float,
                  max_message_bytes: int) -> None:
  """ValueError for options a server must not start with (checked before a policy is loaded)."""
  if not api_key and not insecure and not is_loopback(host):
    raise ValueError(f"host {host!r} is not loopback: set an API key (--api_key) so only clients holding it are "
                     "answered, or pass --insecure to serve it to anyone who can reach the port")
  if max_batch < 1 or max_wait_ms < 0 or max_message_bytes < 1:
    raise ValueError(f"max_batch={max_batch}, max_wait_ms={max_wait_ms}, max_message_bytes={max_message_bytes}; "
                     "expected max_batch >= 1, max_wait_ms >= 0, max_message_bytes >= 1")


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
               max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, warmup: bool = True):
    check_options(host=host, api_key=api_key, insecure=insecure, max_batch=max_batch, max_wait_ms=max_wait_ms,
                  max_message_bytes=max_message_bytes)
    self.policy, self.host, self.port = policy, host, port
    self.api_key = api_key or None
    self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1e3
    self.max_message_bytes = int(max_message_bytes)
    self.warmup = warmup
    self._connections = 0  # open connections that received the metadata
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
    return None

  # ---- one connection ------------------------------------------------------------------------
  async def _handle(self, ws: ServerConnection) -> None:
    log.info("connection from %s", ws.remote_address)
    try:
      await ws.send(msgpack_numpy.packb(self.policy.metadata))
    except websockets.ConnectionClosed:
      return
    self._connections += 1
    try:
      await self._serve_connection(ws)
    finally:
      self._connections -= 1

  async def _serve_connection(self, ws: ServerConnection) -> None:
    previous_total = None
    while True:
      try:
        message = await ws.recv()
      except websockets.ConnectionClosed:
        return
      received = time.perf_counter()
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
      # so once every open connection is in the batch nobody else can join: do not wait.
      while len(batch) < min(self.max_batch, self._connections):
        remaining = deadline - loop.time()
        try:
          batch.append(self._queue.get_nowait() if remaining <= 0 else
                       await asyncio.wait_for(self._queue.get(), remaining))
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
          break
      started = time.perf_counter()
      try:
        results = await loop.run_in_executor(self._executor, lambda: self.policy.infer_batch(
            [p.observation for p in batch], return_errors=True))
      except Exception as error:  # the whole batch failed: the model's fault, not one request's
        log.exception("a batch of %d requests failed", len(batch))
        for pending in batch:
          if not pending.future.done():
            pending.future.set_exception(InferenceError(type(error).__name__))
        continue
      infer_ms = (time.perf_counter() - started) * 1e3
      for pending, result in zip(batch, results):
        if pending.future.done():
          continue
        if isinstance(result, BaseException):
          pending.future.set_exception(result)
        else:
          pending.future.set_result((result, {"infer_ms": infer_ms, "batch_size": len(batch),
                                              "queue_ms": (started - pending.queued) * 1e3}))

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
                       max_size=self.max_message_bytes, compression=None) as server:
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
