"""`make demo` stages. Each stage module has `run(context) -> (metrics, section)`:

  context: a dict shared by the stages of one demo run. `context["workdir"]` is the demo's
    directory; a stage puts what later stages need under documented keys (e.g. the SFT stage
    adds `context["sft_hf_dir"]`, the exported checkpoint GRPO starts from).
  metrics: flat `{"<stage>.<name>": number}` entries for `metrics.json`.
  section: `(heading, markdown text, [image paths relative to the workdir])` for `report.md`.
"""
