"""Evaluations on frozen features (`out["pre_logits"]`), each under the name of its protocol.

- `ericsson_linear`: Ericsson et al. (2021), "How Well Do Self-Supervised Models Transfer?",
  many-shot linear protocol, restated from github.com/linusericsson/ssl-transfer `linear.py`.
- `ericsson_fewshot`: the same paper's few-shot protocol, episodic ProtoNet on frozen features,
  restated from ssl-transfer `few_shot.py` and `datasets/few_shot_dataset.py`.
- `bigvision_fewshot`: big_vision's few-shot linear regression (ridge, closed form), k per class.
- `ncm`: SimpleShot-style nearest class mean (L2-normalised), all-way over the whole test set.

Every run dict has `top1` and `ece` (what `transfer.summarize` averages); the rest is
per-method. Ridge and NCM give scores, not probabilities: their ECE is that of
softmax(scores), comparable across runs of one method only.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from bit_jax import calibration, fewshot_classifiers, metrics
from bit_jax.errors import UserError

METHODS = ("ericsson_linear", "ericsson_fewshot", "bigvision_fewshot", "ncm")

# ssl-transfer `linear.py`, `LinearTester.__init__`: torch.logspace(-6, 5, 45) weight decays
# (torch computes them in float32; NumPy's float64 values differ by < 1e-7 relative).
WD_GRID = np.logspace(-6, 5, 45)
VAL_FRACTION = 0.2  # `get_train_valid_loader(valid_size=0.2)` when a dataset has no val split.
VAL_SEED = 0  # `prepare_data(..., random_seed=0)`.
MAX_ITER = 100  # sklearn's default, which `linear.py` keeps.
CALIBRATION_FOLDS = 5  # `temperature_scaling.cross_validate_temp_scaling(k=5)`.

# ssl-transfer `linear.py`, LINEAR_DATASETS' metric column, keyed by TFDS name. FGVC-Aircraft is
# not in the TFDS catalog: a dataset built under the name `fgvc_aircraft` matches.
METRICS = ("top1", "mean_per_class_accuracy", "voc07_map")
DATASET_METRICS = {
    "fgvc_aircraft": "mean_per_class_accuracy",
    "caltech101": "mean_per_class_accuracy",
    "oxford_flowers102": "mean_per_class_accuracy",
    "oxford_iiit_pet": "mean_per_class_accuracy",
    "voc/2007": "voc07_map",
}

# big_vision's few-shot evaluators read images at this preprocessing (configs/common_fewshot.py,
# then value_range(-1, 1), which is our models' input range): extract features with it for
# `bigvision_fewshot` numbers comparable with big_vision's.
BIGVISION_FEWSHOT_PP = "resize(256)|central_crop(224)"
# Each method's published feature preprocessing, between `decode` and `value_range(-1,1)` (the
# colour normalisation is always the model's own). ssl-transfer `linear.py`,
# `get_train_valid_loader`/`get_test_loader`: Resize(224, BICUBIC) of the shorter side, then
# CenterCrop(224); `datasets/few_shot_dataset.py`, `TransformLoader.parse_transform`:
# Scale([int(224 * 1.15)] * 2) = 257x257, then CenterCrop(224). ncm has no published
# preprocessing: None is the fine-tuning's eval preprocessing. `transfer.py` uses these unless
# `config.linear_pp` sets one for all methods.
FEATURE_PP = {
    "ericsson_linear": "resize_small(224, method='bicubic')|central_crop(224)",
    "ericsson_fewshot": "resize(257)|central_crop(224)",
    "bigvision_fewshot": BIGVISION_FEWSHOT_PP,
    "ncm": None,
}


def metric_for(dataset: str) -> str:
  """Ericsson et al.'s headline metric for a TFDS dataset name (version suffix ignored)."""
  return DATASET_METRICS.get(dataset.split(":")[0], "top1")


# --- ericsson_linear --------------------------------------------------------------------------

