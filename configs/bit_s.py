"""BiT-S: the paper's upstream recipe on ILSVRC-2012 (1.28M images, 1000 classes).

    python train.py --config=configs/bit_s.py --workdir=/tmp/bit_s
    python train.py --config=configs/bit_s.py:model=BiT-S-R101x3 --workdir=/tmp/bit_s_r101x3

Needs TFDS `imagenet2012` prepared in `--config.data_dir`. 90 epochs at batch 4096; the
released BiT-S-R50x1 reaches about 77% ImageNet top-1 (BiT paper, Table 6 upstream).
`:recipe=modern` switches to the cosine / decoupled-decay / clipped variant.

Evaluators, as big_vision's `configs/bit_i1k.py` (each every `eval_every_steps` and at the end;
one whose data is not prepared logs a line and is disabled, training goes on): `eval`
(validation: eval/top1, top5, loss, ece), `v2` (TFDS imagenet_v2), `real` (ImageNet-ReaL) and
`fewshot` (ridge 1/5/10/25-shot on caltech101, cars196, cifar100, dtd, oxford_iiit_pet,
uc_merced: tags fewshot/<dataset>_<k>shot). Switch one off with
`--config.evals.fewshot.enabled=False`.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="BiT-S-R50x1", recipe="paper")
  c = common.upstream_config()
  c.model = args.model
  c.evals.v2 = common.classification_eval(dataset="imagenet_v2", split="test")
  c.evals.real = common.real_eval()
  c.evals.fewshot = common.fewshot_eval()
  return common.modern(c) if args.recipe == "modern" else c
