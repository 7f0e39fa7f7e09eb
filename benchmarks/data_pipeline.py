"""Throughput of the LIBERO-layout training pipeline, and where a sample's time goes.

  python benchmarks/data_pipeline.py                          # 0 and 2 workers, batch 32
  python benchmarks/data_pipeline.py --workers=0,1,2 --batches=40 --rounds=4

Setup as in training: a LIBERO-layout fixture (real TFDS ArrayRecord, JPEG frames at the
published 256x256) with episodes of LIBERO-like length, both cameras decoded and resized to
224x224, augmentation on for the third-person view, normalised action chunks of 16 steps,
and FAST tokenisation of every chunk (`sample="fast_sft"`, conversation without the backbone
processor).

The worker counts are timed interleaved (0, 2, 0, 2, ... for --rounds rounds), each round a fresh
iterator per count: started, one untimed wave of batches (start-up; a wave is the batches built at
once: reader threads per process, times the worker processes), then a timed block of about
--batches / --rounds batches in whole waves (the batches of a wave finish together), then closed.
Fresh iterators rather than blocks from iterators kept open because an open iterator keeps reading
ahead while the other is timed (with 2 workers, over a dozen batches), which would take cores from
the timed side and hand its own next block batches ready-made. Prints each count's median and
minimum time per batch, samples/s at the median, the ratio of its median samples/s to the first
count's (> 1: faster) and the load average.

The breakdown times each stage in this process on the same samples: reading + standardising an
episode (paid once per episode per worker while it stays in the episode cache), decoding the two
frames, augmenting / resizing, normalising + chunking, FAST encoding, collating.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from timing import interleaved, load_line

FLAGS = flags.FLAGS
flags.DEFINE_list("workers", ["0", "2"], "Worker-process counts to measure.")
flags.DEFINE_integer("batches", 30, "About this many batches timed per setting in all: --rounds blocks of "
                     "whole waves (at least one).")
flags.DEFINE_integer("rounds", 3, "Interleaved timed blocks per setting.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("episodes", 12, "Fixture episodes.")
flags.DEFINE_integer("min_steps", 100, "Shortest fixture episode (LIBERO: ~100-300 steps).")
flags.DEFINE_integer("max_steps", 160, "Longest fixture episode.")
flags.DEFINE_integer("horizon", 16, "Action chunk length.")
flags.DEFINE_integer("threads", 2, "Reader threads per process.")
flags.DEFINE_bool("with_processor", False, "Also tokenise with the backbone processor (tiny tokenizer, "
                  "Qwen image preprocessing of the primary view), as Stage-1 SFT batches are.")
flags.DEFINE_string("workdir", "", "Where to write the fixture (default: a temporary directory).")


def breakdown(handles, config, fast, samples: int = 200) -> dict[str, float]:
  """Milliseconds per sample of each stage, measured in this process."""
  from roboalign_jax.data import chunking, image_transforms, normalization, pipeline
  from roboalign_jax.data.collate import collate
  handle = handles[0]
  rng = np.random.default_rng(0)
  steps = rng.integers(0, handle.index.num_steps, samples)
  episodes, ts = handle.index.locate(steps)
  out = {}
  start = time.perf_counter()
  for e in np.unique(episodes):
    handle.source._cache.clear()
    handle.source.episode(int(e))
  out["read+standardise episode (per episode)"] = (time.perf_counter() - start) / len(np.unique(episodes)) * 1e3
  cached = {int(e): handle.source.episode(int(e)) for e in np.unique(episodes)}
  decoded = []
  start = time.perf_counter()
  for e, t in zip(episodes, ts):
    ep = cached[int(e)]
    pair = [image_transforms.decode(ep.images[c][t], handle.source.spec.cameras[c][1], dataset="b", episode=0,
                                    step=0, path=c) for c in ("primary", "wrist")]
    decoded.append(pair)
  out["decode 2 JPEG frames"] = (time.perf_counter() - start) / samples * 1e3
  start = time.perf_counter()
  for k, (primary, wrist) in enumerate(decoded):
    image_transforms.augment(primary, (224, 224), np.random.default_rng(k))
    image_transforms.resize(wrist, (224, 224))
  out["augment primary + resize wrist"] = (time.perf_counter() - start) / samples * 1e3
  mask = normalization.action_mask()
  start = time.perf_counter()
  chunks = []
  for e, t in zip(episodes, ts):
    ep = cached[int(e)]
    actions, _ = chunking.action_chunk(ep.actions, int(t), config.action_horizon)
    chunks.append(normalization.normalize(actions, handle.statistics.action, mask))
    normalization.normalize(ep.states[[int(t)]], handle.statistics.state)
  out["chunk + normalise"] = (time.perf_counter() - start) / samples * 1e3
  start = time.perf_counter()
  for chunk in chunks:
    fast.encode(chunk[None])
  out["FAST encode (one chunk)"] = (time.perf_counter() - start) / samples * 1e3
  reader = pipeline.StepReader(handles, config, train=True)
  examples = [reader(0, int(s), k) for k, s in enumerate(steps[:64])]
  start = time.perf_counter()
  for i in range(0, 64, 32):
    collate(examples[i:i + 32])
  out["collate"] = (time.perf_counter() - start) / 64 * 1e3
  return out


def main(argv):
  del argv
  from roboalign_jax import data
  from roboalign_jax.data import pipeline
  from roboalign_jax.fast import FASTTokenizer
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="data_bench_")
  start = time.perf_counter()
  path = data.write_fixture("libero", os.path.join(workdir, "rlds"), FLAGS.episodes, 0,
                            episode_length=(FLAGS.min_steps, FLAGS.max_steps))
  print(f"fixture: {FLAGS.episodes} LIBERO-layout episodes in {time.perf_counter() - start:.1f}s at {path}")
  base = dict(datasets=[data.dataset_entry("libero", path)], cache_dir=os.path.join(workdir, "cache"),
              global_batch_size=FLAGS.batch_size, action_horizon=FLAGS.horizon, image_size=(224, 224),
              augment=True, num_threads=FLAGS.threads, progress=False)
  handles = pipeline.open_datasets(data.data_config(**base))
  fast_dir = os.path.join(workdir, "fast")
  fast = FASTTokenizer.fit(pipeline.action_chunks(handles, FLAGS.horizon), vocab_size=1024)
  fast.save(fast_dir)
  print(f"steps: {handles[0].index.num_steps}; FAST tokens per chunk: "
        f"{np.mean([len(i) for i in fast.encode(pipeline.action_chunks(handles, FLAGS.horizon)[:256])]):.1f}")
  processor_dir = ""
  if FLAGS.with_processor:
    from roboalign_jax.models.qwen2_5_vl import tiny
    processor_dir = os.path.join(workdir, "qwen")
    tiny.write_tokenizer(processor_dir)
    tiny.write_image_processor_config(processor_dir, max_pixels=224 * 224)
  counts = [int(w) for w in FLAGS.workers]
  configs = {w: data.data_config(**base, sample="fast_sft", fast_tokenizer_dir=fast_dir, num_workers=w,
                                 processor_dir=processor_dir) for w in counts}
  # Batches built at once: each process (this one when there are no workers) runs up to
  # min(threads, read-ahead) of them.
  waves = {w: max(w, 1) * min(c.num_threads, c.prefetch_buffer) for w, c in configs.items()}
  blocks = {w: max(1, FLAGS.batches // FLAGS.rounds // wave) * wave for w, wave in waves.items()}

  def timed_block(workers: int) -> float:
    """Seconds per batch over one block of a fresh iterator, start-up excluded."""
    it = iter(data.make_dataset(configs[workers], process_index=0, process_count=1))
    for _ in range(waves[workers]):
      batch = next(it)
    assert batch["actions"].shape == (FLAGS.batch_size, FLAGS.horizon, 7)
    start = time.perf_counter()
    for _ in range(blocks[workers]):
      next(it)
    elapsed = time.perf_counter() - start
    # Stops its workers and read-ahead; batches already being built finish during the next
    # count's untimed start.
    it.close()
    return elapsed / blocks[workers]

  # Each block times itself, its iterator's start-up left out; each is already fresh, so no warm-up.
  per_batch = interleaved({w: functools.partial(timed_block, w) for w in counts}, FLAGS.rounds,
                          self_timed=True, warmup=False)
  print(f"{FLAGS.rounds} interleaved rounds, batches of {FLAGS.batch_size}, {load_line()}")
  first = per_batch[counts[0]]["median"]
  for workers, times in per_batch.items():
    median = times["median"]
    print(f"workers={workers}: {FLAGS.batch_size / median:5.0f} samples/s at the median; per batch median "
          f"{median * 1e3:.0f} ms, min {times['min'] * 1e3:.0f} ms (blocks of {blocks[workers]}); "
          f"samples/s vs workers={counts[0]} {first / median:.2f}x")
  print("\nper-sample cost by stage (this process, ms):")
  config = data.data_config(**base)
  for stage, ms in breakdown(handles, config, fast).items():
    print(f"  {stage:42s} {ms:7.2f}")
  print(f"\n{load_line()}")


if __name__ == "__main__":
  app.run(main)