def split_validation(num_examples: int, fraction: float = VAL_FRACTION,
                     seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
  """(train, val) sorted indices, drawn as ssl-transfer `linear.py`, `get_train_valid_loader`.

  `np.random.seed(seed); np.random.shuffle(indices)` over range(N), then the first
  floor(fraction · N) shuffled indices are val and the rest train. (A legacy RandomState
  shuffles a list and an array with the same draws.)
  """
  order = np.random.RandomState(seed).permutation(num_examples)
  num_val = int(np.floor(fraction * num_examples))
  if not 0 < num_val < num_examples:
    raise UserError(f"A {fraction} validation split of {num_examples} examples is empty or "
                    "all of them; set val_split or use more training examples")
  return np.sort(order[num_val:]), np.sort(order[:num_val])


def _logistic_regression(c: float):
  """sklearn's L-BFGS logistic regression as `linear.py` builds it (`LogisticRegression`).

  sklearn minimises C · Σ_i loss_i + ½‖W‖² (intercept unpenalised): the loss is summed, not
  averaged, so C = 1/wd means mean loss + wd/(2N)·‖W‖², scaled by N. warm_start=True as theirs:
  each fit starts where the previous one (on the same object) stopped.
  """
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  return LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER, warm_start=True)


class _Probe:
  """One warm-started classifier reused across fits, as `LinearTester.classifier` is.

  `linear.py` sets `multi_class='multinomial'`; on two classes that is a 2-way softmax with
  both weight rows penalised, whose optimum has w₁ = −w₀: a binary logistic regression with
  twice the C, and the same ranking (decision_function halves). sklearn has since removed
  `multi_class`, so a binary fit here takes C = 2/wd. Multi-label (labels (N, C) multi-hot,
  VOC07): one such binary fit per class, in class order on the same warm-started object,
  ranked by `decision_function`.
  """

  def __init__(self, multi_label: bool):
    self.multi_label = multi_label
    self.clf = _logistic_regression(1.0)

  def fit(self, x, y, wd: float):
    if self.multi_label:
      self.clf.set_params(C=2.0 / wd)
      self.per_class = []
      for c in range(y.shape[1]):
        self.clf.fit(x, y[:, c])
        self.per_class.append((self.clf.coef_[0].copy(), self.clf.intercept_[0]))
    else:
      classes = np.unique(y)
      if not np.array_equal(getattr(self.clf, "classes_", classes), classes):
        self.clf = _logistic_regression(1.0)  # Other classes: nothing to warm-start from.
      self.clf.set_params(C=(2.0 if classes.size == 2 else 1.0) / wd)
      self.clf.fit(x, y)
    return self

  def logits(self, x, num_classes: int = 0, fill: float = -np.inf) -> np.ndarray:
    """(N, C) logits; single-label columns are class ids, classes the fit never saw get `fill`.

    Multinomial: the decision function. Binary: [0, margin] (softmax = predict_proba).
    Multi-label: per-class binary margins.
    """
    if self.multi_label:
      return np.stack([x @ w + b for w, b in self.per_class], axis=1)
    scores = self.clf.decision_function(x)
    if scores.ndim == 1:
      scores = np.stack([np.zeros_like(scores), scores], axis=1)
    classes = self.clf.classes_
    full = np.full((len(x), max(num_classes, int(classes.max()) + 1)), fill)
    full[:, classes] = scores
    return full


def _score(metric: str, logits: np.ndarray, labels: np.ndarray) -> float:
  if metric == "voc07_map":
    return metrics.voc07_mean_average_precision(logits, labels)
  predictions = logits.argmax(axis=1)
  if metric == "mean_per_class_accuracy":
    return metrics.mean_per_class_accuracy(predictions, labels)
  return float(np.mean(predictions == labels))


def _check_features(*pairs):
  for x, y in pairs:
    if np.ndim(x) != 2 or len(x) != len(y) or not len(y):
      raise UserError(f"features (N, D) and labels (N,) or (N, C) must match, got "
                      f"{np.shape(x)} and {np.shape(y)}")


