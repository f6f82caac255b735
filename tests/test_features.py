import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline
from bit_jax import distributed, features, npz, run_dir
from bit_jax.errors import UserError
from tests.test_predict import CROP, make_labelled_folder, make_run

BATCH = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return "folder:" + make_labelled_folder(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def mesh():
  return distributed.data_mesh()


def test_extract_gives_each_example_its_own_outputs_in_order(run, dataset, mesh):
  model, params, card = run_dir.load(run)
  source = input_pipeline.get_source(dataset)
  got = features.extract(model, params, source, "train", card.pp_eval(), batch_size=BATCH,
                         mesh=mesh, outputs=("pre_logits", "logits"))
  assert sorted(got) == ["labels", "logits", "pre_logits"]
  assert got["pre_logits"].shape == (9, 1024)  # tiny-R14: 4 * 8 * 32 channels.
  # The reference: each example alone, preprocessed by the same pp, in the split's order.
  pp = input_pipeline.get_preprocess_fn(card.pp_eval())
  examples = [pp(example) for example in source.read("train")]
  logits, out = jax.jit(model.apply)({"params": params},
                                     np.stack([e["image"] for e in examples]))
  # 1 or 2 examples per device against 9 on one: other conv kernels, measured 1.3e-5 at
  # values up to 5.8 (<= 0.09 of this tolerance).
  np.testing.assert_allclose(got["pre_logits"], out["pre_logits"], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["logits"], logits, rtol=1e-4, atol=1e-4)
  assert got["labels"].dtype == np.int64  # One-hot labels become their argmax.
  np.testing.assert_array_equal(got["labels"], [np.argmax(e["label"]) for e in examples])


def test_command_writes_block3_and_pre_logits_from_a_run_or_an_npz(run, dataset, tmp_path):
  from_run = features.features(run, dataset, "train[:5]", str(tmp_path / "run.npz"),
                               outputs=["pre_logits", "block3"], batch_size=BATCH)
  with np.load(tmp_path / "run.npz") as saved:
    assert sorted(saved.files) == ["block3", "labels", "pre_logits"]
    for key in saved.files:
      np.testing.assert_array_equal(saved[key], from_run[key])
  # block3 downsamples 16x: 2x2 at the run's crop of 32; 4 * 4 * 32 channels.
  assert from_run["block3"].shape == (5, CROP // 16, CROP // 16, 512)
  assert from_run["labels"].shape == (5,)

  # The same backbone as an official .npz (its head is dropped): the same features.
  _, params, _ = run_dir.load(run)
  npz.save(params, tmp_path / "init.npz")
  from_npz = features.features(str(tmp_path / "init.npz"), dataset, "train[:5]",
                               str(tmp_path / "npz.npz"), model_name="tiny-R14",
                               resolution=CROP, batch_size=BATCH)
  assert sorted(from_npz) == ["labels", "pre_logits"]
  # Equal here: the same backbone program. The tolerance leaves XLA free to compile the two
  # (with and without the head) differently: 3x the rounding above (3.5e-6 relative).
  np.testing.assert_allclose(from_npz["pre_logits"], from_run["pre_logits"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(from_npz["labels"], from_run["labels"])


def test_bad_inputs_fail_with_one_line(run, dataset, tmp_path):
  init = str(tmp_path / "init.npz")
  npz.save(run_dir.load(run)[1], init)
  cases = [
      (dict(init=run, outputs=["block9"]), "unknown model output 'block9'; valid: stem, "
                                           "block1, block2, block3, block4, pre_logits, logits"),
      (dict(init=init), "--model is needed"),
      (dict(init=init, model_name="tiny-R14"), "pass --resolution"),
      (dict(init=str(tmp_path / "missing.npz")), "does not exist"),
  ]
  for kwargs, message in cases:
    with pytest.raises(UserError, match=message) as e:
      features.features(dataset=dataset, split="train", output=str(tmp_path / "f.npz"),
                        batch_size=BATCH, **kwargs)
    assert "\n" not in str(e.value)
  assert not (tmp_path / "f.npz").exists()
  model = run_dir.load(run)[0].clone(num_classes=None)
  assert features.output_names(model)[-1] == "pre_logits"  # No head, no logits.


def test_default_crop_is_the_hyperrules_for_the_sources_image_size():
  with tfds.testing.mock_data(num_examples=1):
    small, large, varying = (input_pipeline.get_source(name, "/nonexistent")
                             for name in ("cifar10", "celeb_a", "oxford_flowers102"))
  assert features.default_crop(small) == 128  # 32x32: below 96x96.
  assert features.default_crop(large) == 384  # 218x178, the paper's large-image crop.
  with pytest.raises(UserError, match="image size of oxford_flowers102 is not in its metadata"):
    features.default_crop(varying)
