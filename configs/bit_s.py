"""BiT-S: the paper's upstream recipe on ILSVRC-2012 (1.28M images, 1000 classes).

    python train.py --config=configs/bit_s.py --workdir=/tmp/bit_s
    python train.py --config=configs/bit_s.py:model=BiT-S-R101x3 --workdir=/tmp/bit_s_r101x3

Needs TFDS `imagenet2012` prepared in `--config.data_dir`. 90 epochs at batch 4096; the
released BiT-S-R50x1 reaches about 77% ImageNet top-1 (BiT paper, Table 6 upstream).
`:recipe=modern` switches to the cosine / decoupled-decay / clipped variant.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="BiT-S-R50x1", recipe="paper")
  c = common.upstream_config()
  c.model = args.model
  return common.modern(c) if args.recipe == "modern" else c
