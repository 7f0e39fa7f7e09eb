"""Score models on the MLLM benchmarks of the paper's Table 8, in one command.

    python launch/eval_mllm.py --model=base=hf/Qwen2.5-VL-7B-Instruct,sft=runs/sft/hf,grpo=runs/grpo/hf \\
        --benchmarks=mmstar:data/MMStar,blink_depth:data/BLINK,where2place:data/where2place,robospatial:data/RoboSpatial-Home \\
        --out_dir=runs/mllm --batch_size=8

Benchmarks are read from local files in their published layouts (see README "MLLM benchmarks";
nothing is downloaded). Writes `<out_dir>/results.md` / `results.json` (rows = models, columns =
benchmarks), `answers.jsonl` (a rerun resumes from it) and per-example scores under `examples/`.
Robot-R1 Bench (`robot_r1:FILE.jsonl`) needs `--judge=package.module:attribute` (a Judge, see
roboalign_jax/eval/mllm/judge.py).
"""

from __future__ import annotations

from absl import app, flags

from roboalign_jax.eval.mllm import judge as judge_lib
from roboalign_jax.eval.mllm import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Comma-separated HF checkpoint directories, each optionally label=DIR.",
                    required=True)
flags.DEFINE_string("benchmarks", None, "Comma-separated NAME:PATH (mmstar, blink_depth, where2place, robospatial, "
                    "jsonl, robot_r1).", required=True)
flags.DEFINE_string("out_dir", None, "Where results, answers and per-example scores go.", required=True)
flags.DEFINE_integer("batch_size", 8, "Prompts answered by one generate call.")
flags.DEFINE_integer("max_new_tokens", None, "Answer budget; default: each benchmark's own (32 for letter "
                     "answers, 128-512 otherwise).")
flags.DEFINE_string("family", None, "Backbone family; default: config.json's model_type.")
flags.DEFINE_string("dtype", "float32", "Parameter dtype of the loaded model (float32 or bfloat16).")
flags.DEFINE_string("judge", None, "package.module:attribute of a Judge for open-ended benchmarks.")


def main(argv):
  del argv
  judge = judge_lib.load_judge(FLAGS.judge) if FLAGS.judge else None
  result = runner.evaluate(FLAGS.model, FLAGS.benchmarks, FLAGS.out_dir, batch_size=FLAGS.batch_size,
                           max_new_tokens=FLAGS.max_new_tokens, judge=judge, family=FLAGS.family, dtype=FLAGS.dtype)
  with open(f"{FLAGS.out_dir}/results.md") as f:
    print(f.read())
  print(f"results: {FLAGS.out_dir}/results.json; answers: {FLAGS.out_dir}/{runner.ANSWERS_FILE} "
        f"(generated now: {result['generated']})")


if __name__ == "__main__":
  app.run(main)
