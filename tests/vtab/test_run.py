"""`python -m bit_jax.vtab run`: all 19 tasks end to end on mock data, resuming, a failing
task, the sweeps' choices (VTAB's lightweight sweep, hyperrule_sweep) and bad input.

The end-to-end run is a real command in a fresh process (one CPU device, as a user runs it):
`python tests/vtab/test_run.py MOCK_DIR run ...` runs the command line on mock data. The other
tests run in process with a fake `finetune.finetune`, so nothing compiles.
"""

import json
import operator
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline
from bit_jax import atomic_files, finetune, models, npz, run_dir
from bit_jax.errors import NonFiniteLossError
from bit_jax.vtab import __main__ as cli
from bit_jax.vtab import registry

ROOT = pathlib.Path(__file__).parents[2]
CONFIG = ROOT / "configs" / "vtab.py"
NUM_EXAMPLES = 8  # Per split: mock data ignores split slicing.
OBJECTS = 5  # Every unknown dimension (objects, image height and width) in the mock examples.
PETS_PREPARED_VERSION = "3.2.0"
# The cheapest honest run: the smallest crop and batch, one step per task.
TINY = ["--config.resolution=36,32", "--config.total_steps=1", "--config.batch_size=8",
        "--config.eval_batch_size=8"]
# The end-to-end model: one bottleneck unit, the smallest BiT ResNet-v2. Each task compiles
# its own train step (one per class count); depth is not what the run is tested for, and one
# unit compiles 3x faster than tiny-R14's four.
SMALLEST = "test-R5"
SMALLEST_ARCHITECTURE = models.Architecture((1,), 1, base_width=32)


def register_smallest(setitem=operator.setitem) -> None:
  """Makes SMALLEST a model name; `monkeypatch.setitem` undoes it after a test."""
  setitem(models.TINY_ARCHITECTURES, SMALLEST, SMALLEST_ARCHITECTURE)
  setitem(models.MODEL_NAMES, SMALLEST, SMALLEST)


# --- Mock data for every task ---------------------------------------------------------------

def mock_examples(builder, split, decoders=None, read_config=None, shuffle_files=False):
  """NUM_EXAMPLES examples of the builder's own features, images PNG-encoded.

  Every unknown dimension is OBJECTS long: TFDS's random mock draws each field of a Sequence
  with its own length (kitti `objects/type` and `objects/location` disagree), which no real
  example does. Images stay encoded because sources read them with decoding skipped.
  """
  del split, decoders, read_config, shuffle_files  # The same examples for every split.
  features = builder.info.features

  def leaf(spec):
    shape = [OBJECTS if d is None else d for d in spec.shape]
    return tf.fill(shape, "") if spec.dtype == tf.string else tf.ones(shape, spec.dtype)

  example = tf.nest.map_structure(leaf, features.get_tensor_spec())
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      example[key] = tf.io.encode_png(example[key])
  return tf.data.Dataset.from_tensors(example).repeat(NUM_EXAMPLES)


def write_old_pets_metadata(data_dir: pathlib.Path) -> None:
  """oxford_iiit_pet as an older TFDS prepared it (the reference's 3.x), metadata only.

  TFDS 4.9 reads such data but cannot build it (registry note), so mock data alone cannot
  cover the task: with this, `tfds.builder("oxford_iiit_pet:3.*.*")` finds the files.
  """
  path = data_dir / "oxford_iiit_pet" / PETS_PREPARED_VERSION
  path.mkdir(parents=True, exist_ok=True)
  tfds.builder("oxford_iiit_pet").info.write_to_directory(path)
  info = json.loads((path / "dataset_info.json").read_text())
  (path / "dataset_info.json").write_text(json.dumps({**info,
                                                      "version": PETS_PREPARED_VERSION}))


def mock_data(data_dir: pathlib.Path, examples=None):
  write_old_pets_metadata(data_dir)
  return tfds.testing.mock_data(data_dir=str(data_dir), as_dataset_fn=examples or mock_examples)


