"""Grain worker processes, watched: no shared memory left behind, no silent hang on a dead worker.

    stream = watch_workers(stream.mp_prefetch(options), num_workers=2, timeout_s=600)
    it = iter(stream)   # next(it) raises WorkerDied / WorkerTimeout instead of waiting forever

Grain's worker processes hand each batch's arrays over in POSIX shared memory (/dev/shm/psm_*).
Grain unlinks a block when the array that maps it is garbage collected, on a background thread
that `multiprocessing` stops at interpreter exit; a batch still referenced then (the last batch a
training loop held) is left for the resource tracker, which warns "leaked shared_memory objects".
`WatchedIterator` unlinks every block as soon as the batch reaches this process (the mapping stays
valid until the array is freed, so nothing is copied), and `close()` waits for Grain's deletions.

Grain notices a worker that died with a non-zero exit code after about a second, with an error that
does not say which worker; it waits forever on a worker that is alive but stalled (stopped, stuck
in a lock, a start-up that never finishes) or that exited with code 0. `WatchedIterator.__next__`
fetches on a helper thread and meanwhile polls the workers: a dead one raises `WorkerDied` naming
its index, pid and signal; no batch within `timeout_s` raises `WorkerTimeout` with each worker's
state. Either way the workers are stopped and their shared memory released; `get_state()` still
returns the position after the last batch delivered, so a fresh iterator resumes from there.

What is not recovered: blocks a worker had built but not yet sent when it was killed stay in
/dev/shm until this process exits (then the resource tracker removes them, with its warning).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import mmap
import queue
import signal
import threading
import time
import weakref
from multiprocessing import util as mp_util
from typing import Any

import grain
import jax
import numpy as np

POLL_S = 0.2  # how often a waiting `next` checks the workers
CLOSE_WAIT_S = 10.0  # then close() kills the workers (they are asked to stop first)
_STOP = object()
log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
  """A Grain worker process exited while the stream was being read."""


class WorkerTimeout(TimeoutError):
  """No batch came from the Grain worker processes within config.data.worker_timeout_s."""


def watch_workers(stream: grain.IterDataset, *, num_workers: int, timeout_s: float) -> grain.IterDataset:
  """`stream` (an `mp_prefetch` dataset) whose iterators are `WatchedIterator`s."""
  return _WatchedIterDataset(stream, num_workers=num_workers, timeout_s=timeout_s)


class _WatchedIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, *, num_workers: int, timeout_s: float):
    super().__init__(parent)
    self._num_workers = int(num_workers)
    self._timeout_s = float(timeout_s)

  def __iter__(self) -> WatchedIterator:
    return WatchedIterator(self._parent.__iter__(), num_workers=self._num_workers, timeout_s=self._timeout_s)

  def __str__(self) -> str:
    return f"WatchedWorkers(num_workers={self._num_workers}, timeout_s={self._timeout_s})"


def release_shared_memory(batch: Any) -> Any:
  """`batch` with every shared-memory array unlinked from /dev/shm, as plain numpy arrays.

  The pages stay mapped until the array is freed; unlinking only removes the name, so a batch
  that outlives its iterator (or the interpreter's clean-up threads) leaves nothing behind.
  """
  def leaf(x):
    if not isinstance(x, grain.multiprocessing.SharedMemoryArray):
      return x
    # Views share their base's block: only the array that owns the mapping unlinks it.
    if isinstance(x.base, mmap.mmap) and getattr(x, "_unlink_on_del", False):
      x._unlink_on_del = False  # its __del__ then only unmaps
      with contextlib.suppress(FileNotFoundError):
        x.shm.unlink()
    return np.asarray(x)
  return jax.tree.map(leaf, batch)


def flush_shared_memory_deletes(timeout_s: float = 10.0) -> None:
  """Waits for Grain's background thread that closes and unlinks freed shared-memory arrays.

  Grain runs it with one thread (FIFO), so a no-op submitted now completes after every deletion
  already queued. At interpreter exit `multiprocessing` terminates it, dropping queued deletions.
  """
  pool = getattr(grain.multiprocessing.SharedMemoryArray, "_del_thread_pool", None)
  if pool is None:
    return
  with contextlib.suppress(ValueError):  # "Pool not running": already terminated at exit
    pool.apply_async(int).wait(timeout_s)


def _fetch_loop(inner, requests: queue.Queue, results: queue.Queue) -> None:
  """Helper thread: one `next(inner)` per request. Holds no reference to the WatchedIterator, so
  an abandoned iterator is still garbage collected (and closed)."""
  while requests.get() is not _STOP:
    try:
      batch = release_shared_memory(next(inner))
      results.put((batch, inner.get_state(), None))
    except BaseException as e:  # pylint: disable=broad-except
      results.put((None, None, e))


def _close_at_exit(ref: weakref.ref) -> None:
  it = ref()
  if it is not None:
    it.close()


class WatchedIterator(grain.DatasetIterator):
  """Iterator over an `mp_prefetch` stream that raises instead of hanging on a dead or stalled
  worker, and releases shared memory promptly (see the module docstring)."""

  def __init__(self, inner: grain.DatasetIterator, *, num_workers: int, timeout_s: float):
    super().__init__(inner)
    self._inner = inner
    self._num_workers = num_workers
    self.timeout_s = timeout_s  # public: e.g. a long first wait (start-up), then a short one
    self._state: dict | None = None  # position after the last delivered batch
    self._failed: BaseException | None = None
    self._batches = 0
    self._requests: queue.Queue = queue.Queue()
    self._results: queue.Queue = queue.Queue()
    self._in_flight = False
    self._thread = threading.Thread(target=_fetch_loop, args=(inner, self._requests, self._results),
                                    daemon=True, name="roboalign-grain-watch")
    self._thread.start()
    # Before multiprocessing's exit handler stops Grain's deletion thread (priority 15), so an
    # iterator never closed still unlinks what its workers and buffers hold.
    mp_util.Finalize(self, _close_at_exit, args=(weakref.ref(self),), exitpriority=20)

  def __next__(self):
    if self._failed is not None:
      raise RuntimeError(f"this data iterator stopped after an error: {self._failed}") from self._failed
    self._assert_not_closed()
    if not self._in_flight:
      self._requests.put(None)
      self._in_flight = True
    start = time.monotonic()
    while True:
      try:
        batch, state, err = self._results.get(timeout=POLL_S)
        break
      except queue.Empty:
        pass
      dead = self._dead_workers()
      if dead:
        self._fail(WorkerDied(self._death_message(dead)), dead=dead)
      waited = time.monotonic() - start
      if self.timeout_s > 0 and waited > self.timeout_s:
        # Every worker is killed: a stalled one would also block Grain's close() for ever.
        self._fail(WorkerTimeout(self._timeout_message(waited)), kill=True)
    self._in_flight = False
    if err is not None:
      dead = [] if isinstance(err, StopIteration) else self._dead_workers()
      if dead:  # Grain's own "terminated unexpectedly", which does not say which worker
        self._fail(WorkerDied(self._death_message(dead)), dead=dead, cause=err)
      raise err  # end of the stream, or a reader's error: as Grain reports it
    self._state = state
    self._batches += 1
    return batch

  def get_state(self) -> dict:
    if self._state is None:
      self._state = self._inner.get_state()
    return self._state

  def set_state(self, state: dict) -> None:
    if self._failed is not None:
      raise RuntimeError(f"this data iterator stopped after an error ({self._failed}); make a new "
                         "one and set_state on it") from self._failed
    self._inner.set_state(state)
    self._state = state

  def close(self) -> None:
    """Stops the workers and releases their shared memory; returns within ~2 * CLOSE_WAIT_S."""
    if self._closed:
      return
    self._closed = True
    self._requests.put(_STOP)
    if not self._in_flight:
      self._thread.join(timeout=5)
    # Grain's close() waits without limit for each worker's reader thread, which waits for as
    # long as a stalled worker lives, and for ever on one that exited with code 0: those are
    # handed an error now, and past CLOSE_WAIT_S every worker is killed and handed one.
    stop = RuntimeError("data iterator closed")
    for worker in self._dead_workers():
      worker.unblock(stop)
    closer = threading.Thread(target=self._inner.close, daemon=True, name="roboalign-grain-close")
    closer.start()
    closer.join(CLOSE_WAIT_S)
    if closer.is_alive():
      for worker in self._workers():
        worker.kill()
        worker.unblock(stop)
      closer.join(CLOSE_WAIT_S)
    if closer.is_alive():
      # Never hang the caller: the workers found are dead; what remains is a daemon thread.
      log.warning("Grain's close() of %s did not finish in %.0fs after its workers were stopped; "
                      "leaving it to a daemon thread", self, 2 * CLOSE_WAIT_S)
    flush_shared_memory_deletes()

  def __str__(self) -> str:
    return f"WatchedIterator(num_workers={self._num_workers}, timeout_s={self.timeout_s})"

  def _workers(self) -> list[_Worker]:
    """Each started worker, found in Grain 0.2's iterator tree: an interleave of one
    ThreadPrefetch iterator per worker (None until first used), each over a
    ProcessPrefetchDatasetIterator. If Grain's layout changes none are found: Grain then reports
    a dead worker itself (without its index) and the timeout still applies."""
    found, stack, seen = [], [self._inner], set()
    while stack:
      node = stack.pop()
      if node is None or id(node) in seen:
        continue
      seen.add(id(node))
      in_use = getattr(node, "_iterators_in_use", None)
      if isinstance(in_use, list):
        indices = getattr(node, "_iterators_in_use_indices", list(range(len(in_use))))
        candidates = [(int(indices[slot]), child) for slot, child in enumerate(in_use)]
        candidates += _made_ahead(getattr(node, "_prefetch_ds_iter", None))
        for index, child in candidates:
          worker = _Worker.under(index, child)
          if worker is not None and all(w.reader is not worker.reader for w in found):
            found.append(worker)
        continue
      stack.extend(getattr(node, "_parents", ()))
    return sorted(found, key=lambda w: w.index)

  def _awaited_worker(self) -> int | None:
    """Index of the worker the interleave takes the next batch from."""
    node = self._inner
    while node is not None and not hasattr(node, "_next_index_in_cycle"):
      parents = getattr(node, "_parents", ())
      node = parents[0] if parents else None
    with contextlib.suppress(Exception):
      return int(node._iterators_in_use_indices[node._next_index_in_cycle])
    return None

  def _dead_workers(self) -> list[_Worker]:
    # Any exit Grain did not ask for, exit code 0 included (sys.exit in a reader), which Grain
    # would wait on for ever.
    return [w for w in self._workers() if w.process.exitcode is not None and not w.stopping]

  def _death_message(self, dead: list[_Worker]) -> str:
    parts = [f"worker {w.index} of {self._num_workers} (pid {w.process.pid}) {_describe_exit(w.process.exitcode)}"
             for w in dead]
    return (f"Grain data {'; '.join(parts)} after {self._batches} batches had been delivered. The stream "
            "cannot continue: restart from the last checkpoint (it holds the data position), or make a "
            "new iterator and set_state(it.get_state()) to continue after the last batch delivered. "
            "SIGKILL is often the out-of-memory killer (see `dmesg`); with fewer workers "
            "(config.data.num_workers) or a smaller config.data.prefetch_buffer each uses less memory; "
            "num_workers=0 reads in this process and shows a reader's own error.")

  def _timeout_message(self, waited: float) -> str:
    awaited = self._awaited_worker()
    states = [f"worker {w.index} (pid {w.process.pid}): {_process_state(w.process)}"
              for w in self._workers()] or ["none started"]
    which = f" from worker {awaited}" if awaited is not None else ""
    return (f"no batch{which} of the Grain data workers for {waited:.0f}s (config.data.worker_timeout_s="
            f"{self.timeout_s:g}) after {self._batches} batches; workers: {'; '.join(states)}. "
            "A stopped or deadlocked worker never answers, so the workers were killed. If start-up is "
            "just slow on this machine (first batch, many processes), raise worker_timeout_s (0 waits "
            "for ever); num_workers=0 reads in this process and shows where it stalls.")

  def _fail(self, error: BaseException, *, dead=(), kill: bool = False, cause: BaseException | None = None):
    """Makes Grain's waiting `next` end, closes everything, and raises `error`."""
    if kill:
      for worker in self._workers():
        worker.kill()
        worker.abandon_queues()
    for worker in dead:
      # Grain notices a non-zero exit itself; an exit with code 0 it would wait on for ever.
      worker.unblock(error)
    if self._in_flight:
      # Wait for Grain's `next` to end (~1s), so that no call is running in the tree we close.
      with contextlib.suppress(queue.Empty):
        self._results.get(timeout=10)
      self._in_flight = False
    self._failed = error
    self.close()
    if cause is error:
      raise error
    raise error from cause


def _made_ahead(makers) -> list[tuple[int, Any]]:
  """(worker index, iterator) of the workers the interleave started ahead of first use (its
  iterator-making prefetch holds futures of them, in dataset order)."""
  out = []
  with contextlib.suppress(Exception):
    first = int(makers._next_returned_index)
    for k, future in enumerate(list(makers._buffer)):
      if future.done() and not future.cancelled() and future.exception() is None:
        out.append((first + k, future.result()))
  return out


@dataclasses.dataclass
class _Worker:
  """One Grain worker: its index, its Process, and the ProcessPrefetchDatasetIterator reading it."""
  index: int
  process: Any
  reader: Any

  @classmethod
  def under(cls, index: int, iterator) -> _Worker | None:
    node = iterator
    for _ in range(4):
      if node is None:
        return None
      process = getattr(node, "_prefetch_process", None)
      if process is not None and hasattr(process, "exitcode"):
        return cls(index, process, node)
      node = getattr(node, "_maybe_nonnative_parent", None) or next(iter(getattr(node, "_parents", ())), None)
    return None

  @property
  def stopping(self) -> bool:
    """Whether Grain asked this worker to stop (its exit is then expected)."""
    event = getattr(self.reader, "_prefetch_should_stop", None)
    return event is None or event.is_set()

  def kill(self) -> None:
    if self.process.exitcode is None:
      self.process.kill()

  def unblock(self, error: BaseException) -> None:
    """Hands Grain's reader of this (exited) worker an error in the worker's own message format
    (element, state, next index, error, traceback), ending its wait."""
    buffer = getattr(self.reader, "_buffer", None)
    if buffer is not None:
      with contextlib.suppress(Exception):
        buffer.put((None, None, None, RuntimeError(str(error)), None), timeout=2)
    self.abandon_queues()

  def abandon_queues(self) -> None:
    """Lets this process exit without flushing the queues of a dead or killed worker. Whatever is
    still queued on them (the error `unblock` put, a state request) has no reader any more, and at
    exit `multiprocessing` would join their feeder threads, blocked for ever on a full pipe."""
    for name in ("_buffer", "_set_state_queue", "_stats_in_queue"):
      with contextlib.suppress(Exception):
        getattr(self.reader, name).cancel_join_thread()


def _describe_exit(code: int | None) -> str:
  if code is None:
    return "is alive"
  if code < 0:
    with contextlib.suppress(ValueError):
      return f"was killed by {signal.Signals(-code).name} (exit code {code})"
  return f"exited with code {code}"


def _process_state(process) -> str:
  if process.exitcode is not None:
    return _describe_exit(process.exitcode)
  try:
    with open(f"/proc/{process.pid}/stat") as f:
      state = f.read().rsplit(")", 1)[1].split()[0]
  except (OSError, IndexError):
    return "alive"
  return {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "D": "alive, in uninterruptible I/O",
          "Z": "exited (zombie)", "R": "alive, running", "S": "alive, sleeping"}.get(state, f"alive ({state})")
