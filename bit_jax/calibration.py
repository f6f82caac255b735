"""Calibration: expected calibration error (ECE) and temperature scaling."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ReliabilityBins(NamedTuple):
  """Per-bin statistics of top-1 confidence; the data of a reliability diagram."""
  edges: np.ndarray  # (num_bins + 1,) linspace(0, 1); bin b is (edges[b], edges[b + 1]].
  counts: np.ndarray  # (num_bins,) examples per bin.
  accuracy: np.ndarray  # (num_bins,) top-1 accuracy per bin; 0 where the bin is empty.
  confidence: np.ndarray  # (num_bins,) mean top-1 probability per bin; 0 where empty.


def reliability_bins(probs: np.ndarray, labels: np.ndarray,
                     num_bins: int = 15) -> ReliabilityBins:
  """Bins examples by their top-1 probability into equal-width bins (lo, hi] over (0, 1].

  A confidence exactly on an edge goes to the bin it closes: 0.5 with 2 bins is in (0, 0.5].
  Predictions are the argmax of `probs` (ties to the lowest class index).
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2 or labels.shape != probs.shape[:1] or not len(labels):
    raise ValueError(f"Expected probs (N, C) and labels (N,) with N > 0, got {probs.shape} and "
                     f"{labels.shape}.")
  if num_bins < 1:
    raise ValueError(f"num_bins must be at least 1, got {num_bins}.")
  confidence = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # side="left" finds the first edge >= confidence: that edge closes the confidence's bin.
  # The clip keeps 0 in the first bin and (rounding aside) nothing lands past the last.
  bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
  counts = np.bincount(bins, minlength=num_bins)
  safe = np.maximum(counts, 1)
  return ReliabilityBins(
      edges=edges,
      counts=counts,
      accuracy=np.bincount(bins, weights=correct, minlength=num_bins) / safe,
      confidence=np.bincount(bins, weights=confidence, minlength=num_bins) / safe,
  )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               num_bins: int = 15) -> float:
  """Returns ECE = Σ_b (n_b / N) · |acc_b − conf_b| over equal-width top-1 confidence bins."""
  bins = reliability_bins(probs, labels, num_bins)
  weights = bins.counts / bins.counts.sum()
  return float(np.sum(weights * np.abs(bins.accuracy - bins.confidence)))


# --- Temperature scaling (Guo et al., 2017) ---------------------------------------------------

TEMPERATURE_BOUNDS = (1e-2, 1e2)  # The search interval for T.


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  z = np.asarray(logits, np.float64) / temperature
  z = np.exp(z - z.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
  """Mean negative log-likelihood of softmax(logits / T)."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
  """The T in TEMPERATURE_BOUNDS minimising `nll(logits, labels, T)` (bounded Brent on log T).

  Fit it on held-out logits of the *training* data (e.g. cross-validated, as
  `linear_eval.ericsson_linear` does), never on the test set it will be judged on.
  """
  from scipy import optimize  # pylint: disable=import-outside-toplevel

  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1] or not len(labels):
    raise ValueError(f"Expected logits (N, C) and labels (N,) with N > 0, got {logits.shape} "
                     f"and {labels.shape}.")
  lo, hi = np.log(TEMPERATURE_BOUNDS)
  found = optimize.minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)),
                                   bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-6})
  return float(np.exp(found.x))