def main(argv):
  """`python tests/vtab/test_run.py MOCK_DIR COMMAND ...`: the command line on mock data."""
  from bit_jax import entry  # pylint: disable=import-outside-toplevel
  entry.prepare()
  cli.show_progress()
  register_smallest()
  with mock_data(pathlib.Path(argv[0])):
    cli.main(argv[1:])


# --- The 19 tasks end to end, then resumed ------------------------------------------------

@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory):
  """One real `run` over all 19 tasks: (command-line args, finished process, workdir)."""
  tmp = tmp_path_factory.mktemp("vtab")
  model = models.ResNetV2(SMALLEST_ARCHITECTURE, num_classes=10)
  npz.save(finetune.init_params(model, jax.random.key(0), 32), tmp / "pretrained.npz")
  args = ["run", f"--config={CONFIG}:model={SMALLEST},init={tmp / 'pretrained.npz'}", *TINY,
          f"--workdir={tmp / 'work'}"]
  # Compiling dominates: XLA_FLAGS (tests/conftest.py) leave out XLA's CPU optimizations.
  env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
  done = subprocess.run([sys.executable, __file__, str(tmp / "mock"), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  return args, done, tmp / "work"


def test_all_tasks_end_to_end_on_mock_data(end_to_end):
  _, done, workdir = end_to_end
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == [str(workdir / "results.json"),
                                 str(workdir / "report" / "report.md")]
  results = json.loads((workdir / "results.json").read_text())
  assert list(results) == list(registry.names())
  for top1 in results.values():
    assert len(top1) == 1 and 0 <= top1[0] <= 1
  for kind in ("md", "csv", "png"):
    assert (workdir / "report" / f"report.{kind}").stat().st_size > 0
  assert "| cifar100 | natural |" in (workdir / "report" / "report.md").read_text()


def test_each_run_records_its_plan(end_to_end):
  _, _, workdir = end_to_end
  record = json.loads((workdir / "runs" / "dsprites_location" / "seed0.json").read_text())
  assert record["num_test_examples"] == NUM_EXAMPLES and 0 <= record["ece"] <= 1
  assert (record["train_split"], record["eval_split"]) == ("train800val200", "test")
  assert record["resolution"] == [36, 32] and record["schedule"] == [1] * 5
  assert (record["base_lr"], record["mixup_alpha"]) == (0.003, 0.0)  # Under 20k: no MixUp.
  assert (record["flip"], record["random_crop"]) == (False, False)  # BiT Supplementary F.


def test_a_rerun_finetunes_nothing_and_gives_the_same_results(end_to_end, monkeypatch, capsys):
  args, _, workdir = end_to_end
  before = (workdir / "results.json").read_text()
  monkeypatch.setattr(finetune, "finetune", _must_not_finetune)
  register_smallest(monkeypatch.setitem)
  cli.main(args)  # Every task is finished: no data, model or checkpoint is even loaded.
  assert capsys.readouterr().out.split()[0] == str(workdir / "results.json")
  assert (workdir / "results.json").read_text() == before


def _must_not_finetune(*args, **kwargs):
  raise AssertionError("a finished run was fine-tuned again")


# --- Failures and the sweep, with a fake fine-tuning ----------------------------------------

class FakeFinetune:
  """Stands in for `finetune.finetune`: records each call; top-1 from `score(call)`; keeps
  the model it was asked to keep."""

  def __init__(self, score=lambda call: 0.5, fail=()):
    self.calls, self.score, self.fail = [], score, fail

  def __call__(self, model, params, train_source, train_split, test_source, test_split,
               num_classes, plan, *, seed, mesh, cache_train=False, keep=None):
    del model, test_source, mesh, cache_train
    call = {"task": train_source.name, "train": train_split, "eval": test_split,
            "num_classes": num_classes, "lr": plan.base_lr, "steps": plan.schedule[-1],
            "seed": seed, "plan": plan}
    self.calls.append(call)
    if call["task"] in self.fail:
      raise RuntimeError(f"disk on fire under {call['task']}")
    result = {"top1": self.score(call), "ece": 0.25, "num_test_examples": NUM_EXAMPLES}
    if keep is not None:
      finetune.keep_run(keep, params, plan, result)  # As the real one keeps its model.
    return result, params


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
  """run(fake, *flags) -> exit code of `run` over tmp_path/work, from scratch, on mock data."""
  monkeypatch.setattr(finetune, "init_params", lambda *args, **kwargs: None)  # No compile.
  kept = {}  # The tested runs' models, by directory: (params, card); nothing is written.
  monkeypatch.setattr(run_dir, "write", lambda d, params, card: kept.update(
      {str(d): (params, card)}))

  def run(fake, *flags, examples=None):
    monkeypatch.setattr(finetune, "finetune", fake)
    with mock_data(tmp_path / "mock", examples):
      try:
        # ml_collections joins a tuple field given twice ((36, 32, 20, 16)): one of each.
        named = {flag.split("=")[0] for flag in flags}
        if "--config.protocol=vtab_lightweight" in flags:  # It has its own steps and size.
          named |= {"--config.resolution", "--config.total_steps"}
        tiny = [flag for flag in TINY if flag.split("=")[0] not in named]
        cli.main(["run", f"--config={CONFIG}:model=tiny-R14,init=", *tiny,
                  f"--workdir={tmp_path / 'work'}", *flags])
      except SystemExit as exit_:
        return exit_.code
    return 0
  run.kept = kept
  return run


def test_a_failing_task_is_reported_and_retried_alone(fake_run, tmp_path, capsys, caplog):
  workdir = tmp_path / "work"
  tasks = "--config.tasks=cifar100,dtd,svhn"
  assert fake_run(FakeFinetune(fail=("dtd",)), tasks) == 1
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
      "error: 1 VTAB task(s) failed: dtd (tracebacks in")
  [logged] = [r.getMessage() for r in caplog.records if "VTAB task" in r.getMessage()]
  assert "dtd failed: RuntimeError: disk on fire under dtd" in logged and "\n" not in logged
  assert "disk on fire" in (workdir / "runs" / "dtd" / "error.txt").read_text()
  results = json.loads((workdir / "results.json").read_text())
  assert results == {"cifar100": [0.5], "dtd": None, "svhn": [0.5]}
  assert "dtd" in (workdir / "report" / "report.md").read_text().split("Missing")[-1]

  retry = FakeFinetune(score=lambda call: 0.75)
  assert fake_run(retry, tasks) == 0
  assert [call["task"] for call in retry.calls] == ["dtd"]
  results = json.loads((workdir / "results.json").read_text())
  assert results == {"cifar100": [0.5], "dtd": [0.75], "svhn": [0.5]}
  assert not (workdir / "runs" / "dtd" / "error.txt").exists()

  # Another task alone: results.json and the report keep the tasks finished before.
  assert fake_run(FakeFinetune(score=lambda call: 0.25), "--config.tasks=eurosat") == 0
  results = json.loads((workdir / "results.json").read_text())
  assert results == {"cifar100": [0.5], "dtd": [0.75], "svhn": [0.5], "eurosat": [0.25]}
  assert "| cifar100 | natural | 50.0 | 1 |" in (workdir / "report" / "report.md").read_text()


# Validation top-1 per (learning rate, steps); the 0.1 x 4-step candidate diverges.
VAL_TOP1 = {(0.01, 2): 0.3, (0.01, 4): 0.7, (0.1, 2): 0.5}
TEST_TOP1 = 0.9


def _sweep_score(call):
  if call["eval"] == registry.get("cifar100").splits["test"]:
    return TEST_TOP1 + 0.01 * call["seed"]
  if (call["lr"], call["steps"]) not in VAL_TOP1:
    raise NonFiniteLossError("fine-tuning diverged: loss nan (parameter norm nan) at "
                             "step 3; nothing was saved; lower --config.base_lr")
  return VAL_TOP1[call["lr"], call["steps"]]


def test_hyperrule_sweep_retrains_the_best_validation_candidate(fake_run, tmp_path):
  sweep = ["--config.protocol=hyperrule_sweep", "--config.sweep_lrs=0.01,0.1",
           "--config.sweep_steps=2,4", "--config.tasks=cifar100", "--config.seeds=0,1",
           "--config.total_steps=0"]
  fake = FakeFinetune(score=_sweep_score)
  assert fake_run(fake, *sweep) == 0
  splits = registry.get("cifar100").splits
  for seed in (0, 1):
    calls = [c for c in fake.calls if c["seed"] == seed]
    candidates, [final] = calls[:-1], calls[-1:]
    assert [(c["lr"], c["steps"]) for c in candidates] == [(0.01, 2), (0.01, 4), (0.1, 2),
                                                           (0.1, 4)]
    assert {(c["train"], c["eval"]) for c in candidates} == {(splits["train800"],
                                                               splits["val200"])}
    assert (final["train"], final["eval"]) == (splits["train800val200"], splits["test"])
    assert (final["lr"], final["steps"]) == (0.01, 4)  # The best on val200.
  workdir = tmp_path / "work"
  record = json.loads((workdir / "runs" / "cifar100" / "seed0.json").read_text())
  assert record["chosen"] == {"base_lr": 0.01, "steps": 4, "val200_top1": 0.7}
  assert len(record["candidates"]) == 3  # The diverged one is no candidate.
  assert json.loads((workdir / "results.json").read_text()) == {"cifar100": [0.9, 0.91]}
  # The tested run of each seed keeps its model, with its provenance; candidates keep none.
  assert sorted(fake_run.kept) == [str(workdir / "runs" / "cifar100" / f"seed{s}" / "model")
                                   for s in (0, 1)]
  _, card = fake_run.kept[str(workdir / "runs" / "cifar100" / "seed0" / "model")]
  assert card.num_classes == 100 and card.label_mapping.startswith("VTAB cifar100")
  assert (card.provenance["base_lr"], card.provenance["steps"]) == (0.01, 4)
  assert card.provenance["top1"] == 0.9

  # Resuming: finished candidates are kept; only the unfinished seed's final run is redone.
  (workdir / "runs" / "cifar100" / "seed1.json").unlink()
  again = FakeFinetune(score=_sweep_score)
  assert fake_run(again, *sweep) == 0
  assert [(c["seed"], c["lr"], c["steps"]) for c in again.calls] == [(1, 0.1, 4), (1, 0.01, 4)]


def test_a_sweep_whose_every_candidate_diverges_fails_its_task(fake_run, tmp_path, caplog):
  def diverges(call):
    raise NonFiniteLossError("fine-tuning diverged: loss nan (parameter norm nan) at step "
                             f"2; nothing was saved; lower --config.base_lr ({call['lr']})")
  fake = FakeFinetune(score=diverges)
  assert fake_run(fake, "--config.protocol=hyperrule_sweep", "--config.sweep_lrs=0.1,1",
                  "--config.sweep_steps=2", "--config.tasks=cifar100",
                  "--config.total_steps=0") == 1
  assert [c["lr"] for c in fake.calls] == [0.1, 1]  # No final run: nothing to choose.
  [logged] = [r.getMessage() for r in caplog.records if "VTAB task" in r.getMessage()]
  assert ("every sweep candidate diverged (lower --config.sweep_lrs); the first: fine-tuning "
          "diverged: loss nan") in logged and "(0.1)" in logged
  assert json.loads((tmp_path / "work" / "results.json").read_text()) == {"cifar100": None}


# --- VTAB's lightweight sweep ---------------------------------------------------------------

# Shortened for the test through the config (the published grid: lr 0.1, 0.01 x 2500, 10000
# steps at 224 px); val200 top-1 per (lr, steps): the best is 0.01 x 10 steps.
LIGHT_VAL_TOP1 = {(0.1, 10): 0.3, (0.1, 20): 0.5, (0.01, 10): 0.8, (0.01, 20): 0.6}
LIGHT_SIZE = 48  # Resized from the 32x32 mock images, as VTAB resizes every image to 224.
LIGHTWEIGHT = ["--config.protocol=vtab_lightweight", "--config.lightweight_lrs=0.1,0.01",
               "--config.lightweight_steps=10,20",
               f"--config.lightweight_resolution={LIGHT_SIZE}", "--config.tasks=cifar100"]
# A left-right ramp: a flip reverses it, a crop shifts or stretches it.
RAMP = np.tile((np.arange(32) * 8).astype(np.uint8)[None, :, None], (32, 1, 3))


def ramp_examples(builder, split, **kwargs):
  """mock_examples with every image the ramp."""
  png = tf.io.encode_png(RAMP)
  return mock_examples(builder, split, **kwargs).map(lambda ex: {**ex, "image": png})


class BatchRecordingFinetune(FakeFinetune):
  """Also draws each run's first training batch through the real input pipeline, as
  `finetune.train` builds it from the plan."""

  def __call__(self, model, params, train_source, train_split, test_source, test_split,
               num_classes, plan, *, seed, mesh, cache_train=False, keep=None):
    result = super().__call__(model, params, train_source, train_split, test_source,
                              test_split, num_classes, plan, seed=seed, mesh=mesh, keep=keep)
    batches = input_pipeline.train_iterator(
        train_source, train_split, plan.pp_train(num_classes), plan.batch_size, mesh,
        seed=seed, shuffle_buffer=plan.shuffle_buffer)
    self.calls[-1]["images"] = np.asarray(next(batches)["image"])
    return result


def _lightweight_score(call):
  if call["eval"] == registry.get("cifar100").splits["test"]:
    return TEST_TOP1
  return LIGHT_VAL_TOP1[call["lr"], call["steps"]]


def test_the_lightweight_sweep_picks_by_val200_and_retrains_on_train800val200(fake_run,
                                                                               tmp_path):
  fake = BatchRecordingFinetune(score=_lightweight_score)
  assert fake_run(fake, *LIGHTWEIGHT, "--config.seeds=0,1") == 0
  splits = registry.get("cifar100").splits
  for seed in (0, 1):
    *candidates, final = [c for c in fake.calls if c["seed"] == seed]
    assert [(c["lr"], c["steps"]) for c in candidates] == [(0.1, 10), (0.1, 20), (0.01, 10),
                                                           (0.01, 20)]
    assert {(c["train"], c["eval"]) for c in candidates} == {(splits["train800"],
                                                               splits["val200"])}
    assert (final["train"], final["eval"]) == (splits["train800val200"], splits["test"])
    assert (final["lr"], final["steps"]) == (0.01, 10)  # The best on val200.
    assert final["plan"] == candidates[2]["plan"]  # Retrained with the chosen candidate's plan.
  workdir = tmp_path / "work"
  record = json.loads((workdir / "runs" / "cifar100" / "seed0.json").read_text())
  assert record["protocol"] == "vtab_lightweight"
  assert record["chosen"] == {"base_lr": 0.01, "steps": 10, "val200_top1": 0.8}
  assert [c["val200_top1"] for c in record["candidates"]] == [0.3, 0.5, 0.8, 0.6]
  assert json.loads((workdir / "results.json").read_text()) == {"cifar100": [0.9, 0.9]}


def test_lightweight_preprocessing_is_a_resize_no_crop_no_flip_and_lr_drops_at_30_60_90(
    fake_run):
  fake = BatchRecordingFinetune(score=_lightweight_score)
  assert fake_run(fake, *LIGHTWEIGHT, examples=ramp_examples) == 0
  labels = "onehot(100)|keep('image', 'label')"
  for call in fake.calls:
    plan = call["plan"]
    assert plan.pp_train(100) == f"decode|resize({LIGHT_SIZE})|value_range(-1,1)|{labels}"
    assert plan.pp_eval(100) == f"decode|resize({LIGHT_SIZE})|value_range(-1,1)|{labels}"
    assert (plan.resize, plan.crop, plan.flip, plan.random_crop) == (
        LIGHT_SIZE, LIGHT_SIZE, False, False)
    assert (plan.mixup_alpha, plan.batch_size) == (0.0, 8)
    # No warmup; lr / 10 after 30%, 60% and 90% of the steps.
    assert plan.schedule == {10: (0, 3, 6, 9, 10), 20: (0, 6, 12, 18, 20)}[call["steps"]]
    # Every training image of the batch is the ramp resized to LIGHT_SIZE (bilinear, as
    # task_adaptation's tf.image.resize) and scaled to [-1, 1]: nothing flipped or cropped.
    resized = np.round(tf.image.resize(RAMP, (LIGHT_SIZE, LIGHT_SIZE)).numpy())
    expected = resized / 255 * 2 - 1
    images = call["images"]
    assert images.shape == (8, LIGHT_SIZE, LIGHT_SIZE, 3)
    # float32 against float64 scaling of the same pixels: ~1e-7, far below a level (2 / 255).
    np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), atol=1e-5)


