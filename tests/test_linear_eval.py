"""Frozen-feature evaluations under their protocols' names (bit_jax.linear_eval)."""
import numpy as np
import pytest
from scipy import optimize
from sklearn.linear_model import LogisticRegression

from bit_jax import calibration, fewshot_classifiers, linear_eval
from bit_jax.errors import UserError


def _blobs(n_per_class, num_classes=3, dim=8, seed=0, spread=1.0):
  centres = np.random.default_rng(99).normal(size=(num_classes, dim)) * 4  # Shared.
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), n_per_class)
  return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


# --- ericsson_linear -----------------------------------------------------------------------------

def test_wd_grid_is_45_log_spaced_values_from_1e_minus_6_to_1e5():
  grid = linear_eval.WD_GRID
  assert len(grid) == 45 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
  np.testing.assert_allclose(np.diff(np.log10(grid)), 11 / 44)


@pytest.mark.parametrize("wd", [0.1, 1.0, 10.0])
def test_c_is_one_over_wd_on_the_summed_loss(wd):
  # Our probe at wd equals (a) sklearn at C = 1/wd and (b) a direct minimiser of
  # sum_i CE_i + wd/2 * ||W||^2 (intercept free): C multiplies the summed, not the mean, loss.
  x, y = _blobs(15, spread=4.0)
  probe = linear_eval._Probe(multi_label=False)
  probe.clf.set_params(max_iter=10_000, tol=1e-10)  # Converged: the mapping is what's tested.
  probe.fit(x, y, wd)
  ours = calibration.softmax(probe.logits(x))
  ref = LogisticRegression(C=1.0 / wd, max_iter=10_000, tol=1e-10).fit(x, y)
  # Converged float64 optimizers: equal to sklearn's here, 1.1e-7 from the direct minimiser
  # below. C off by the 45 examples (the mean loss) moves a probability by 3e-2 to 0.5.
  np.testing.assert_allclose(ours, ref.predict_proba(x), atol=1e-3)

  d, k = x.shape[1], 3
  def objective(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return (1.0 / wd) * -logp[np.arange(len(y)), y].sum() + 0.5 * np.sum(w**2)
  theta = optimize.minimize(objective, np.zeros(d * k + k), method="L-BFGS-B",
                            options={"maxiter": 20_000, "ftol": 1e-14, "gtol": 1e-10}).x
  z = x @ theta[:d * k].reshape(d, k) + theta[d * k:]
  direct = np.exp(z - z.max(1, keepdims=True))
  np.testing.assert_allclose(ours, direct / direct.sum(1, keepdims=True), atol=1e-3)


def test_wd_chosen_on_val_first_of_ties_then_refit_on_train_and_val():
  # Class 2 is only in val and test: the train-only fits never predict it (val top-1 0.5 at
  # best), and a perfect test score on class-2 points needs the refit on train + val.
  rng = np.random.default_rng(6)
  centres = np.array([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
  blob = lambda c, n: centres[c] + 0.3 * rng.normal(size=(n, 2))
  tr_x, tr_y = np.concatenate([blob(0, 20), blob(1, 20)]), np.repeat([0, 1], 20)
  va_x, va_y = np.concatenate([blob(0, 5), blob(1, 5), blob(2, 10)]), np.repeat([0, 1, 2],
                                                                                [5, 5, 10])
  te_x, te_y = blob(2, 10), np.full(10, 2)
  grid = np.array([1e-3, 1e-2])
  result = linear_eval.ericsson_linear(tr_x, tr_y, va_x, va_y, te_x, te_y, wd_grid=grid,
                                       calibration_folds=2)
  assert result["val_scores"] == [0.5, 0.5]
  assert result["wd"] == 1e-3 and result["C"] == 1e3  # The first of the tied best.
  assert result["top1"] == result["score"] == 1.0 and result["num_train_examples"] == 60


def test_ericsson_linear_scores_per_class_accuracy_and_temperature_scales():
  x, y = _blobs(40, spread=2.5)
  te_x, te_y = _blobs(20, seed=1, spread=2.5)
  fit, val = linear_eval.split_validation(len(y))
  result = linear_eval.ericsson_linear(x[fit], y[fit], x[val], y[val], te_x, te_y,
                                       metric="mean_per_class_accuracy")
  assert result["metric"] == "mean_per_class_accuracy" and 0.8 < result["score"] <= 1
  assert result["wd"] in linear_eval.WD_GRID and len(result["val_scores"]) == 45
  assert 0 <= result["ece"] <= 1 and 0 <= result["ece_temperature_scaled"] <= 1
  assert result["temperature"] > 0


def test_temperature_never_sees_test_labels():
  x, y = _blobs(30, spread=2.0)
  te_x, te_y = _blobs(10, seed=1, spread=2.0)
  fit, val = linear_eval.split_validation(len(y))
  args = (x[fit], y[fit], x[val], y[val], te_x)
  a = linear_eval.ericsson_linear(*args, te_y, wd_grid=[1e-2, 1.0])
  b = linear_eval.ericsson_linear(*args, np.roll(te_y, 7), wd_grid=[1e-2, 1.0])
  assert a["temperature"] == b["temperature"] and a["wd"] == b["wd"]
  assert a["top1"] != b["top1"]  # The shuffled labels did change what is scored.


def test_ericsson_linear_voc07_map_on_multi_hot_labels():
  x, y = _blobs(20, num_classes=4, spread=1.0)
  multi = np.eye(4)[y].astype(int)
  multi[::3, 0] = 1  # Some images also carry class 0.
  te_x, te_y = _blobs(10, num_classes=4, seed=1, spread=1.0)
  te_multi = np.eye(4)[te_y].astype(int)
  fit, val = linear_eval.split_validation(len(y))
  result = linear_eval.ericsson_linear(x[fit], multi[fit], x[val], multi[val], te_x, te_multi,
                                       metric="voc07_map", wd_grid=[1e-2, 1.0])
  assert 0.5 < result["score"] <= 1 and np.isnan(result["ece"])


def test_split_validation_is_ericssons_seed_0_shuffle():
  train, val = linear_eval.split_validation(90)
  indices = list(range(90))
  # Ericsson's code as written, on numpy's global generator; its state is put back after.
  state = np.random.get_state()
  try:
    np.random.seed(0)
    np.random.shuffle(indices)
  finally:
    np.random.set_state(state)
  np.testing.assert_array_equal(val, np.sort(indices[:18]))
  np.testing.assert_array_equal(train, np.sort(indices[18:]))


def test_metric_for_dataset_names():
  assert linear_eval.metric_for("oxford_iiit_pet:3.*.*") == "mean_per_class_accuracy"
  assert [linear_eval.metric_for(d) for d in ("caltech101", "oxford_flowers102",
                                              "fgvc_aircraft")] == [
      "mean_per_class_accuracy"] * 3
  assert linear_eval.metric_for("voc/2007") == "voc07_map"
  assert linear_eval.metric_for("cifar10") == "top1"


# --- ericsson_fewshot ----------------------------------------------------------------------------

def _episode_labels():
  return np.random.default_rng(1).permutation(np.repeat(np.arange(8), [30, 25, 40, 22, 30,
                                                                      26, 50, 21]))


def test_episodes_are_n_way_k_shot_q_query_disjoint_and_seeded():
  labels = _episode_labels()
  support, query = linear_eval.sample_episodes(labels, ways=5, shots=3, queries=4,
                                               episodes=200, seed=0)
  assert support.shape == (200, 5, 3) and query.shape == (200, 5, 4)
  for s, q in zip(support, query):
    classes = labels[s][:, 0]
    assert len(set(classes)) == 5  # 5 distinct classes.
    assert np.all(labels[s] == classes[:, None]) and np.all(labels[q] == classes[:, None])
    both = np.concatenate([s.ravel(), q.ravel()])
    assert len(set(both)) == both.size  # Support and query disjoint, no repeats.
  covered = np.unique(labels[support[:, :, 0]])
  np.testing.assert_array_equal(covered, np.arange(8))  # Every class takes part.
  again = linear_eval.sample_episodes(labels, ways=5, shots=3, queries=4, episodes=200, seed=0)
  np.testing.assert_array_equal(support, again[0])
  np.testing.assert_array_equal(query, again[1])
  other = linear_eval.sample_episodes(labels, ways=5, shots=3, queries=4, episodes=200, seed=1)
  assert not np.array_equal(support, other[0])


def test_protonet_uses_squared_euclidean_to_raw_means():
  support = np.array([[[0.0, 0.0], [2.0, 0.0]], [[10.0, 10.0], [10.0, 12.0]]])  # (2, 2, 2)
  query = np.array([[1.0, 1.0], [10.0, 0.0]])
  np.testing.assert_allclose(linear_eval.protonet_logits(support, query),
                             -np.array([[0.0 + 1.0, 81.0 + 100.0], [81.0 + 0.0, 0.0 + 121.0]]))


def test_ericsson_fewshot_mean_and_ci_over_episodes():
  x, y = _blobs(30, num_classes=6, spread=3.0)
  r = linear_eval.ericsson_fewshot(x, y, ways=5, shots=5, queries=15, episodes=50, seed=0)
  support, query = linear_eval.sample_episodes(y, ways=5, shots=5, queries=15, episodes=50,
                                               seed=0)
  accs = []
  for s, q in zip(support, query):
    protos = x[s].mean(axis=1)
    d = ((x[q][:, :, None, :] - protos[None, None]) ** 2).sum(-1)  # (ways, Q, ways)
    accs.append(np.mean(d.argmin(-1) == np.arange(5)[:, None]))
  assert r["top1"] == pytest.approx(np.mean(accs))
  assert r["top1_ci95"] == pytest.approx(1.96 * np.std(accs) / np.sqrt(50))
  assert r["episodes"] == 50 and r["num_test_examples"] == 50 * 5 * 15 and 0 <= r["ece"] <= 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(ways=9, shots=1, queries=1), "9-way episodes need 9 classes; the data has 8"),
    (dict(ways=5, shots=10, queries=15), "class 7 has 21"),
    (dict(ways=1, shots=1, queries=1), "ways >= 2"),
])
def test_impossible_episodes_are_one_line_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match) as info:
    linear_eval.sample_episodes(_episode_labels(), episodes=1, seed=0, **kwargs)
  assert "\n" not in str(info.value)


