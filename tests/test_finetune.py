"""The plan of a fine-tuning run: the HyperRule, its overrides, the config's other settings
and bad-input errors."""
import pytest

from bit_jax import finetune
from bit_jax.errors import UserError
from configs import transfer as transfer_config


def _config(**overrides):
  config = transfer_config.get_config()
  config.update(overrides)
  return config


def test_small_images_and_small_datasets_follow_the_hyperrule():
  plan = finetune.make_plan(_config(), dataset_size=50_000, image_hw=(32, 32))
  assert (plan.resize, plan.crop) == (160, 128)
  assert plan.schedule == (500, 3000, 6000, 9000, 10_000)
  assert plan.mixup_alpha == 0.1 and plan.base_lr == 0.003 and plan.batch_size == 512


def test_large_images_few_examples_use_the_paper_or_release_resolution():
  plan = finetune.make_plan(_config(), dataset_size=50, image_hw=(500, 375))
  assert (plan.resize, plan.crop) == (448, 384)
  assert plan.schedule == (100, 200, 300, 400, 500) and plan.mixup_alpha == 0.0
  release = finetune.make_plan(_config(hyperrule_variant="release"), 50, (500, 375))
  assert (release.resize, release.crop) == (512, 480)


def test_overrides_rescale_the_schedule_and_replace_resolution_and_mixup():
  plan = finetune.make_plan(_config(total_steps=100, resolution=(36, 32), mixup_alpha=0.2),
                            dataset_size=50, image_hw=None)
  assert plan.schedule == (20, 40, 60, 80, 100)
  assert (plan.resize, plan.crop) == (36, 32) and plan.mixup_alpha == 0.2
  assert "resize(36)|random_crop(32)|flip_lr" in plan.pp_train(10)
  assert plan.pp_eval(10).startswith("decode|resize(32)|value_range(-1,1)|onehot(10)")


def test_the_plan_carries_the_configs_other_finetuning_settings():
  plan = finetune.make_plan(_config(accum_steps=4, eval_batch_size=64, shuffle_buffer=99,
                                    log_every_steps=7), dataset_size=50, image_hw=(32, 32))
  assert (plan.accum_steps, plan.eval_batch_size, plan.shuffle_buffer,
          plan.log_every_steps) == (4, 64, 99, 7)


def test_flips_and_random_crops_can_be_turned_off():
  """VTAB turns them off where they would change the label (positions, orientations)."""
  def pp(flip, random_crop):
    plan = finetune.Plan(resize=36, crop=32, schedule=(1,) * 5, mixup_alpha=0.0,
                         base_lr=0.003, batch_size=8, accum_steps=1, eval_batch_size=8,
                         shuffle_buffer=8, log_every_steps=1, flip=flip,
                         random_crop=random_crop)
    return plan.pp_train(16)
  tail = "value_range(-1,1)|onehot(16)|keep('image', 'label')"
  assert pp(True, True) == f"decode|resize(36)|random_crop(32)|flip_lr|{tail}"
  assert pp(False, True) == f"decode|resize(36)|random_crop(32)|{tail}"
  assert pp(True, False) == f"decode|resize(32)|flip_lr|{tail}"
  assert pp(False, False) == f"decode|resize(32)|{tail}"


def test_unknown_image_size_asks_for_a_resolution():
  with pytest.raises(UserError, match="set --config.resolution"):
    finetune.make_plan(_config(), dataset_size=50, image_hw=None)


@pytest.mark.parametrize("resolution", [(20, 16), (32, 40)])
def test_resolution_too_small_for_the_network_is_refused(resolution):
  with pytest.raises(UserError, match="too small for BiT-M-R50x1: the crop must be at least 32"):
    finetune.make_plan(_config(resolution=resolution), dataset_size=50, image_hw=None)


@pytest.mark.parametrize("resolution", [(36,), (36, 32, 1), ("36", "32")])
def test_a_resolution_that_is_not_two_integers_is_one_line(resolution):
  with pytest.raises(UserError, match=r"^resolution=.* is not valid: it must be two integers "
                                      r"RESIZE,CROP, e\.g\. --config\.resolution=448,384"):
    finetune.make_plan(_config(resolution=resolution), dataset_size=50, image_hw=(32, 32))