def ericsson_linear(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                    val_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                    metric: str = "top1", wd_grid: Sequence[float] = WD_GRID,
                    calibration_folds: int = CALIBRATION_FOLDS) -> dict:
  """Ericsson et al.'s many-shot linear evaluation (ssl-transfer `linear.py`, `LinearTester`).

  - Features as extracted: *not* standardised or normalised.
  - `validate`: for wd in `wd_grid` in ascending order, fit on train with C = 1/wd, score on
    val with `metric`; the first wd with the highest score wins (their `>` keeps the earlier).
    Labels are integers (N,), or for `voc07_map` multi-hot (N, C).
  - `evaluate`: refit on train + val with that C (warm-started from the last grid fit, as the
    same sklearn object is reused), score on test.
  - ECE (15 bins) of softmax(decision_function) on test, before and after temperature scaling.
    Where we differ, on purpose: `linear.py` fits the temperature by 5-fold cross-validation
    *on the test set* (`temperature_scaling.cross_validate_temp_scaling`). Here T is fitted on
    the training data only: out-of-fold logits of `calibration_folds` probes (same C, each fit
    on the other folds of train + val), then applied to the final probe's test logits. Test
    labels are used only to score. Not computed for `voc07_map` (nor in `linear.py`).

  `top1` is top-1 accuracy (for multi-label: precision@1, the top class is a positive); the
  protocol's number is `score` under `metric`.
  """
  if metric not in METRICS:
    raise UserError(f"unknown linear-eval metric {metric!r}; valid: {', '.join(METRICS)}")
  _check_features((train_x, train_y), (val_x, val_y), (test_x, test_y))
  multi_label = metric == "voc07_map"
  if multi_label != (np.ndim(train_y) == 2):
    raise UserError(f"metric {metric} needs {'(N, C) multi-hot' if multi_label else '(N,)'} "
                    f"labels, got shape {np.shape(train_y)}")
  wd_grid = np.asarray(wd_grid, np.float64)
  probe = _Probe(multi_label)
  val_scores = []
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=import-outside-toplevel
  with warnings.catch_warnings():
    # `fit_logistic_regression` is decorated with ignore_warnings(ConvergenceWarning).
    warnings.simplefilter("ignore", ConvergenceWarning)
    for wd in wd_grid:
      val_scores.append(_score(metric, probe.fit(train_x, train_y, wd).logits(val_x), val_y))
    best = int(np.argmax(val_scores))  # First of the maxima.
    wd = float(wd_grid[best])
    trainval_x = np.concatenate([train_x, val_x])
    trainval_y = np.concatenate([train_y, val_y])
    num_classes = 0 if multi_label else int(max(trainval_y.max(), test_y.max())) + 1
    test_logits = probe.fit(trainval_x, trainval_y, wd).logits(test_x, num_classes)
    result = {"method": "ericsson_linear", "metric": metric,
              "score": _score(metric, test_logits, test_y), "wd": wd, "C": 1.0 / wd,
              "val_scores": [float(s) for s in val_scores],
              "num_train_examples": int(len(trainval_y)),
              "num_test_examples": int(len(test_y))}
    if multi_label:
      top = test_logits.argmax(axis=1)
      return {**result, "top1": float(np.mean(test_y[np.arange(len(top)), top] > 0)),
              "ece": float("nan"), "ece_temperature_scaled": float("nan"),
              "temperature": float("nan")}
    temperature = _cross_validated_temperature(trainval_x, trainval_y, wd, calibration_folds)
  return {**result, "top1": float(np.mean(test_logits.argmax(axis=1) == test_y)),
          "ece": calibration.expected_calibration_error(calibration.softmax(test_logits),
                                                        test_y),
          "ece_temperature_scaled": calibration.expected_calibration_error(
              calibration.softmax(test_logits, temperature), test_y),
          "temperature": temperature}


