"""The MLLM benchmark runner end to end on tiny fixture benchmarks written here in each
benchmark's published layout, with the tiny random Qwen2.5-VL: the Table 8 files, the answer
cache (a rerun generates nothing, an interrupted run generates only what is missing), scores
equal to the scorers applied to the cached answers, and clear errors on bad input."""

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import tiny_qwen
from roboalign_jax.eval.mllm import cache as cache_lib
from roboalign_jax.eval.mllm import registry, runner, table
from roboalign_jax.eval.mllm.examples import BenchmarkError
from test_mllm_scorers import WordOverlapJudgeForTests

SIZE = (56, 56)  # every fixture image: one shape, few compiled programs


def _png(seed: int) -> bytes:
  rgb = np.random.default_rng(seed).integers(0, 255, (*SIZE, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="PNG")
  return buffer.getvalue()


def _image_cell(seed: int) -> dict:
  return {"bytes": _png(seed), "path": None}


def write_mmstar(root) -> str:
  """mmstar.parquet with the HF dataset's columns."""
  rows = [dict(index=k, question="Which option? Options: A: x, B: y, C: z, D: w", image=_image_cell(k),
               answer="ABCD"[k % 4], category=["coarse perception", "math"][k % 2],
               l2_category=["image emotion", "geometry", "recognition"][k % 3],
               meta_info={"source": "fixture", "split": "val", "image_path": f"{k}.png"}) for k in range(3)]
  os.makedirs(root, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, "mmstar.parquet"))
  return str(root)


def write_blink(root) -> str:
  """BLINK/Relative_Depth/val-00000-of-00001.parquet with the HF dataset's columns."""
  rows = [dict(idx=f"val_Relative_Depth_{k + 1}", question="Which point is closer to the camera?",
               sub_task="Relative_Depth", image_1=_image_cell(10 + k), image_2=None, image_3=None, image_4=None,
               choices=["A is closer", "B is closer"], answer=["(A)", "(B)"][k % 2],
               prompt="Which point is closer to the camera?\nSelect from the following choices.\n(A) A\n(B) B",
               explanation="") for k in range(2)]
  os.makedirs(os.path.join(root, "Relative_Depth"))
  pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, "Relative_Depth", "val-00000-of-00001.parquet"))
  return str(root)


