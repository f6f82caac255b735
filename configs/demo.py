"""The offline demo: pretrain tiny-R14 on embedded wild-animal silhouettes, 2 CPU cores.

    python train.py --config=configs/demo.py --workdir=workdir/demo

Upstream data ships inside the animal-mnist pip package: `bit_wild_animals` is its bear,
bird, elephant, giraffe and zebra silhouettes (4,500 train / 500 test, 28x28). In a few
minutes the loss falls and held-out top-1 ends far above the 20% of chance; TensorBoard
events, a checkpoint and the exported `params.npz` (official layout) are left in the
workdir, ready for `transfer.py --config=configs/transfer.py:demo=True`, which transfers to
the five farm animals the model never saw (`bit_farm_animals`).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="tiny-R14", total_steps=600)
  c = common.upstream_config()
  c.model = args.model
  c.num_classes = 5
  c.image_size = 32
  c.dataset = "bit_wild_animals"
  c.train_split = "train"
  c.eval_split = "test"
  c.pp_train = "decode|resize(36)|random_crop(32)|flip_lr|value_range(-1,1)|onehot(5)"
  c.pp_eval = "decode|resize(32)|value_range(-1,1)|onehot(5)"
  c.shuffle_buffer = 10_000
  c.batch_size = 64
  c.eval_batch_size = 250
  c.lr_per_256 = 0.4  # Small model, short run: a larger rate than the 0.03 of the paper.
  c.warmup_steps = 50
  c.total_steps = args.total_steps
  c.schedule = "cosine"
  c.weight_decay = 1e-4
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  return c
