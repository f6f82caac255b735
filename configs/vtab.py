"""VTAB-1k: fine-tune one pretrained model on the 19 tasks, for each seed.

    python -m bit_jax.vtab run \
        --config=configs/vtab.py:model=BiT-M-R50x1,init=BiT-M-R50x1.npz,tasks=all \
        --config.seeds=0,1,2 --config.data_dir=/data/tfds --workdir=/tmp/vtab

runs the BiT-HyperRule on each task's train800val200 (1000 examples: 500 steps at batch 512,
lr 0.003, no MixUp; 160/128 px for images under 96x96, else 448/384), reports top-1 and ECE on
the whole test split, and writes /tmp/vtab/results.json and /tmp/vtab/report/. The BiT paper's
19-task means are 70.6% for BiT-M and 66.9% for BiT-S, both with the largest model, R152x4
(Table 2). Protocols (`:protocol=NAME` or `--config.protocol=NAME`; bit_jax/vtab/protocols.py):
  hyperrule         the BiT paper's, as above.
  vtab_lightweight  the VTAB paper's lightweight sweep, the protocol of its published table:
                    images resized to 224x224, no augmentation, batch 512, SGD momentum 0.9,
                    lr {0.1, 0.01} x {2500, 10000} steps, lr / 10 at 30/60/90%, no warmup;
                    each trained on train800 and scored on val200, the best retrained on
                    train800val200 and tested once. Sup-100% (ResNet-50) 19-task mean: 66.4 in
                    the released table, 65.6 in the paper's text.
  hyperrule_sweep   ours: the HyperRule with sweep_lrs x sweep_steps, chosen the same way.

Variants, `configs/vtab.py:key=value,...`: model, init, tasks (all, a group: natural,
specialized, structured, or one task; `,` separates variants, so several tasks go in
`--config.tasks=cifar100,dtd`) and protocol. Any field: `--config.FIELD=VALUE`; tuples take
commas, `--config.seeds=0,1,2 --config.resolution=448,384`. Every field `finetune.make_plan`
and `finetune.finetune` read is here or in `common.add_hyperrule_finetuning`.
"""

import ml_collections
from ml_collections import config_dict

from bit_jax.vtab import protocols
from configs import common

# hyperrule_sweep's grid: the lightweight sweep's values, on the HyperRule's schedule shape.
SWEEP_LRS = (0.01, 0.1)
SWEEP_STEPS = (2500, 10_000)


def get_config(arg=None):
  args = common.parse_arg(arg, model="BiT-M-R50x1", init="", tasks="all", protocol="hyperrule")
  c = ml_collections.ConfigDict()
  c.model = args.model  # A release name; must match the checkpoint's architecture.
  c.init = args.init  # Official .npz, or a train.py workdir; "" fine-tunes from scratch.
  c.tasks = args.tasks  # all, a group (natural, specialized, structured) or task names, a,b,c.
  c.protocol = args.protocol  # hyperrule, vtab_lightweight or hyperrule_sweep.
  c.seeds = (0,)  # One fine-tuning per seed and task: data order (and init from scratch).
  # A typed None: ml_collections cannot override a plain None from the command line.
  c.data_dir = config_dict.placeholder(str)  # TFDS data_dir of the datasets; None: TFDS's.
  c.resolution = ()  # (resize, crop); () picks the HyperRule's from the task's image size.
  common.add_hyperrule_finetuning(c)  # VTAB-1k: 500 steps, no MixUp (1000 examples).
  c.shuffle_buffer = 1000  # Holds all of train800val200.
  c.log_every_steps = 100  # Logs the training loss and learning rate this often.

  c.sweep_lrs = SWEEP_LRS  # hyperrule_sweep: base learning rates tried.
  c.sweep_steps = SWEEP_STEPS  # hyperrule_sweep: lengths tried, the HyperRule's shape rescaled.

  # vtab_lightweight: the published values (its batch is batch_size, 512 as published). Change
  # them only for tests and CPUs: the report then names the run `vtab_lightweight, modified:
  # ...`, not comparable with the paper.
  c.lightweight_lrs = protocols.LIGHTWEIGHT_LRS  # Learning rates tried.
  c.lightweight_steps = protocols.LIGHTWEIGHT_STEPS  # Lengths tried; lr / 10 at 30/60/90%.
  c.lightweight_resolution = protocols.LIGHTWEIGHT_RESOLUTION  # Train and test: resize to it.
  return c
