"""`bit_jax.loop.divergence`: a NaN/Inf loss or parameters stop a run with one line that says what
its checkpoints keep."""
import numpy as np
import pytest

from bit_jax import checkpointing
from bit_jax.loop import divergence
from bit_jax.errors import NonFiniteLossError


def _check(loss, param_norm, checkpointer=None, start_step=0):
  divergence.check({"loss": np.float32(loss), "param_norm": np.float32(param_norm)}, 7,
                   checkpointer, start_step, run="fine-tuning", remedy="lower --config.base_lr")


def test_finite_metrics_pass():
  _check(2.3, 40.0)


@pytest.mark.parametrize("loss, param_norm", [(np.nan, 40.0), (np.inf, 40.0), (2.3, np.inf),
                                              (2.3, np.nan)])
def test_a_non_finite_loss_or_parameter_norm_stops_the_run(loss, param_norm):
  # A finite loss with infinite parameters: the update of this very step exploded.
  with pytest.raises(NonFiniteLossError) as raised:
    _check(loss, param_norm)
  assert str(raised.value) == (
      f"fine-tuning diverged: loss {float(np.float32(loss))} (parameter norm "
      f"{float(np.float32(param_norm))}) at step 7; nothing was saved; lower --config.base_lr")


def test_the_line_says_which_checkpoint_is_kept(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path), use_async=False)
  with pytest.raises(NonFiniteLossError, match=f"; no checkpoint was written to {tmp_path};"):
    _check(np.nan, 1.0, checkpointer)
  checkpointer.save(5, {"step": np.int32(5), "params": {"w": np.ones(3, np.float32)}})
  # Saved by this run (it started at step 2) after its own check passed.
  with pytest.raises(NonFiniteLossError,
                     match=rf"; the last checkpoint \(step 5\) in {tmp_path} is untouched; "):
    _check(np.nan, 1.0, checkpointer, start_step=2)
  # The one this run resumed from: only the steps after it could show it was sound.
  with pytest.raises(NonFiniteLossError) as raised:
    _check(np.nan, 1.0, checkpointer, start_step=5)
  assert (f"the checkpoint (step 5) in {tmp_path} that this run resumed from is untouched "
          "(it loaded finite and as saved; if a rerun diverges right after it again, move "
          "it aside to resume from an earlier one); lower --config.base_lr") in str(raised.value)
  checkpointer.close()