def write_where2place(root) -> str:
  """point_questions.jsonl + images/ + masks/{k:02d}.jpg (RoboPoint's layout)."""
  os.makedirs(os.path.join(root, "images"))
  os.makedirs(os.path.join(root, "masks"))
  with open(os.path.join(root, "point_questions.jsonl"), "w") as f:
    for k in range(2):
      with open(os.path.join(root, "images", f"{k:02d}.jpg"), "wb") as image:
        image.write(_png(20 + k))
      mask = np.zeros(SIZE, np.uint8)
      mask[: SIZE[0] // 2] = 255
      Image.fromarray(mask).save(os.path.join(root, "masks", f"{k:02d}.jpg"))
      f.write(json.dumps({"question_id": k, "image": f"{k:02d}.jpg", "category": "seen",
                          "text": "Please point to the free space left of the mug. Your answer should be formatted "
                                  "as a list of tuples, i.e. [(x1, y1), (x2, y2), ...]."}) + "\n")
  return str(root)


def write_robospatial(root) -> str:
  """annotations.json + images/ (RoboSpatial-Eval's download layout)."""
  os.makedirs(os.path.join(root, "images"))
  records = []
  for k, (category, answer) in enumerate([("configuration", "yes"), ("compatibility", "no"),
                                          ("context", "[(0.1, 0.1), (0.5, 0.1), (0.5, 0.5), (0.1, 0.5)]")]):
    with open(os.path.join(root, "images", f"img_{k}.png"), "wb") as image:
      image.write(_png(30 + k))
    records.append({"category": category, "question": f"Question {k}?", "answer": answer,
                    "img": f"images/img_{k}.png", "depth_image": None, "mask": None})
  with open(os.path.join(root, "annotations.json"), "w") as f:
    json.dump(records, f)
  return str(root)


def write_jsonl(root, name="bench.jsonl") -> str:
  """LLaVA-format JSONL with images relative to the file."""
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  with open(os.path.join(root, name), "w") as f:
    for k in range(2):
      with open(os.path.join(root, "images", f"{k}.png"), "wb") as image:
        image.write(_png(40 + k))
      f.write(json.dumps({"id": f"q{k}", "image": f"images/{k}.png", "conversations": [
          {"from": "human", "value": "<image>\nWhat should the robot do next?"},
          {"from": "gpt", "value": "pick up the red block"}]}) + "\n")
  return os.path.join(root, name)


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
  root = tmp_path_factory.mktemp("mllm_benchmarks")
  return [("mmstar", write_mmstar(root / "MMStar")), ("blink_depth", write_blink(root / "BLINK")),
          ("where2place", write_where2place(root / "where2place")),
          ("robospatial", write_robospatial(root / "RoboSpatial-Home")),
          ("jsonl", write_jsonl(root / "user")), ("robot_r1", write_jsonl(root / "robot_r1", "robot_r1.jsonl"))]


def _run(models, benchmarks, out_dir):
  return runner.evaluate(models, benchmarks, str(out_dir), batch_size=2, max_new_tokens=6,
                         judge=WordOverlapJudgeForTests(), progress=False,
                         prompt_multiple=256)  # one prompt shape: one compiled program


def test_end_to_end_cached_and_rescored(benchmarks, tmp_path):
  model = f"tiny={tiny_qwen.checkpoint_dir()}"
  first = _run([model], benchmarks, tmp_path)
  # Table 8 shape: rows = models, columns = benchmarks in the paper's order.
  assert first["models"] == ["tiny"]
  assert first["benchmarks"] == ["mmstar", "robospatial", "where2place", "blink_depth", "robot_r1", "jsonl"]
  counts = {"mmstar": 3, "blink_depth": 2, "where2place": 2, "robospatial": 3, "jsonl": 2, "robot_r1": 2}
  assert first["generated"] == {"tiny": counts}
  saved = json.load(open(tmp_path / "results.json"))
  assert saved["scores"] == first["scores"] and set(saved["scores"]["tiny"]) == set(counts)
  for name in counts:
    assert 0.0 <= saved["scores"]["tiny"][name] <= 100.0
    assert saved["details"]["tiny"][name]["num_examples"] == counts[name]
  markdown = open(tmp_path / "results.md").read()
  assert "| Model | MMStar | RoboSpatial | Where2Place | BLINK (depth) | Robot-R1 Bench | JSONL |" in markdown
  assert markdown.count("| tiny |") == 1

  # Every example's answer is cached once, keyed by benchmark, id, model (label + weights hash), settings.
  lines = [json.loads(line) for line in open(tmp_path / runner.ANSWERS_FILE)]
  assert len(lines) == sum(counts.values())
  assert all(line["model"].startswith("tiny@") and line["generation"] == "greedy,max_new_tokens=6" for line in lines)

  # Scores are the public rules applied to the cached answers.
  answers = {(line["benchmark"], line["id"]): line["answer"] for line in lines}
  judge = WordOverlapJudgeForTests()
  for name, path in benchmarks:
    bench = registry.load(name, path, judge=judge)
    records = [bench.score(e, answers[(name, e.id)]) for e in bench.examples]
    assert bench.aggregate(bench.examples, records)["score"] == pytest.approx(saved["scores"]["tiny"][name])
    per_example = [json.loads(line) for line in open(tmp_path / "examples" / "tiny" / f"{name}.jsonl")]
    assert [r["score"] for r in per_example] == [r["score"] for r in records]

  # A second run generates nothing (and loads no model) and gives the same table.
  second = _run([model], benchmarks, tmp_path)
  assert second["generated"] == {"tiny": {name: 0 for name in counts}}
  assert second["scores"] == first["scores"]

  # An interrupted run: keep 5 answers and a half-written line; only the rest is generated.
  with open(tmp_path / runner.ANSWERS_FILE, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines[:5])
    f.write(json.dumps(lines[5])[:20])
  third = _run([model], benchmarks, tmp_path)
  assert sum(third["generated"]["tiny"].values()) == len(lines) - 5
  assert len(open(tmp_path / runner.ANSWERS_FILE).readlines()) == len(lines)


def test_table_rows_are_models_columns_benchmarks():
  details = {"base": {"mmstar": {"score": 40.0}, "where2place": {"score": 12.345}},
             "sft+rl": {"mmstar": {"score": 41.5}}}
  text = table.markdown(["base", "sft+rl"], ["mmstar", "where2place"], details)
  assert text.splitlines() == ["| Model | MMStar | Where2Place |", "|---|---:|---:|",
                               "| base | 40.00 | 12.35 |", "| sft+rl | 41.50 | – |"]


def test_bad_inputs_name_the_input(tmp_path, benchmarks):
  with pytest.raises(ValueError, match=r"unknown benchmark 'mmbench'.*expected one of"):
    registry.parse_specs("mmbench:/data/x")
  with pytest.raises(ValueError, match="expected NAME:PATH"):
    registry.parse_specs("mmstar")
  with pytest.raises(BenchmarkError, match=r"'mmstar'.*does not exist; expected MMStar's mmstar.parquet"):
    registry.load("mmstar", str(tmp_path / "missing"))
  wrong = tmp_path / "wrong"
  wrong.mkdir()
  pq.write_table(pa.table({"index": [0], "question": ["q"]}), wrong / "mmstar.parquet")
  with pytest.raises(BenchmarkError, match=r"mmstar.parquet: has columns \['index', 'question'\]; expected the "
                                           r"published columns .*missing \['image', 'answer'"):
    registry.load("mmstar", str(wrong))
  hidden = tmp_path / "blink_test" / "Relative_Depth"
  hidden.mkdir(parents=True)
  pq.write_table(pa.Table.from_pylist([dict(idx="t1", prompt="p", choices=["a", "b"], answer="?",
                                            image_1=_image_cell(0))]), hidden / "val-00000-of-00001.parquet")
  with pytest.raises(BenchmarkError, match=r"answer is '\?'; expected one of \['\(A\)', '\(B\)'\]"):
    registry.load("blink_depth", str(tmp_path / "blink_test"))
  where = dict(benchmarks)["where2place"]
  os.rename(os.path.join(where, "masks", "01.jpg"), os.path.join(where, "masks", "01.bak"))
  try:
    with pytest.raises(BenchmarkError, match=r"point_questions.jsonl line 2: mask .*01.jpg not found"):
      registry.load("where2place", where)
  finally:
    os.rename(os.path.join(where, "masks", "01.bak"), os.path.join(where, "masks", "01.jpg"))
  spatial = tmp_path / "spatial"
  spatial.mkdir()
  (spatial / "annotations.json").write_text(json.dumps([{"question": "q", "answer": "maybe", "img": "x.png"}]))
  with pytest.raises(BenchmarkError, match=r"record 0: answer 'maybe' is neither yes/no nor a polygon"):
    registry.load("robospatial", str(spatial))
  with pytest.raises(BenchmarkError, match=r"'robot_r1'.*needs an LLM judge"):
    registry.load("robot_r1", dict(benchmarks)["robot_r1"])
  duplicate = tmp_path / "duplicate"
  write_jsonl(duplicate)
  lines = open(duplicate / "bench.jsonl").read().replace('"q1"', '"q0"')
  (duplicate / "bench.jsonl").write_text(lines)
  with pytest.raises(ValueError, match=r"example id 'q0' repeats"):
    registry.load("jsonl", str(duplicate / "bench.jsonl"))
  bad_jsonl = tmp_path / "bad.jsonl"
  bad_jsonl.write_text(json.dumps({"conversations": [{"from": "gpt", "value": "x"}]}) + "\n")
  with pytest.raises(BenchmarkError, match=r"'jsonl'.*expected LLaVA-format JSONL"):
    registry.load("jsonl", str(bad_jsonl))
  with pytest.raises(FileNotFoundError, match=r"has no config.json; expected an exported HF checkpoint"):
    runner.parse_models(str(tmp_path / "no_model"))
  corrupt = tmp_path / "cache.jsonl"
  corrupt.write_text("not json\n" + json.dumps({"benchmark": "b", "id": "0", "model": "m", "generation": "g",
                                                "answer": "A"}) + "\n")
  with pytest.raises(ValueError, match=r"cache.jsonl line 1 is malformed"):
    cache_lib.AnswerCache(str(corrupt))
