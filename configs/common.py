"""Fields the upstream configs share, those transfer and VTAB share, and argument parsing."""

from __future__ import annotations

import ml_collections

from bit_jax.errors import UserError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """`"model=BiT-S-R101x3,runlocal=True"` -> fields over `defaults`; unknown keys fail."""
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise UserError(f"bad config argument {item!r}; valid: "
                      f"{', '.join(f'{k}=...' for k in defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      if value.lower() not in _TRUE + _FALSE:
        raise UserError(f"bad config argument {item!r}: {key} must be a bool "
                        f"({', '.join(_TRUE + _FALSE)})")
      parsed[key] = value.lower() in _TRUE
    elif default is None:
      parsed[key] = value
    else:
      try:
        parsed[key] = type(default)(value)
      except ValueError:
        raise UserError(f"bad config argument {item!r}: {key} must be "
                        f"{_KINDS.get(type(default), type(default).__name__)}, "
                        f"e.g. {key}={default}") from None
  return parsed


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_KINDS = {int: "an integer", float: "a number"}


def upstream_config() -> ml_collections.ConfigDict:
  """The paper's upstream recipe (BiT Section 3.1); variants override a few fields."""
  c = ml_collections.ConfigDict()
  c.model = "BiT-S-R50x1"  # A release name from bit_jax.models.MODEL_NAMES.
  c.num_classes = 1000  # Head size.
  c.dtype = "float32"  # Compute dtype: float32 or bfloat16 (params stay float32).
  c.image_size = 224  # Training crop; also the init shape.

  c.dataset = "imagenet2012"  # A TFDS name (or `folder:/path`, or an embedded dataset).
  c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None: TFDS's default.
  c.train_split = "train"  # Split strings may slice and add: `train[:99%]+validation`.
  c.eval_split = "validation"  # Held-out split for top-1/top-5.
  c.num_train_examples = 0  # 0: from TFDS metadata. Set it where metadata is missing.
  c.pp_train, c.pp_eval = imagenet_pp(1000)  # Preprocessing op strings (input_pipeline.ops).
  c.shuffle_buffer = 250_000  # Examples in the shuffle buffer of each process.
  c.loss = "softmax_xent"  # softmax_xent, or sigmoid_xent for multi-label data.
  c.head_bias_init = 0.0  # Initial head bias; BiT's release has no upstream code to show one.

  c.batch_size = 4096  # Global batch, over all devices of all hosts.
  c.accum_steps = 1  # Micro-batches per step: same result, 1/accum_steps the memory.
  c.remat = False  # Recompute each unit in the backward pass: less memory, more compute.
  c.kernels = "auto"  # plain, cpu (bit_jax.cpu_kernels), auto: cpu on a CPU backend.
  c.sharding = "replicated"  # Or fsdp: large state leaves split over devices (bit_jax.sharding).
  c.fsdp_min_size = 2**20  # fsdp shards leaves of at least this many elements (4 MiB fp32).
  c.eval_batch_size = 1024  # Global eval batch; the tail is padded and masked.
  c.lr_per_256 = 0.03  # Linear scaling rule: lr = 0.03 x batch / 256.
  c.schedule = "paper"  # paper: warmup then /10 at decay_epochs; cosine: the modern variant.
  c.warmup_steps = 5000  # Linear warmup from 0.
  c.decay_epochs = (30, 60, 80)  # /10 at each (paper schedule only).
  c.total_epochs = 90
  c.total_steps = 0  # 0: from total_epochs; set it for short runs.
  c.momentum = 0.9
  c.weight_decay = 1e-4  # On conv and dense kernels.
  c.weight_decay_style = "coupled"  # coupled: L2 in the gradient (paper); decoupled: SGDW.
  c.grad_clip_norm = 0.0  # 0: off (paper); the modern variant clips at 1.0.
  c.seed = 0  # Parameter init and data order.

  c.log_every_steps = 100
  c.eval_every_steps = 5000
  # Named evaluators (bit_jax.evaluators), each run every its every_steps and at the end;
  # "eval" is the held-out split above, under the tags eval/top1, eval/top5, eval/loss, eval/ece.
  c.evals = ml_collections.ConfigDict({"eval": classification_eval()})
  c.checkpoint_every_steps = 1000
  # Multi-host: how often hosts agree on stopping after a SIGTERM (a blocking collective).
  c.preemption_check_every_steps = 10
  c.keep_checkpoints = 3
  c.async_checkpoints = True

  c.init = ""  # An official .npz to start from (after a workdir checkpoint and resume).
  c.resume = ""  # Another run's checkpoint directory to continue from.
  c.coordinator_address = ""  # Multi-host outside TPU/SLURM: host:port of process 0,
  c.num_processes = 0  # the number of processes,
  c.process_id = 0  # and this one's index.
  return c


def add_hyperrule_finetuning(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The BiT-HyperRule fine-tuning fields of configs/transfer.py and configs/vtab.py."""
  c.hyperrule_variant = "paper"  # paper: (448, 384) for large images; release: (512, 480).
  c.dtype = "float32"  # Compute dtype; parameters stay float32.
  c.base_lr = 0.003  # HyperRule: SGD momentum 0.9, no weight decay.
  c.batch_size = 512
  c.accum_steps = 1  # Micro-batches per step where memory is short; same result.
  c.remat = False  # Recompute each unit in the backward pass: less memory, more compute.
  c.kernels = "auto"  # plain, cpu (bit_jax.cpu_kernels), auto: cpu on a CPU backend.
  c.sharding = "replicated"  # Or fsdp: large state leaves split over devices (bit_jax.sharding).
  c.fsdp_min_size = 2**20  # fsdp shards leaves of at least this many elements (4 MiB fp32).
  c.eval_batch_size = 256  # The test split is evaluated in full: padded and masked.
  c.total_steps = 0  # 0: the HyperRule's; else its schedule rescaled to this many steps.
  c.mixup_alpha = -1.0  # -1: the HyperRule's (0 below 20k examples, else 0.1).
  c.trainable = "all"  # all (HyperRule), head (linear probe by SGD), or block1..block4 onwards.
  # Each run saves its state this often and resumes from it (<run dir>/checkpoints, removed
  # once params.npz is written); SIGTERM/Ctrl-C always saves. 0: only on SIGTERM.
  c.checkpoint_every_steps = 1000
  # Multi-host: how often hosts agree on stopping after a SIGTERM (a blocking collective).
  c.preemption_check_every_steps = 10
  return c


def imagenet_pp(num_classes: int, crop: int = 224, resize: int = 256) -> tuple[str, str]:
  """(train, eval) preprocessing of the paper: inception crop and flip / central crop."""
  labels = f"onehot({num_classes})|keep('image', 'label')"
  return (f"decode|inception_crop({crop})|flip_lr|value_range(-1,1)|{labels}",
          f"decode|resize_small({resize})|central_crop({crop})|value_range(-1,1)|{labels}")


# --- Evaluators (bit_jax.evaluators): an entry of config.evals each --------------------------
# Empty fields ("", 0) take the run's: dataset, eval_split, pp_eval, eval_batch_size and
# eval_every_steps. `--config.evals.NAME.enabled=False` switches one off.

def classification_eval(dataset: str = "", split: str = "", pp: str = "",
                        every_steps: int = 0) -> ml_collections.ConfigDict:
  """Top-1/top-5/loss/ECE of the head on one split."""
  return ml_collections.ConfigDict(dict(
      kind="classification", enabled=True, every_steps=every_steps, dataset=dataset,
      split=split, pp=pp, batch_size=0))


def real_eval(crop: int = 224, resize: int = 256,
              every_steps: int = 0) -> ml_collections.ConfigDict:
  """ImageNet-ReaL accuracy on TFDS imagenet2012_real (big_vision configs/bit_i1k.py)."""
  pp = (f"decode|resize_small({resize})|central_crop({crop})|value_range(-1,1)|"
        "onehot(1000, key='real_label', key_result='label')|keep('image', 'label')")
  return ml_collections.ConfigDict(dict(
      kind="real", enabled=True, every_steps=every_steps, dataset="imagenet2012_real",
      split="validation", pp=pp, batch_size=0))


def subset_eval(dataset: str, split: str, mapping: str, crop: int = 224, resize: int = 256,
                every_steps: int = 0) -> ml_collections.ConfigDict:
  """A 1000-way head on a dataset of a subset of its classes (ImageNet-A/-R, ObjectNet)."""
  pp = (f"decode|resize_small({resize})|central_crop({crop})|value_range(-1,1)|"
        "keep('image', 'label')")
  return ml_collections.ConfigDict(dict(
      kind="subset", enabled=True, every_steps=every_steps, dataset=dataset, split=split,
      pp=pp, batch_size=0, mapping=mapping))


# big_vision configs/common_fewshot.py, get_fewshot_lsr: {tag: (dataset, train, test)}.
COMMON_FEWSHOT = {
    "caltech101": ("caltech101", "train", "test"),
    "cars196": ("cars196:2.1.0", "train", "test"),
    "cifar100": ("cifar100", "train", "test"),
    "dtd": ("dtd", "train", "test"),
    "oxford_iiit_pet": ("oxford_iiit_pet", "train", "test"),
    "uc_merced": ("uc_merced", "train[:1000]", "train[1000:]"),
}


def fewshot_eval(datasets=None, shots=(1, 5, 10, 25), pp: str = "", crop: int = 224,
                 resize: int = 256, num_seeds: int = 3,
                 every_steps: int = 0) -> ml_collections.ConfigDict:
  """Ridge few-shot on frozen pre_logits (big_vision get_fewshot_lsr: l2 2^10, 3 seeds)."""
  pp = pp or (f"decode|resize({resize})|central_crop({crop})|value_range(-1,1)|"
              "keep('image', 'label')")
  return ml_collections.ConfigDict(dict(
      kind="fewshot", enabled=True, every_steps=every_steps,
      datasets=dict(datasets or COMMON_FEWSHOT), shots=tuple(shots), l2_reg=2.0**10,
      num_seeds=num_seeds, pp=pp, batch_size=0))


def modern(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The modern variant: cosine schedule, decoupled weight decay, gradient clipping."""
  c.schedule = "cosine"
  c.weight_decay_style = "decoupled"
  c.grad_clip_norm = 1.0
  return c
