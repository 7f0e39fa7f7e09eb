"""Convert a downloaded TFRecord RLDS dataset to ArrayRecord and validate it against its spec.

    python launch/convert_rlds.py --in_dir=~/tensorflow_datasets/libero_spatial_no_noops/1.0.0 \
        --out_dir=/data/rlds/libero_spatial_no_noops/1.0.0 --spec=libero

Then point a config's `data.datasets` entry at `--out_dir` (see README, "Robot datasets").
--validate_only checks an existing ArrayRecord directory without converting.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from roboalign_jax.data import convert
from roboalign_jax.data.specs import SPECS

flags.DEFINE_string("in_dir", None, "TFDS dataset version directory with TFRecord shards.")
flags.DEFINE_string("out_dir", None, "Where to write the ArrayRecord copy (a version directory).")
flags.DEFINE_enum("spec", None, sorted(SPECS), "Published layout to validate against.")
flags.DEFINE_list("splits", ["train"], "Splits to validate.")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out_dir.")
flags.DEFINE_bool("skip_bad", False, "Report bad episodes instead of failing on the first one.")
flags.DEFINE_bool("validate_only", False, "Only validate --out_dir (already ArrayRecord).")
flags.mark_flags_as_required(["out_dir", "spec"])


def main(argv):
  del argv
  out_dir = os.path.expanduser(flags.FLAGS.out_dir)
  if not flags.FLAGS.validate_only:
    if not flags.FLAGS.in_dir:
      raise app.UsageError("--in_dir is required unless --validate_only")
    convert.convert_to_array_record(os.path.expanduser(flags.FLAGS.in_dir), out_dir,
                                    overwrite=flags.FLAGS.overwrite)
  report = {split: convert.validate(out_dir, flags.FLAGS.spec, split=split, skip_bad=flags.FLAGS.skip_bad)
            for split in flags.FLAGS.splits}
  for split, counts in report.items():
    print(convert.summary(split, counts))
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  app.run(main)
