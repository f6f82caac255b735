"""The 19 VTAB-1k tasks: TFDS name and version, classes, label preprocessing and split strings.

Everything restates google-research/task_adaptation (`task_adaptation/data/*.py` for datasets
and splits, `scripts/run_all_tasks.sh` for which 19 tasks): results are only comparable with the
published ones if these are exactly the same.

Every task trains on a train portion and validates on a validation portion; for several data
sets the validation portion is a held-out tail of TFDS `train`, and `test` is not always TFDS
`test`. The 1k splits are always the first 800 train and the first 200 validation examples:

    train800       = <train portion>[:800]
    val200         = <validation portion>[:200]
    train800val200 = train800 + val200     (what VTAB-1k fine-tunes on)
    test           = the task's test portion (what VTAB-1k reports top-1 on)

All split strings use absolute example indices, so they do not depend on TFDS's rounding of
percent slices.

Two fields come from the BiT paper rather than task_adaptation: `image_hw`, a typical image
size for the HyperRule's resolution (most of these datasets have variable-size images, and
mock data has none), and `flip` / `random_crop`, off where the augmentation would change the
label (BiT, Kolesnikov et al. 2020, Supplementary F).

    task = registry.get("clevr_count")
    ds = tfds.load(task.tfds, split=task.splits["train800val200"]).map(task.preprocess)
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import tensorflow_datasets as tfds

from bit_jax.errors import UserError
from bit_jax.vtab import labels

GROUPS = ("natural", "specialized", "structured")
SPLIT_KEYS = ("train800", "val200", "train800val200", "test")
TRAIN_EXAMPLES = 800
VAL_EXAMPLES = 200


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  group: str  # One of GROUPS.
  tfds: str  # `name[/config]:version` for `tfds.builder` / `tfds.load`.
  num_classes: int
  splits: Mapping[str, str]  # SPLIT_KEYS -> TFDS split string.
  tfds_sizes: Mapping[str, int]  # Examples in each TFDS split used (the reference's tests).
  preprocess: labels.Preprocess  # TFDS example -> {"image": uint8 HxWx3, "label": int64}.
  label: str  # What the label is, in words.
  source: str  # Where google-research/task_adaptation defines it, in task_adaptation/data/.
  note: str = ""  # Anything a user of this registry must know.
  # A typical (height, width): TFDS's fixed image shape, else the dataset's documented size.
  image_hw: tuple[int, int] = dataclasses.field(kw_only=True)
  flip: bool = dataclasses.field(default=True, kw_only=True)  # Random horizontal flips.
  random_crop: bool = dataclasses.field(default=True, kw_only=True)  # Else resize to the crop.


def _splits(val: str = "validation", val_start: int = 0, test: str = "test") -> dict[str, str]:
  """The 1k split strings; every task's train portion starts at TFDS `train[0]`."""
  train800 = f"train[:{TRAIN_EXAMPLES}]"
  if val_start:
    val200 = f"{val}[{val_start}:{val_start + VAL_EXAMPLES}]"
  else:
    val200 = f"{val}[:{VAL_EXAMPLES}]"
  return {"train800": train800, "val200": val200, "train800val200": f"{train800}+{val200}",
          "test": test}


_AS_IS = "TFDS label as is"

