"""Stand-alone evaluation of a checkpoint on a suite of evaluators (`python -m bit_jax.evaluators`).

    python -m bit_jax.evaluators --config=configs/evaluate.py:suite=robustness \
        --config.model=BiT-M-R50x1 --init=BiT-M-R50x1.npz --workdir=/tmp/robustness
    python -m bit_jax.evaluators --config=configs/evaluate.py:suite=robustness \
        --init=/tmp/bit_s --workdir=/tmp/bit_s/robustness --every_checkpoint

`suite=robustness` is the ImageNet robustness suite the BiT paper reports on, each an
evaluator of `config.evals` (TFDS names; prepare them in `--config.data_dir` first):
`imagenet` (ILSVRC-2012 validation: top-1/top-5/loss/ECE), `imagenet_v2` (imagenet_v2
matched-frequency test), `imagenet_real` (ReaL labels of the validation set),
`imagenet_a` and `imagenet_r` (200 of the 1000 classes: logits restricted to them),
`imagenet_sketch`, and `objectnet` (113 classes that overlap ImageNet) from a folder you
prepared: `:objectnet=/data/objectnet-1.0` with ObjectNet 1.0's `images/` and `mappings/`
(without it the ObjectNet evaluator is off). A missing dataset logs one line and is skipped.
`:crop=N` evaluates at N pixels (resize to N * 8 / 7 first; default 224 from 256).
Writes `results.json`, `results.md` (beside the published BiT numbers of
`bit_jax/evaluators/published_robustness.csv`) and, over several checkpoints, `curves/*.png`.
"""

import os

import ml_collections

from bit_jax.errors import UserError
from configs import common

SUITES = ("robustness",)


def get_config(arg=None):
  args = common.parse_arg(arg, suite="robustness", model="BiT-S-R50x1", objectnet="", crop=224)
  crop, resize = args.crop, args.crop * 8 // 7  # 224 from 256, as the paper's eval.
  if args.suite not in SUITES:
    raise UserError(f"bad config argument suite={args.suite!r}; valid: {', '.join(SUITES)}")
  c = ml_collections.ConfigDict()
  c.model = args.model  # A release name from bit_jax.models.MODEL_NAMES.
  c.num_classes = 1000  # Head size of the evaluated checkpoint.
  c.dtype = "float32"  # Compute dtype: float32 or bfloat16.
  c.kernels = "auto"  # plain, cpu (bit_jax.cpu_kernels), auto: cpu on a CPU backend.
  c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS's default.
  c.loss = "softmax_xent"  # How the head's logits become probabilities (loss and ECE).
  c.eval_batch_size = 256  # Global batch of every evaluator; the tail is padded and masked.
  c.dataset = "imagenet2012"  # The default dataset of evaluators that leave theirs empty.
  c.eval_split = "validation"  # Their default split,
  c.pp_eval = common.imagenet_pp(1000, crop, resize)[1]  # and preprocessing.
  c.eval_every_steps = 1  # Their default cadence; unused here: each runs once per checkpoint.
  c.evals = ml_collections.ConfigDict()  # Named evaluators (bit_jax.evaluators).
  c.evals.imagenet = common.classification_eval()
  c.evals.imagenet_v2 = common.classification_eval(dataset="imagenet_v2", split="test")
  c.evals.imagenet_real = common.real_eval(crop, resize)
  c.evals.imagenet_a = common.subset_eval("imagenet_a", "test", "imagenet_a.json", crop, resize)
  c.evals.imagenet_r = common.subset_eval("imagenet_r", "test", "imagenet_r.json", crop, resize)
  c.evals.imagenet_sketch = common.classification_eval(dataset="imagenet_sketch", split="test")
  objectnet = args.objectnet or "/path/to/objectnet-1.0"
  c.evals.objectnet = common.subset_eval(
      f"folder:{os.path.join(objectnet, 'images')}", "train", os.path.join(objectnet, "mappings"),
      crop, resize)
  c.evals.objectnet.enabled = bool(args.objectnet)
  return c