def _cross_validated_temperature(x: np.ndarray, y: np.ndarray, wd: float, folds: int) -> float:
  """T fitted on out-of-fold logits: `folds` seeded folds (seed 0, as theirs) of (x, y)."""
  order = np.random.RandomState(0).permutation(len(y))
  held_out = np.zeros((len(y), int(y.max()) + 1))
  for fold in np.array_split(order, folds):
    rest = np.setdiff1d(order, fold)
    probe = _Probe(multi_label=False).fit(x[rest], y[rest], wd)
    # A class absent from a fold's fit gets logit 0 there (rare; it only tempers T a little).
    held_out[fold] = probe.logits(x[fold], held_out.shape[1], fill=0.0)
  return calibration.fit_temperature(held_out, y)


# --- ericsson_fewshot -------------------------------------------------------------------------

def check_episodes(labels: np.ndarray, ways: int, shots: int, queries: int) -> None:
  """UserError (one line) unless every N-way K-shot Q-query episode can be drawn from labels."""
  if ways < 2 or shots < 1 or queries < 1:
    raise UserError(f"episodes need ways >= 2, shots >= 1, queries >= 1; got ways={ways}, "
                    f"shots={shots}, queries={queries}")
  classes, counts = np.unique(np.asarray(labels), return_counts=True)
  if ways > classes.size:
    raise UserError(f"{ways}-way episodes need {ways} classes; the data has {classes.size}")
  if shots + queries > counts.min():
    raise UserError(f"{shots} shots + {queries} queries per class need {shots + queries} "
                    f"examples; class {classes[counts.argmin()]} has {counts.min()}")


