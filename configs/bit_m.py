"""BiT-M: the paper's upstream recipe on ImageNet-21k (14.2M images, 21,843 classes).

    python train.py --config=configs/bit_m.py --workdir=/tmp/bit_m \
        --config.data_dir=/data/tfds --config.num_train_examples=14197122

The user prepares ImageNet-21k as a TFDS dataset (name and data_dir are settings). Images
carry several labels: multi-label sigmoid cross-entropy, no class rebalancing; the held-out
metric is precision@1 (reported as eval/top1). `onehot` turns a list of labels into a
multi-hot row; if the dataset calls them `labels`, add `|rename('labels', 'label')` before it
(`--config.pp_train=...`). Produces the BiT-M checkpoints.
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
  return common.modern(c) if args.recipe == "modern" else c
