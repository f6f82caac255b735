"""Where a run starts: workdir checkpoint -> config.resume -> config.init -> scratch; and
where fine-tuning starts: an official .npz, or a train.py workdir's export or checkpoint; a
damaged checkpoint is set aside for the newest good one."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bit_jax import checkpointing, models, npz, run_settings, train_step
from bit_jax.errors import UserError
from tests import faults

MODEL = models.get_model("tiny-R14", num_classes=3)
OPTIMIZER = optax.sgd(0.1, momentum=0.9)


def _init_state(params):
  if params is None:
    params = jax.jit(MODEL.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  return train_step.create_train_state(params, OPTIMIZER)


def _saved(directory, step, shift):
  state = _init_state(None)
  state = state.replace(step=jnp.asarray(step),
                        params=jax.tree.map(lambda x: x + shift, state.params))
  checkpointer = checkpointing.Checkpointer(str(directory), keep=2, use_async=False)
  checkpointer.save(step, state)
  checkpointer.close()
  return state


def _start(workdir, resume="", init=""):
  checkpointer = checkpointing.Checkpointer(str(workdir / "checkpoints"), keep=2)
  abstract = checkpointing.abstract_of(_init_state(None))
  return checkpointing.restore_or_initialize(checkpointer, abstract, _init_state, MODEL,
                                             resume=resume, init=init)


def _beta(state):
  return np.asarray(state.params["norm"]["bias"])


def test_scratch_when_nothing_is_given(tmp_path):
  state, origin = _start(tmp_path)
  assert origin == "initialised from scratch" and int(state.step) == 0


def test_init_loads_an_official_npz_with_a_fresh_optimizer(tmp_path):
  params = jax.tree.map(lambda x: x + 2.0, _init_state(None).params)
  params["head"]["kernel"] = np.ones((1024, 7))  # Another task's head.
  params["head"]["bias"] = np.ones(7)
  npz.save(params, tmp_path / "init.npz")
  state, origin = _start(tmp_path, init=str(tmp_path / "init.npz"))
  assert origin.startswith(f"initialised from {tmp_path / 'init.npz'}")
  assert "replaced (zero-initialised): head/bias" in origin
  np.testing.assert_array_equal(_beta(state), 2.0)
  assert not np.asarray(state.params["head"]["kernel"]).any()
  assert int(state.step) == 0


def test_resume_beats_init_and_workdir_beats_resume(tmp_path):
  npz.save(jax.tree.map(lambda x: x + 2.0, _init_state(None).params), tmp_path / "init.npz")
  _saved(tmp_path / "other", 7, shift=3.0)
  state, origin = _start(tmp_path, init=str(tmp_path / "init.npz"),
                         resume=str(tmp_path / "other"))
  assert origin == f"resumed from step 7 of {tmp_path / 'other'}"
  np.testing.assert_array_equal(_beta(state), 3.0)
  assert int(state.step) == 7

  _saved(tmp_path / "checkpoints", 9, shift=4.0)
  state, origin = _start(tmp_path, init=str(tmp_path / "init.npz"),
                         resume=str(tmp_path / "other"))
  assert origin == "resumed from step 9 in this workdir"
  np.testing.assert_array_equal(_beta(state), 4.0)


def test_resume_from_an_empty_directory_is_an_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="holds no checkpoint"):
    _start(tmp_path, resume=str(tmp_path / "empty"))


def test_resume_from_a_missing_directory_creates_nothing(tmp_path):
  with pytest.raises(UserError, match="holds no checkpoint"):
    _start(tmp_path, resume=str(tmp_path / "missing"))
  assert not (tmp_path / "missing").exists()  # Another run's directory is only read.


# --- load_init: where fine-tuning starts -----------------------------------------------------

def _backbone(params):
  return {key: value for key, value in params.items() if key != "head"}


def _assert_backbone_and_zero_head(params, expected):
  jax.tree.map(np.testing.assert_array_equal, _backbone(params),
               jax.tree.map(np.asarray, _backbone(expected)))
  assert not any(np.asarray(x).any() for x in jax.tree.leaves(params["head"]))


def test_load_init_reads_a_workdir_checkpoint_then_prefers_its_export(tmp_path):
  assert checkpointing.load_init("", MODEL) is None  # From scratch.
  workdir = tmp_path / "run"
  first = _saved(workdir / checkpointing.CHECKPOINT_DIR, 4, shift=1.0)
  latest = _saved(workdir / checkpointing.CHECKPOINT_DIR, 8, shift=3.0)
  _assert_backbone_and_zero_head(checkpointing.load_init(str(workdir), MODEL), latest.params)
  params, step = checkpointing.read_params(str(workdir), step=4)
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, first.params))

  exported = jax.tree.map(lambda x: x + 5.0, _init_state(None).params)
  npz.save(exported, workdir / checkpointing.EXPORT_NAME)  # A finished run's parameters.
  _assert_backbone_and_zero_head(checkpointing.load_init(str(workdir), MODEL), exported)
  _assert_backbone_and_zero_head(
      checkpointing.load_init(str(workdir / checkpointing.EXPORT_NAME), MODEL), exported)


def test_init_by_release_name_uses_the_zoo_cache_or_says_how_to_download(tmp_path,
                                                                         monkeypatch):
  monkeypatch.setenv("BIT_ZOO_DIR", str(tmp_path / "zoo"))
  model = models.get_model("tiny-R14", num_classes=3)
  with pytest.raises(UserError, match=r"BiT-M-R50x1 is not downloaded.*python -m bit_jax.zoo "
                                      r"download BiT-M-R50x1"):
    checkpointing.load_init("BiT-M-R50x1", model)


# --- A damaged checkpoint: logged, moved aside, the newest good one used -----------------------

def _two_checkpoints(directory):
  """Steps 2 and 3 with parameters shifted by 2 and 3."""
  for step in (2, 3):
    _saved(directory, step, shift=float(step))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_used(
    tmp_path, caplog, how):
  _two_checkpoints(tmp_path / "checkpoints")
  faults.damage_checkpoint(tmp_path / "checkpoints" / "3", how)
  with caplog.at_level(logging.WARNING):
    state, origin = _start(tmp_path)
  assert origin == "resumed from step 2 in this workdir" and int(state.step) == 2
  np.testing.assert_array_equal(_beta(state), 2.0)
  [aside] = [n for n in os.listdir(tmp_path / "checkpoints") if not n.isdigit()]
  assert aside.startswith("3.unreadable-")  # Kept, under a name orbax does not read.
  assert sorted(n for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == ["2"]
  [line] = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert line.startswith(f"Checkpoint step 3 in {tmp_path / 'checkpoints'} is damaged (")
  assert "\n" not in line
  if how == "truncate":
    assert "it does not restore (Exception: Encountered error while reading" in line
  assert line.endswith(f"moved to {tmp_path / 'checkpoints' / aside}; using step 2 instead.")
  # The next start finds step 2 at once; a new save goes on from there.
  state, origin = _start(tmp_path)
  assert origin == "resumed from step 2 in this workdir"


def test_no_good_checkpoint_stops_with_one_line_and_moves_nothing(tmp_path):
  _saved(tmp_path / "checkpoints", 1, shift=np.nan)  # Saved diverged (as no run saves).
  _saved(tmp_path / "checkpoints", 2, shift=2.0)
  faults.damage_checkpoint(tmp_path / "checkpoints" / "2", "truncate")
  with pytest.raises(UserError) as error:
    _start(tmp_path)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"no usable checkpoint in {tmp_path / 'checkpoints'}: step 2: it "
                            "does not restore (")
  assert "; step 1: params/" in message and "holds NaN or Inf; nothing was moved" in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_fingerprint_tells_any_changed_bit_in_any_order():
  tree = {"w": np.linspace(-1, 1, 1000, dtype=np.float32), "step": np.int32(7)}
  reversed_tree = {"w": tree["w"][::-1].copy(), "step": np.int32(7)}
  assert checkpointing.fingerprint(tree) == checkpointing.fingerprint(reversed_tree)
  changed = {"w": tree["w"].copy(), "step": np.int32(7)}
  changed["w"][500] = np.nextafter(changed["w"][500], np.float32(2))  # One bit.
  assert checkpointing.fingerprint(changed)["w"] != checkpointing.fingerprint(tree)["w"]
  assert checkpointing.fingerprint(changed)["step"] == 7


def test_read_params_falls_back_without_moving_another_runs_checkpoint(tmp_path):
  _two_checkpoints(tmp_path / "checkpoints")
  faults.damage_checkpoint(tmp_path / "checkpoints" / "3", "flip")
  params, step = checkpointing.read_params(str(tmp_path))
  assert step == 2
  np.testing.assert_array_equal(params["norm"]["bias"], 2.0)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]  # Only read.
  with pytest.raises(UserError, match=r"^no usable checkpoint in .*: step 3: .*; nothing was "
                                      "moved"):
    checkpointing.read_params(str(tmp_path), step=3)


def test_non_finite_leaf_names_the_first_bad_leaf():
  tree = {"a": np.ones(3), "b": {"c": np.array([1.0, np.inf])}, "n": np.arange(3)}
  assert checkpointing.non_finite_leaf(tree) == "b/c"
  assert checkpointing.non_finite_leaf({"a": np.ones(2), "n": np.arange(2)}) is None


def test_load_init_of_an_unfinished_run_warns_with_its_step_and_total(tmp_path, caplog):
  workdir = tmp_path / "run"
  latest = _saved(workdir / checkpointing.CHECKPOINT_DIR, 4, shift=1.0)
  with caplog.at_level(logging.WARNING):
    _assert_backbone_and_zero_head(checkpointing.load_init(str(workdir), MODEL), latest.params)
  [line] = [r.getMessage() for r in caplog.records if "UNFINISHED" in r.getMessage()]
  assert f"{workdir} is an UNFINISHED train.py run" in line
  assert "at step 4 of an unknown number of steps" in line  # No settings.json.
  with open(workdir / run_settings.SETTINGS_NAME, "w") as f:
    json.dump({"model": "tiny-R14", run_settings.TOTAL_STEPS: 10}, f)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    checkpointing.load_init(str(workdir), MODEL)
  [line] = [r.getMessage() for r in caplog.records if "UNFINISHED" in r.getMessage()]
  assert "at step 4 of its 10 total steps" in line
  npz.save(latest.params, workdir / checkpointing.EXPORT_NAME)  # Finished: no warning.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    checkpointing.load_init(str(workdir), MODEL)
  assert not [r for r in caplog.records if "UNFINISHED" in r.getMessage()]