def sample_episodes(labels: np.ndarray, *, ways: int, shots: int, queries: int,
                    episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(support, query) indices into `labels`, shapes (E, ways, shots) and (E, ways, queries).

  As ssl-transfer `datasets/few_shot_dataset.py` draws an episode: `EpisodicBatchSampler`
  takes `ways` distinct classes uniformly (randperm(n_classes)[:n_way]); each class yields
  `shots + queries` distinct examples uniformly (a shuffled DataLoader batch), of which the
  first `shots` are support and the rest queries (`few_shot.py`, `extract_episode`): support
  and queries are disjoint. Row w of an episode is its class w (episode label w). One
  `np.random.default_rng(seed)` draws everything, so a seed fixes the episodes.
  """
  labels = np.asarray(labels)
  check_episodes(labels, ways, shots, queries)
  classes = np.unique(labels)
  members = [np.flatnonzero(labels == c) for c in classes]
  rng = np.random.default_rng(seed)
  drawn = np.empty((episodes, ways, shots + queries), np.int64)
  for e in range(episodes):
    for w, c in enumerate(rng.permutation(classes.size)[:ways]):
      drawn[e, w] = rng.choice(members[c], shots + queries, replace=False)
  return drawn[..., :shots], drawn[..., shots:]


def protonet_logits(support: np.ndarray, query: np.ndarray) -> np.ndarray:
  """−‖q − p_w‖² for each query q and prototype p_w = mean of class w's raw support features.

  `support` is (ways, shots, D), `query` (M, D); returns (M, ways). ssl-transfer `few_shot.py`,
  `ProtoNet.loss` and `euclidean_dist`: squared Euclidean distance, no normalisation.
  """
  prototypes = np.asarray(support, np.float64).mean(axis=1)
  query = np.asarray(query, np.float64)
  return -((query[:, None, :] - prototypes[None, :, :])**2).sum(axis=-1)


def ericsson_fewshot(feats: np.ndarray, labels: np.ndarray, *, ways: int = 5, shots: int = 5,
                     queries: int = 15, episodes: int = 600, seed: int = 0) -> dict:
  """Ericsson et al.'s few-shot evaluation: ProtoNet episodes on frozen features.

  ssl-transfer `few_shot.py` (`FewShotTester`, `ProtoNet`), defaults as its flags: 5-way,
  5 shots (they report 5, 20 and 50), 15 queries per class, 600 episodes. Their episode pool
  is every split of the dataset together (`SetDataset` concatenates train(+val) and test);
  pass what pool you mean. An episode's accuracy is over its ways · queries queries; `top1` is
  the mean over episodes and `top1_ci95` = 1.96 · std / sqrt(episodes) (`FewShotTester.test`).
  `ece` (ours; they report none) is over all queries of all episodes, softmax(−distance²) as
  their `log_softmax(-dists)`. Their backbone runs BatchNorm in train mode on each episode's
  batch; BiT's GroupNorm has no batch statistics, so features once per image are the same.
  """
  support, query = sample_episodes(labels, ways=ways, shots=shots, queries=queries,
                                   episodes=episodes, seed=seed)
  feats = np.asarray(feats)
  target = np.repeat(np.arange(ways), queries)
  accuracies, probs = [], []
  for s, q in zip(support, query):
    logits = protonet_logits(feats[s], feats[q.reshape(-1)])
    accuracies.append(np.mean(logits.argmax(axis=1) == target))
    probs.append(calibration.softmax(logits))
  mean, ci95 = metrics.mean_and_ci95(accuracies)
  return {"method": "ericsson_fewshot", "shots": shots, "seed": seed, "ways": ways,
          "queries": queries, "episodes": episodes, "top1": mean, "top1_ci95": ci95,
          "ece": calibration.expected_calibration_error(np.concatenate(probs),
                                                        np.tile(target, episodes)),
          "num_test_examples": int(episodes * ways * queries)}


# --- bigvision_fewshot and ncm ----------------------------------------------------------------

def _result(method, scores, labels, **fields):
  return {"method": method, "top1": float(np.mean(scores.argmax(1) == labels)),
          "ece": calibration.expected_calibration_error(calibration.softmax(scores), labels),
          "num_test_examples": int(len(labels)), **fields}


def few_shot(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
             test_labels: np.ndarray, num_classes: int, *, shots: Sequence[int],
             seeds: Sequence[int],
             methods: Sequence[str] = ("bigvision_fewshot", "ncm")) -> list[dict]:
  """`bigvision_fewshot` and/or `ncm` for every (k, seed), on the same k-shot draw per seed.

  bigvision_fewshot: big_vision's few-shot linear regression (big_vision `evaluators/fewshot.py`
  and `tools/lit_demo`'s maths, restated in `fewshot_classifiers.ridge_fit`): features
  whitened by the k-shot set's mean and std + 1e-5, a constant bias feature of 100, targets
  2·onehot − 1, closed-form ridge with l2 = 2^10, k examples per class drawn by one seeded
  `np.random.default_rng(seed)` permutation per class (`fewshot_classifiers.select_few_shot`).
  Its numbers compare with big_vision's only for features extracted at `BIGVISION_FEWSHOT_PP`
  (resize(256)|central_crop(224)); the caller picks the pp.

  ncm: SimpleShot-style nearest class mean (Wang et al., 2019, "L2N"): every feature
  L2-normalised, prototypes the class means of the k-shot features, each test example
  classified all-way (every class) by Euclidean distance, over the whole test set.
  """
  unknown = [m for m in methods if m not in ("bigvision_fewshot", "ncm")]
  if unknown:
    raise UserError(f"unknown few-shot method {unknown[0]!r}; valid: bigvision_fewshot, ncm")
  results = []
  for k in shots:
    for seed in seeds:
      chosen = fewshot_classifiers.select_few_shot(train_labels, k, seed)
      x, y = train_feats[chosen], train_labels[chosen]
      if "bigvision_fewshot" in methods:
        model = fewshot_classifiers.ridge_fit(x, y, num_classes)
        scores = fewshot_classifiers.ridge_scores(model, test_feats)
        results.append(_result("bigvision_fewshot", scores, test_labels, shots=k, seed=seed))
      if "ncm" in methods:
        classes, scores = fewshot_classifiers.ncm_scores(x, y, test_feats)
        full = np.full((len(test_feats), num_classes), -np.inf)
        full[:, classes] = scores  # Classes without examples can never be predicted.
        results.append(_result("ncm", full, test_labels, shots=k, seed=seed))
  return results
