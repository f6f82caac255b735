"""BiT-HyperRule transfer of a pretrained model to any TFDS dataset.

    python transfer.py --config=configs/transfer.py:model=BiT-M-R50x1,dataset=cifar10 \
        --config.init=BiT-M-R50x1.npz --workdir=/tmp/cifar10

fine-tunes with the HyperRule (CIFAR-10: 10k steps at 128 px, MixUp 0.1) and prints test
top-1 and ECE; BiT-M-R50x1 reaches about 97% on CIFAR-10 (BiT paper, Table 1 reports 98.9%
for BiT-M-R152x4). Few-shot: `--config.shots=1,5,10,25 --config.seeds=0,1,2`. Frozen
features (`bit_jax.linear_eval`, each the named protocol):
`--config.linear_eval=ericsson_linear,ericsson_fewshot,bigvision_fewshot,ncm`.

`:demo=True` is the offline transfer of the demo's pretraining (configs/demo.py) to five farm
animals, 5 and 10 images per class that pretraining never saw, against the same fine-tuning
from scratch (HyperRule lr 0.003, 100 steps of 64, 2 seeds; ~3 min on 2 cores):

    python transfer.py --config=configs/transfer.py:demo=True --workdir=workdir/transfer

prints top-1 near 79% (5 shots) and 80% (10) from the demo's checkpoint against about 51%
and 55% from scratch (chance 20%).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="BiT-M-R50x1", dataset="cifar10", demo=False)
  c = ml_collections.ConfigDict()
  c.model = args.model  # A release name; must match the checkpoint's architecture.
  c.dataset = args.dataset  # TFDS name, `folder:/path`, or an embedded dataset.
  c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS's default.
  c.init = ""  # Official .npz, or a train.py workdir; "" trains from scratch.
  c.train_split = "train"
  c.test_split = "test"  # Evaluated in full: padded and masked, never a dropped tail.
  c.val_split = ""  # ericsson_linear picks wd on it; "" holds out val_fraction of train.
  c.val_fraction = 0.2  # Ericsson et al.'s held-out fraction (seed 0) without a val split.
  c.num_classes = 0  # 0: from TFDS metadata.
  c.num_train_examples = 0  # 0: counted. Sets the HyperRule's schedule and MixUp.
  c.image_size = ()  # (h, w) for the HyperRule when metadata has none (mock data).
  c.resolution = ()  # (resize, crop) to override the HyperRule's.
  common.add_hyperrule_finetuning(c)
  c.shuffle_buffer = 10_000
  c.log_every_steps = 50

  c.finetune = True  # Fine-tune (else only the frozen-feature evaluations).
  c.shots = (0,)  # Examples per class; 0 is the whole training split.
  c.seeds = (0,)  # Each seed draws its own few-shot examples and data order.
  c.from_scratch_baseline = False  # Also fine-tune from random init, for comparison.
  c.linear_eval = ()  # Any of ericsson_linear, ericsson_fewshot, bigvision_fewshot, ncm.
  c.linear_shots = (1, 5, 10, 25)  # k per class for bigvision_fewshot and ncm.
  # The frozen features' preprocessing between decode and value_range, e.g. "resize(32)";
  # "": each method's published one (linear_eval.FEATURE_PP: 224 px crops).
  c.linear_pp = ""
  c.linear_metric = ""  # ericsson_linear's metric; "" picks Ericsson et al.'s for the dataset.
  c.fewshot_ways = 5  # ericsson_fewshot: classes per episode.
  c.fewshot_shots = (5, 20, 50)  # ericsson_fewshot: support examples per class (K).
  c.fewshot_queries = 15  # ericsson_fewshot: query examples per class.
  c.fewshot_episodes = 600  # ericsson_fewshot: episodes; top-1 ± 1.96·std/sqrt(episodes).

  if args.demo:
    c.model = "tiny-R14"
    c.dataset = "bit_farm_animals"
    c.init = "workdir/demo"  # What `make demo` leaves.
    c.resolution = (36, 32)  # The HyperRule's 160/128 is too slow for a 2-core CPU.
    c.batch_size = 64
    c.eval_batch_size = 250
    c.total_steps = 100
    c.shots = (5, 10)
    c.seeds = (0, 1)
    c.from_scratch_baseline = True
    c.linear_eval = ("bigvision_fewshot", "ericsson_fewshot", "ericsson_linear")
    c.linear_pp = "resize(32)"  # The published 224 px crops: ~50x the compute for 32 px images.
    c.linear_shots = (5, 10)
    c.fewshot_shots = (5, 10)
    c.fewshot_episodes = 100
  return c
