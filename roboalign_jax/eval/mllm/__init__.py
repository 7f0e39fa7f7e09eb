"""MLLM benchmarks of the paper's Table 8 (MMStar, BLINK Relative_Depth, Where2Place,
RoboSpatial-Home, user LLaVA-JSONL benchmarks, Robot-R1 Bench through a pluggable judge): loaders
of the published on-disk formats, the public harnesses' scoring rules, and a resumable runner.

    from roboalign_jax.eval.mllm import runner
    table = runner.evaluate(["runs/sft/hf", "runs/grpo/hf"], {"mmstar": "data/MMStar"}, "runs/mllm")

One concept per module: `examples` (the example record, benchmark errors, image decoding),
`choice` (MMStar / BLINK letter rules), `pointing` (Where2Place and RoboSpatial point rules),
`judge` (the Judge protocol), one loader module per benchmark, `registry` (name -> loader),
`cache` (answers per example), `table` (Table 8 JSON + Markdown), `runner` (generation + scoring).
"""