def test_a_lightweight_workdir_records_its_protocol_and_refuses_another(fake_run, tmp_path,
                                                                        capsys):
  workdir = tmp_path / "work"
  assert fake_run(FakeFinetune(score=_lightweight_score), *LIGHTWEIGHT) == 0
  settings = json.loads((workdir / "settings.json").read_text())
  assert settings["protocol"] == "vtab_lightweight"
  assert (settings["lightweight_lrs"], settings["lightweight_steps"],
          settings["lightweight_resolution"]) == ([0.1, 0.01], [10, 20], LIGHT_SIZE)
  assert "total_steps" not in settings and "resolution" not in settings  # Not its fields.
  md = (workdir / "report" / "report.md").read_text()
  assert "| protocol |  | vtab_lightweight* |  | vtab_lightweight | vtab_lightweight |" in md
  assert "lightweight_steps 10,20 (published 2500,10000)" in md
  capsys.readouterr()

  assert fake_run(FakeFinetune(), "--config.tasks=cifar100") == 2  # The hyperrule protocol.
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {workdir} holds a run started with other settings "
                        "(protocol 'vtab_lightweight' -> 'hyperrule'") and "\n" not in err


# --- Damaged result files -------------------------------------------------------------------

DAMAGE = {
    "truncated": lambda text: text[:len(text) // 2],
    "empty": lambda text: "",
    "an empty object": lambda text: "{}",
    "no top1": lambda text: json.dumps({k: v for k, v in json.loads(text).items()
                                        if k != "top1"}),
    "a NaN top1": lambda text: json.dumps({**json.loads(text), "top1": float("nan")}),
    "a list": lambda text: "[0.5]",
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_seed_file_is_moved_aside_and_computed_again(damage, fake_run, tmp_path,
                                                                caplog):
  workdir = tmp_path / "work"
  flags = ["--config.tasks=dtd,svhn", "--config.seeds=0,1"]
  assert fake_run(FakeFinetune(), *flags) == 0
  path = workdir / "runs" / "dtd" / "seed1.json"
  damaged = damage(path.read_text())
  path.write_text(damaged)
  again = FakeFinetune(score=lambda call: 0.75)
  assert fake_run(again, *flags) == 0
  assert [(call["task"], call["seed"]) for call in again.calls] == [("dtd", 1)]
  assert json.loads((workdir / "results.json").read_text()) == {"dtd": [0.5, 0.75],
                                                                 "svhn": [0.5, 0.5]}
  assert json.loads(path.read_text())["top1"] == 0.75
  [aside] = path.parent.glob("seed1.json.unreadable-*")  # Kept, never deleted.
  assert aside.read_text() == damaged
  [logged] = [r.getMessage() for r in caplog.records if "is unusable" in r.getMessage()]
  assert f"{path} is unusable" in logged and str(aside) in logged and "\n" not in logged


def test_a_damaged_file_of_a_task_not_run_now_leaves_it_out_of_results(fake_run, tmp_path):
  workdir = tmp_path / "work"
  assert fake_run(FakeFinetune(), "--config.tasks=dtd") == 0
  (workdir / "runs" / "dtd" / "seed0.json").write_text('{"top1": 0.')
  assert fake_run(FakeFinetune(), "--config.tasks=svhn") == 0
  assert json.loads((workdir / "results.json").read_text()) == {"svhn": [0.5]}
  assert len(list((workdir / "runs" / "dtd").glob("seed0.json.unreadable-*"))) == 1


def test_a_truncated_sweep_candidate_is_moved_aside_and_computed_again(fake_run, tmp_path):
  sweep = ["--config.protocol=hyperrule_sweep", "--config.sweep_lrs=0.01,0.1",
           "--config.sweep_steps=2,4", "--config.tasks=cifar100", "--config.total_steps=0"]
  assert fake_run(FakeFinetune(score=_sweep_score), *sweep) == 0
  runs = tmp_path / "work" / "runs" / "cifar100"
  candidate = runs / "seed0" / "lr0.01_steps4.json"
  candidate.write_text(candidate.read_text()[:10])
  (runs / "seed0.json").unlink()  # Unfinished, so its candidates are read again.
  again = FakeFinetune(score=_sweep_score)
  assert fake_run(again, *sweep) == 0
  # The damaged candidate, the diverging one (no file), then the best, retrained.
  assert [(c["lr"], c["steps"]) for c in again.calls] == [(0.01, 4), (0.1, 4), (0.01, 4)]
  assert json.loads(candidate.read_text())["top1"] == 0.7
  assert len(list(candidate.parent.glob("lr0.01_steps4.json.unreadable-*"))) == 1
  assert json.loads((runs / "seed0.json").read_text())["chosen"]["steps"] == 4


def test_an_unreadable_settings_file(fake_run, tmp_path, capsys):
  workdir = tmp_path / "work"
  workdir.mkdir()
  settings = workdir / "settings.json"
  settings.write_text('{"model": "tiny-R1')
  # No finished results it could be about: moved aside, written again, the run goes on.
  assert fake_run(FakeFinetune(), "--config.tasks=dtd") == 0
  [aside] = workdir.glob("settings.json.unreadable-*")
  assert aside.read_text() == '{"model": "tiny-R1'
  assert json.loads(settings.read_text())["model"] == "tiny-R14"
  capsys.readouterr()

  # With finished results nothing can check their settings: one line, nothing touched.
  settings.write_text("{}")
  assert fake_run(FakeFinetune(), "--config.tasks=dtd") == 2
  assert "(no JSON object in it)" in capsys.readouterr().err
  settings.write_text("")
  assert fake_run(FakeFinetune(), "--config.tasks=dtd") == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {settings} is unreadable (not JSON: ") and "\n" not in err
  assert f"nothing shows what {workdir / 'runs' / 'dtd' / 'seed0.json'} came from: move it aside " \
      "to accept them" in err
  assert settings.read_text() == "" and len(list(workdir.glob("settings.json.*"))) == 1

  settings.rename(workdir / "settings.json.mine")  # Accepted: nothing is fine-tuned again.
  assert fake_run(FakeFinetune(fail=("dtd",)), "--config.tasks=dtd") == 0
  assert json.loads((workdir / "results.json").read_text()) == {"dtd": [0.5]}


def test_the_traceback_file_is_written_atomically(fake_run, tmp_path, monkeypatch):
  written, write = [], atomic_files.write

  def recording_write(path, *args, **kwargs):
    written.append(pathlib.Path(path))
    return write(path, *args, **kwargs)

  monkeypatch.setattr(atomic_files, "write", recording_write)
  assert fake_run(FakeFinetune(fail=("dtd",)), "--config.tasks=dtd") == 1
  error = tmp_path / "work" / "runs" / "dtd" / "error.txt"
  assert error in written and "disk on fire" in error.read_text()


# --- Bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (["--config.tasks=cifar10"], "unknown VTAB task or group 'cifar10'; valid groups: natural"),
    (["--config.tasks=,"], "no VTAB tasks in ','"),
    (["--config.protocol=grid"], "unknown protocol 'grid'; valid: hyperrule, vtab_lightweight, "
                                 "hyperrule_sweep"),
    (["--config.protocol=sweep"], "protocol 'sweep' is now 'hyperrule_sweep'"),
    (["--config.protocol=vtab_lightweight", "--config.total_steps=2"],
     "--config.total_steps and --config.resolution set the hyperrule protocols; "
     "vtab_lightweight takes --config.lightweight_steps and --config.lightweight_resolution"),
    (["--config.protocol=vtab_lightweight", "--config.lightweight_resolution=16"],
     "--config.lightweight_resolution 16 is too small: at least 32"),
    (["--config.protocol=vtab_lightweight", "--config.lightweight_steps=0"],
     "vtab_lightweight needs learning rates and positive step counts"),
    (["--config.resolution=448"], "--config.resolution takes RESIZE,CROP, e.g. "
                                  "--config.resolution=448,384; got 448"),
    (["--config.resolution=big,small"], "--config.resolution takes comma-separated ints"),
    (["--config.resolution=20,16"], "resolution (resize 20, crop 16) is too small for tiny-R14"),
    (["--config.seeds=one"], "--config.seeds takes comma-separated ints, e.g. "
                             "--config.seeds=0,1,2; got one"),
    (["--config.model=R50"], "unknown model 'R50'; valid models: BiT-S-R50x1"),
    (["--config.dtype=float16"], "unknown dtype 'float16'; valid: float32, bfloat16"),
    (["--config.protocol=hyperrule_sweep", "--config.total_steps=2"],
     "--total_steps shortens the hyperrule"),
    (["--config.init=missing.npz"], "checkpoint 'missing.npz' does not exist"),
])
def test_bad_input_exits_with_one_line(flags, message, fake_run, tmp_path, capsys):
  assert fake_run(FakeFinetune(), "--config.tasks=dtd", *flags) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {message}") and "\n" not in err, err
  assert not (tmp_path / "work").exists()


def test_a_workdir_of_other_settings_is_refused(fake_run, tmp_path, capsys):
  assert fake_run(FakeFinetune(), "--config.tasks=dtd") == 0
  assert fake_run(FakeFinetune(), "--config.tasks=dtd", "--config.batch_size=16") == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {tmp_path / 'work'} holds a run started with other "
                        "settings (batch_size 8 -> 16; recorded in ") and "\n" not in err


def test_run_flags_reach_the_config():
  base = [f"--config={CONFIG}:model=tiny-R14,init=", "--workdir=w"]
  default, _ = cli.run_flags(base)
  assert (default.remat, default.accum_steps, default.dtype) == (False, 1, "float32")
  memory_savers, _ = cli.run_flags(
      base + ["--config.remat", "--config.accum_steps=32", "--config.dtype=bfloat16"])
  assert (memory_savers.remat, memory_savers.accum_steps, memory_savers.dtype) == (
      True, 32, "bfloat16")


if __name__ == "__main__":
  main(sys.argv[1:])
