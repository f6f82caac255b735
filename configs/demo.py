"""The offline demo: pretrain tiny-R14 on embedded animal silhouettes, 2 CPU cores.

    python train.py --config=configs/demo.py --workdir=workdir/demo

Upstream data ships inside the animal-mnist pip package: `bit_animals_upstream` is its ten
animals' silhouettes (7,500 train / 1,000 test, 28x28) less the 1,500 farm-animal images the
transfer trains on. In about 2 minutes the loss falls from 2.3 and held-out top-1 ends near
90% (chance 10%); TensorBoard events, a checkpoint and the exported `params.npz` (official
layout) are left in the workdir, ready for `transfer.py --config=configs/transfer.py:demo=True`,
which fine-tunes on 5 and 10 images per class of five farm animals (`bit_farm_animals`),
images this pretraining never saw.

While it pretrains, the `fewshot` evaluator fits ridge classifiers on the frozen features of 1,
5 and 10 images per class of two datasets pretraining never trains on, `bit_farm_animals` and
`bit_digits` (250 train and 250 test images of each), every 150 steps: TensorBoard's
fewshot/bit_farm_animals_10shot rises as the features improve (tags
fewshot/<dataset>_<k>shot, each the mean of 3 draws of the shots).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, model="tiny-R14", total_steps=600)
  c = common.upstream_config()
  c.model = args.model
  c.num_classes = 10
  c.image_size = 32
  c.dataset = "bit_animals_upstream"
  c.train_split = "train"
  c.eval_split = "test"
  c.pp_train = "decode|resize(36)|random_crop(32)|flip_lr|value_range(-1,1)|onehot(10)"
  c.pp_eval = "decode|resize(32)|value_range(-1,1)|onehot(10)"
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
  c.evals.fewshot = common.fewshot_eval(
      datasets={"bit_farm_animals": ("bit_farm_animals", "train[:250]", "test[:250]"),
                "bit_digits": ("bit_digits", "train[:250]", "test[:250]")},
      shots=(1, 5, 10), pp="decode|resize(32)|value_range(-1,1)|keep('image', 'label')",
      every_steps=150)
  return c