# Split arithmetic, as the reference computes it from TFDS sizes (integer division):
#   90% of train:  caltech101 3060 -> 2754, cifar100 50000 -> 45000, svhn 73257 -> 65931,
#                  clevr 70000 -> 63000.  80%: oxford_iiit_pet 3680 -> 2944.
#   60/20/20 of train: eurosat 27000 -> 16200 | 5400 | rest, resisc45 31500 -> 18900 | 6300 | rest.
#   80/10/10 of train: dsprites 737280 -> 589824 | 73728 | rest.
#   smallnorb: validation = test[:50%], test = test[50%:] of 24300 -> 12150.
# Typical image sizes (image_hw, height x width): TFDS's fixed image shape for cifar100, svhn,
# patch_camelyon, eurosat, resisc45, dmlab, dsprites and smallnorb (the registry tests check
# these); else the dataset's own description: caltech101 "typical edge lengths of 200-300
# pixels" (TFDS), dtd 300x300 to 640x640 (the smallest taken), flowers rescaled to a shortest
# side of 500, pets mostly 500x375, sun397/tfds at most 120,000 pixels, btgraham-300 an eyeball
# radius of 300 px cropped to 90%, CLEVR's 480x320 renders, KITTI's ~1242x375 frames. The
# HyperRule only asks whether h x w is below 96 x 96 (cifar100, svhn, eurosat, dsprites).
TASKS: tuple[Task, ...] = (
    # --- natural ---
    Task("caltech101", "natural", "caltech101:3.*.*", 102,
         _splits(val="train", val_start=2754), {"train": 3060, "test": 6084},
         labels.image_and_label, _AS_IS + " (101 categories + background)",
         "caltech.py Caltech101: val = train[2754:] (last 10% of train)",
         image_hw=(200, 300)),
    Task("cifar100", "natural", "cifar100:3.*.*", 100,
         _splits(val="train", val_start=45000), {"train": 50000, "test": 10000},
         labels.image_and_label, _AS_IS + " (fine labels)",
         "cifar.py CifarData(num_classes=100): val = train[45000:]",
         image_hw=(32, 32)),
    Task("dtd", "natural", "dtd:3.*.*", 47,
         _splits(), {"train": 1880, "validation": 1880, "test": 1880},
         labels.image_and_label, _AS_IS, "dtd.py DTDData: TFDS train/validation/test",
         image_hw=(300, 300)),
    Task("oxford_flowers102", "natural", "oxford_flowers102:2.*.*", 102,
         _splits(), {"train": 1020, "validation": 1020, "test": 6149},
         labels.image_and_label, _AS_IS,
         "oxford_flowers102.py OxfordFlowers102Data: TFDS train/validation/test",
         image_hw=(500, 667)),
    Task("oxford_iiit_pet", "natural", "oxford_iiit_pet:3.*.*", 37,
         _splits(val="train", val_start=2944), {"train": 3680, "test": 3669},
         labels.image_and_label, _AS_IS,
         "oxford_iiit_pet.py OxfordIIITPetData: val = train[2944:] (last 20% of train)",
         note=("tensorflow-datasets 4.9 builds only oxford_iiit_pet 4.0.0 (same split sizes; "
               "'fix corrupt images'): 3.*.* loads only from data prepared by an older TFDS"),
         image_hw=(375, 500)),
    Task("svhn", "natural", "svhn_cropped:3.*.*", 10,
         _splits(val="train", val_start=65931), {"train": 73257, "test": 26032},
         labels.image_and_label, _AS_IS, "svhn.py SvhnData: val = train[65931:]",
         image_hw=(32, 32)),
    Task("sun397", "natural", "sun397/tfds:4.*.*", 397,
         _splits(), {"train": 76128, "validation": 10875, "test": 21750},
         labels.image_and_label, _AS_IS,
         "sun397.py Sun397Data(config='tfds'): TFDS train/validation/test",
         image_hw=(300, 400)),
    # --- specialized ---
    Task("patch_camelyon", "specialized", "patch_camelyon:2.*.*", 2,
         _splits(), {"train": 262144, "validation": 32768, "test": 32768},
         labels.image_and_label, _AS_IS,
         "patch_camelyon.py PatchCamelyonData: TFDS train/validation/test",
         image_hw=(96, 96)),
    Task("eurosat", "specialized", "eurosat/rgb:2.*.*", 10,
         _splits(val="train", val_start=16200, test="train[21600:]"), {"train": 27000},
         labels.image_and_label, _AS_IS,
         "eurosat.py EurosatData(subset='rgb'): train | val | test = train 60% | 20% | 20%",
         image_hw=(64, 64)),
    Task("resisc45", "specialized", "resisc45:3.*.*", 45,
         _splits(val="train", val_start=18900, test="train[25200:]"), {"train": 31500},
         labels.image_and_label, _AS_IS,
         "resisc45.py Resisc45Data: train | val | test = train 60% | 20% | 20%",
         image_hw=(256, 256)),
    Task("diabetic_retinopathy", "specialized",
         "diabetic_retinopathy_detection/btgraham-300:3.*.*", 5,
         _splits(), {"train": 35126, "validation": 10906, "test": 42670},
         labels.image_and_label, _AS_IS + " (severity grade 0-4)",
         "diabetic_retinopathy.py RetinopathyData(config='btgraham-300'), "
         "heavy_train_augmentation off: TFDS train/validation/test",
         note="TFDS needs the Kaggle files placed by hand (manual_dir)",
         image_hw=(540, 540)),
    # --- structured ---
    Task("clevr_count", "structured", "clevr:3.*.*", 8,
         _splits(val="train", val_start=63000, test="validation"),
         {"train": 70000, "validation": 15000},
         labels.clevr_count, "number of objects - 3 (3..10 objects)",
         "clevr.py CLEVRData(task='count_all'): val = train[63000:], test = TFDS validation",
         image_hw=(320, 480), random_crop=False),
    Task("clevr_distance", "structured", "clevr:3.*.*", 6,
         _splits(val="train", val_start=63000, test="validation"),
         {"train": 70000, "validation": 15000},
         labels.clevr_distance,
         "min object pixel_coords depth binned by (0, 8, 8.5, 9, 9.5, 10, 100]",
         "clevr.py CLEVRData(task='closest_object_distance'): val = train[63000:], "
         "test = TFDS validation",
         image_hw=(320, 480), random_crop=False),
    Task("dmlab", "structured", "dmlab:2.0.1", 6,
         _splits(), {"train": 65550, "validation": 22628, "test": 22735},
         labels.image_and_label, _AS_IS + " ({close, far, very far} x {positive, negative})",
         "dmlab.py DmlabData: TFDS train/validation/test",
         image_hw=(360, 480), random_crop=False),
    Task("kitti_distance", "structured", "kitti:3.1.0", 4,
         _splits(), {"train": 6347, "validation": 423, "test": 711},
         labels.kitti_distance,
         "min Car/Van/Truck location depth binned by (-100, 8, 20, 999]; 3 = no vehicle",
         "kitti.py KittiData(task='closest_vehicle_distance'): TFDS train/validation/test",
         note=("task_adaptation pins kitti:3.1.0; its download is reported broken "
               "(task_adaptation issue 18) and later VTAB code uses 3.2.0"),
         image_hw=(375, 1242), random_crop=False),
    Task("dsprites_location", "structured", "dsprites:2.*.*", 16,
         _splits(val="train", val_start=589824, test="train[663552:]"), {"train": 737280},
         labels.dsprites("label_x_position", num_values=32, num_classes=16),
         "label_x_position (32 values) // 2",
         "dsprites.py DSpritesData('label_x_position', num_classes=16): "
         "train | val | test = train 80% | 10% | 10%",
         image_hw=(64, 64), flip=False, random_crop=False),
    Task("dsprites_orientation", "structured", "dsprites:2.*.*", 16,
         _splits(val="train", val_start=589824, test="train[663552:]"), {"train": 737280},
         labels.dsprites("label_orientation", num_values=40, num_classes=16),
         "label_orientation (40 values) * 16 // 40",
         "dsprites.py DSpritesData('label_orientation', num_classes=16): "
         "train | val | test = train 80% | 10% | 10%",
         image_hw=(64, 64), flip=False),
    Task("smallnorb_azimuth", "structured", "smallnorb:2.*.*", 18,
         _splits(val="test", test="test[12150:]"), {"train": 24300, "test": 24300},
         labels.smallnorb("label_azimuth"), "label_azimuth as is",
         "smallnorb.py SmallNORBData('label_azimuth'): val = test[:50%], test = test[50%:]",
         image_hw=(96, 96), flip=False),
    Task("smallnorb_elevation", "structured", "smallnorb:2.*.*", 9,
         _splits(val="test", test="test[12150:]"), {"train": 24300, "test": 24300},
         labels.smallnorb("label_elevation"), "label_elevation as is",
         "smallnorb.py SmallNORBData('label_elevation'): val = test[:50%], test = test[50%:]",
         image_hw=(96, 96)),
)

