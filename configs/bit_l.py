"""BiT-L: the paper's recipe for a large user-provided dataset (JFT-300M in the paper).

    python train.py --config=configs/bit_l.py:dataset=my_large_dataset,num_classes=18291 \
        --workdir=/tmp/bit_l --config.data_dir=/data/tfds

40 epochs with decays at epochs 10, 23, 30 and 37, multi-label sigmoid loss, as in the
paper (Section 3.1). The dataset and its class count are the user's.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="BiT-M-R152x4", dataset="my_large_dataset",
                          num_classes=18291, recipe="paper")
  c = common.upstream_config()
  c.model = args.model
  c.dataset = args.dataset
  c.num_classes = args.num_classes
  c.loss = "sigmoid_xent"
  c.total_epochs = 40
  c.decay_epochs = (10, 23, 30, 37)
  c.train_split = "train[:99%]"
  c.eval_split = "train[99%:]"
  c.pp_train, c.pp_eval = common.imagenet_pp(c.num_classes)
  return common.modern(c) if args.recipe == "modern" else c