# --- bigvision_fewshot and ncm ----------------------------------------------------------------

def test_few_shot_reports_each_method_shot_and_seed():
  train_x, train_y = _blobs(20)
  test_x, test_y = _blobs(10, seed=1)
  results = linear_eval.few_shot(train_x, train_y, test_x, test_y, 3, shots=(1, 5),
                                 seeds=(0, 1))
  assert [(r["method"], r["shots"], r["seed"]) for r in results] == [
      (m, k, s) for k in (1, 5) for s in (0, 1) for m in ("bigvision_fewshot", "ncm")]
  for r in results:
    assert r["num_test_examples"] == 30 and 0 <= r["ece"] <= 1
  assert min(r["top1"] for r in results if r["shots"] == 5) > 0.9  # Well separated blobs.


def test_bigvision_fewshot_is_the_ridge_solution_on_the_selected_examples():
  train_x, train_y = _blobs(20)
  test_x, test_y = _blobs(10, seed=1)
  [result] = linear_eval.few_shot(train_x, train_y, test_x, test_y, 3, shots=(2,),
                                  seeds=(4,), methods=("bigvision_fewshot",))
  chosen = fewshot_classifiers.select_few_shot(train_y, 2, 4)
  expected = fewshot_classifiers.ridge_fewshot_accuracy(train_x[chosen], train_y[chosen], test_x,
                                                        test_y, 3)
  assert result["top1"] == pytest.approx(expected)
  assert linear_eval.BIGVISION_FEWSHOT_PP == "resize(256)|central_crop(224)"


def test_unknown_names_are_one_line_user_errors():
  x, y = _blobs(5)
  with pytest.raises(UserError, match="valid: bigvision_fewshot, ncm"):
    linear_eval.few_shot(x, y, x, y, 3, shots=(1,), seeds=(0,), methods=("ridge",))
  with pytest.raises(UserError, match="unknown linear-eval metric 'auc'; valid: top1, "):
    linear_eval.ericsson_linear(x, y, x, y, x, y, metric="auc")
  with pytest.raises(UserError, match="needs"):
    linear_eval.ericsson_linear(x, y, x, y, x, y, metric="voc07_map")
