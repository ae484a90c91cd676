"""The fast tier: a gradient-boosted scorer over the streaming features, with analyst-readable reasons.

scikit-learn's ``HistGradientBoostingClassifier`` scores a 10k-row batch in a few milliseconds and copes
with the class imbalance through ``class_weight``. The alert threshold is chosen on a validation split to
maximise F1 and saved with the model, so every consumer of the file makes the same decision.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.finance.features import FEATURE_NAMES, featurize_all
from shared.io import InputError, atomic_path

MODEL_VERSION = "fast-hgb-v1"
FRAUD_REPEAT = 5
#: Transactions scoring at least this share of the alert threshold are sent to the adjudicator (the
#: alerts and the borderline rows below them): it can clear alerts and confirm borderline fraud.
REVIEW_FRACTION = 0.25


@dataclass
class FastScorer:
    classifier: object
    threshold: float
    name: str = MODEL_VERSION
    feature_names: tuple[str, ...] = FEATURE_NAMES
    meta: dict = field(default_factory=dict)
    review_threshold: float | None = None
    """Scores from here up go to the adjudicator (None: only alerts; files saved before it existed)."""

    @property
    def review_at(self) -> float:
        return self.threshold if self.review_threshold is None else min(self.review_threshold, self.threshold)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if len(X) == 0:
            return np.zeros(0)
        # The same trees walked by a compiled loop (identical probabilities, several times less CPU);
        # any classifier it does not know is asked directly.
        from apps.finance.fastpredict import compiled_for

        compiled = compiled_for(self.classifier)
        if compiled is not None:
            return compiled.predict_proba(X)
        return self.classifier.predict_proba(X)[:, 1]

    def save(self, path: str | Path) -> Path:
        """Atomic: a crash mid-write leaves the previous model in place."""
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> FastScorer:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no fast-tier model (run `dsv finance train` first)")
        obj = pickle.loads(path.read_bytes())
        if not isinstance(obj, FastScorer) or tuple(obj.feature_names) != FEATURE_NAMES:
            raise InputError(f"{path}: not a fast-tier model for this feature set; retrain it")
        return obj


def fit_classifier(X: np.ndarray, y: np.ndarray, seed: int = 0, sample_weight: np.ndarray | None = None,
                   max_iter: int = 200):
    from sklearn.ensemble import HistGradientBoostingClassifier

    categorical = [FEATURE_NAMES.index(n) for n in ("type", "channel", "mcc")]
    clf = HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=0.1, max_leaf_nodes=31, l2_regularization=1.0,
        categorical_features=categorical, random_state=seed,
        early_stopping=False,
    )
    # Unknown category codes (-1) are not allowed for categorical features: shift them into range.
    # Up-weight the rare class by repeating its rows: any sample_weight (or class_weight) made the fit
    # ~9x slower here, as it loses the constant-hessian fast path.
    y = np.asarray(y)
    extra = np.repeat(np.flatnonzero(y == 1), FRAUD_REPEAT - 1)
    rows = np.r_[np.arange(len(y)), extra]
    clf.fit(_safe_cats(X[rows]), y[rows], sample_weight=None if sample_weight is None else sample_weight[rows])
    return _CatSafe(clf)


def _safe_cats(X: np.ndarray) -> np.ndarray:
    X = X.copy()
    for name in ("type", "channel", "mcc"):
        col = FEATURE_NAMES.index(name)
        X[:, col] = np.where(X[:, col] < 0, 254, X[:, col])
    return X


class _CatSafe:
    """Wraps the classifier so scoring applies the same category shift as training."""

    def __init__(self, clf):
        self.clf = clf

    def predict_proba(self, X):
        return self.clf.predict_proba(_safe_cats(X))


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    prec, rec, thr = precision_recall_curve(y, p)
    f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
    return float(thr[int(np.argmax(f1[:-1]))]) if len(thr) else 0.5


def metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 at the threshold and AUPRC (average precision)."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    pred = (p >= threshold).astype(int)
    return {
        "precision": round(float(precision_score(y, pred, zero_division=0)), 4),
        "recall": round(float(recall_score(y, pred, zero_division=0)), 4),
        "f1": round(float(f1_score(y, pred, zero_division=0)), 4),
        "auprc": round(float(average_precision_score(y, p)) if y.any() else 0.0, 4),
        "n": len(y), "positives": int(y.sum()),
    }


def train_fast_scorer(cols: dict[str, np.ndarray], seed: int = 0, batch_size: int = 5000,
                      max_iter: int = 200) -> FastScorer:
    """Featurise a labelled set in stream order, train on the first 80 % (by time), pick the threshold
    on the last 20 %, then refit on everything with that threshold."""
    X = featurize_all(cols, batch_size)
    y = np.asarray(cols["is_fraud"], dtype=int)
    cut = int(len(y) * 0.8)
    clf = fit_classifier(X[:cut], y[:cut], seed, max_iter=max_iter)
    p_val = clf.predict_proba(X[cut:])[:, 1]
    threshold = best_f1_threshold(y[cut:], p_val)
    validation = metrics(y[cut:], p_val, threshold)
    final = fit_classifier(X, y, seed, max_iter=max_iter)
    return FastScorer(final, threshold, meta={"validation": validation, "n_train": len(y),
                                              "fraud_rate": float(y.mean()), "seed": seed},
                      review_threshold=threshold * REVIEW_FRACTION)


# -- reasons ------------------------------------------------------------------------------------------

def _idx(name: str) -> int:
    return FEATURE_NAMES.index(name)


# (feature, test, text): evaluated column-wise on the feature matrix, not per message.
REASON_RULES = (
    ("acct_count_5m", lambda v: v >= 3, "burst: {:.0f} transactions in the last 5 minutes"),
    ("amount_zscore", lambda v: v >= 2.5, "amount {:.1f} sd above this account's usual"),
    ("new_device", lambda v: v > 0, "new device for this account"),
    ("fast_country_change", lambda v: v > 0, "country changed within 6 hours"),
    ("device_account_switches_1h", lambda v: v >= 1.5, "device shared by {:.0f} accounts in the last hour"),
    ("cashout_after_transfer", lambda v: v > 0, "cash-out right after a transfer"),
    ("log_inflow_1h", lambda v: v >= 5.0, "passes on money received in the last hour"),
    ("new_account", lambda v: v > 0, "first transaction of this account"),
    ("foreign", lambda v: v > 0, "outside the account's home country"),
)


def reasons_for(X: np.ndarray, rows: np.ndarray) -> list[list[str]]:
    """Human-readable reasons for the given rows (alerts only, so this stays off the common path)."""
    out: list[list[str]] = [[] for _ in range(len(rows))]
    if len(rows) == 0:
        return out
    sub = X[rows]
    for name, test, text in REASON_RULES:
        col = sub[:, _idx(name)]
        for i in np.flatnonzero(test(col)):
            out[i].append(text.format(col[i]) if "{" in text else text)
    for r in out:
        if not r:
            r.append("unusual combination of amount, type and timing")
    return out
