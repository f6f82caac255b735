"""BiT-M: the paper's upstream recipe on ImageNet-21k (14.2M images, 21,843 classes).

    python train.py --config=configs/bit_m.py --workdir=/tmp/bit_m \
        --config.data_dir=/data/tfds --config.num_train_examples=14197122

The user prepares ImageNet-21k as a TFDS dataset (name and data_dir are settings). Images
carry several labels: multi-label sigmoid cross-entropy, no class rebalancing; the held-out
metric is precision@1 (reported as eval/top1). `onehot` turns a list of labels into a
multi-hot row; if the dataset calls them `labels`, add `|rename('labels', 'label')` before it
(`--config.pp_train=...`). Produces the BiT-M checkpoints.

The head's bias starts at 0 in the paper recipe: neither the paper nor its release
(google-research/big_transfer, fine-tuning code only) gives another value. `recipe=modern`
follows big_vision's `configs/bit_i21k.py` (cosine schedule, gradient clipping at 1.0), which
also sets `init_head_bias = -10` (applied in big_vision `train.py` after `model.init`): with
21,843 sigmoids, each class starts near probability 4.5e-5 instead of 0.5, so the first
losses are small rather than ~15,000 nats per image.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="BiT-M-R50x1", dataset="imagenet21k", recipe="paper")
  c = common.upstream_config()
  c.model = args.model
  c.dataset = args.dataset
  c.num_classes = 21843
  c.loss = "sigmoid_xent"
  c.train_split = "train[:99%]"  # ImageNet-21k has no official validation split.
  c.eval_split = "train[99%:]"
  c.pp_train, c.pp_eval = common.imagenet_pp(c.num_classes)
  # As big_vision's configs/bit_i21k.py: the held-out split (`eval`) and few-shot transfer on
  # the common set (tags fewshot/<dataset>_<k>shot); `--config.evals.fewshot.enabled=False`
  # switches it off. ImageNet-1k's v2 / ReaL need a 21k-to-1k class mapping (kind `subset`).
  c.evals.fewshot = common.fewshot_eval()
  if args.recipe == "modern":
    c = common.modern(c)
    c.head_bias_init = -10.0  # big_vision bit_i21k's init_head_bias for the sigmoid loss.
  return c