_BY_NAME = {task.name: task for task in TASKS}


def names() -> tuple[str, ...]:
  return tuple(_BY_NAME)


def get(name: str) -> Task:
  if name not in _BY_NAME:
    raise UserError(f"unknown VTAB task {name!r}; valid tasks: {', '.join(_BY_NAME)}")
  return _BY_NAME[name]


def group(name: str) -> tuple[Task, ...]:
  if name not in GROUPS:
    raise UserError(f"unknown VTAB group {name!r}; valid groups: {', '.join(GROUPS)}")
  return tuple(task for task in TASKS if task.group == name)


def select(names_or_groups: Iterable[str] = ()) -> tuple[Task, ...]:
  """Tasks named directly or by group, in registry order; nothing selected means all 19."""
  wanted = set()
  for name in names_or_groups:
    if name in GROUPS:
      wanted.update(task.name for task in group(name))
    elif name in _BY_NAME:
      wanted.add(name)
    else:
      raise UserError(f"unknown VTAB task or group {name!r}; valid groups: {', '.join(GROUPS)}; "
                      f"valid tasks: {', '.join(_BY_NAME)}")
  return tuple(task for task in TASKS if not wanted or task.name in wanted)


def absolute_slices(task: Task, split: str) -> list[tuple[str, int, int]]:
  """`task.splits[split]` as [(tfds_split, start, stop)], using the reference's split sizes."""
  if split not in SPLIT_KEYS:
    raise UserError(f"unknown VTAB split {split!r}; valid splits: {', '.join(SPLIT_KEYS)}")
  infos = {name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in task.tfds_sizes.items()}
  instructions = tfds.core.ReadInstruction.from_spec(task.splits[split]).to_absolute(infos)
  return [(i.splitname, i.from_ or 0, task.tfds_sizes[i.splitname] if i.to is None else i.to)
          for i in instructions]


def num_examples(task: Task, split: str) -> int:
  return sum(stop - start for _, start, stop in absolute_slices(task, split))


def as_json(task: Task) -> dict:
  """The `list --json` record of a task."""
  return {"name": task.name, "group": task.group, "tfds": task.tfds,
          "num_classes": task.num_classes, "splits": dict(task.splits)}
