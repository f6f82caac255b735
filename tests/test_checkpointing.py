"""Where a run starts: workdir checkpoint -> config.resume -> config.init -> scratch; and
where fine-tuning starts: an official .npz, or a train.py workdir's export or checkpoint."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bit_jax import checkpointing, models, npz, train_step
from bit_jax.errors import UserError

MODEL = models.get_model("tiny-R14", num_classes=3)
OPTIMIZER = optax.sgd(0.1, momentum=0.9)


def _init_state(params):
  if params is None:
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
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
