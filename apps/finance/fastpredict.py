"""A compiled evaluator for the fast tier's trained trees: the same model, the same scores, less CPU.

scikit-learn's ``HistGradientBoostingClassifier.predict_proba`` walks the trees one at a time over the
whole batch (a Cython loop per tree); for 200 trees that was the largest single cost of the stream. Here
the fitted trees are flattened once into plain arrays and walked row by row in one numba-compiled loop,
so a row's features stay in cache while all trees visit it. Measured ~1.5x less CPU than sklearn on this
machine (bench/finance_stream.py reports both): the tree count, not the implementation, is what costs.

The semantics are scikit-learn's ``_predict_one_from_raw_data`` (sklearn/ensemble/_hist_gradient_boosting/
_predictor.pyx): NaN follows ``missing_go_to_left``; a categorical split tests the left-category bitset,
then the known-category bitset (unknown categories count as missing); leaf values are added tree by tree
onto the baseline in the same order, and the sigmoid is scipy's ``expit``, so the probabilities are
bit-for-bit those of scikit-learn (``tests/finance/test_scoring.py`` checks). Anything that is not a
binary HGB model (e.g. a future classifier) falls back to the classifier's own ``predict_proba``.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the finance extra; without it sklearn predicts
    njit = None


@dataclass(frozen=True)
class FlatTrees:
    """All trees of one model as flat arrays: an internal node's right child sits right after its left
    child, so the next node is ``child + go_right`` (no branch on the direction); a leaf is its own child."""

    roots: np.ndarray       # int32 (n_trees,)
    feature: np.ndarray     # int32 (n_nodes,): split feature (0 for a leaf: any valid column)
    child: np.ndarray       # int32 (n_nodes,): left child (itself for a leaf)
    threshold: np.ndarray   # float64 (n_nodes,): x <= threshold goes left (+inf for a leaf)
    flags: np.ndarray       # int32 (n_nodes,): MISSING_LEFT | CATEGORICAL
    cat_row: np.ndarray     # int32 (n_nodes,): row of cat_left for a categorical split (else 0)
    leaf_value: np.ndarray  # float64 (n_nodes,)
    cat_left: np.ndarray    # uint32 (n_cat_splits + 1, 8): raw left-category bitsets (row 0 unused)
    known_cats: np.ndarray  # uint32 (n_features, 8): categories seen in training, per feature
    baseline: float


MISSING_LEFT, CATEGORICAL = 1, 2


def flatten_hgb(clf) -> FlatTrees:
    """Flatten a fitted binary ``HistGradientBoostingClassifier``. Feature indices are those of the
    model's own preprocessed input (``clf._preprocess_X``: categorical columns ordinal-encoded first)."""
    known, f_idx_map = clf._bin_mapper.make_known_categories_bitsets()
    known_cats = np.zeros((len(f_idx_map), 8), np.uint32)
    if known.shape[0]:
        known_cats[:] = known[f_idx_map]  # only read at categorical splits
    roots, rows, cat_rows = [], [], [np.zeros(8, np.uint32)]
    for (predictor,) in clf._predictors:
        src, bits = predictor.nodes, predictor.raw_left_cat_bitsets
        roots.append(len(rows))
        rows.append(None)
        queue = [(0, len(rows) - 1)]  # (source node, its new index); children are appended in pairs
        while queue:
            old, new = queue.pop()
            n = src[old]
            if n["is_leaf"]:
                rows[new] = (0, new, np.inf, MISSING_LEFT, 0, float(n["value"]))
                continue
            child = len(rows)
            rows.extend((None, None))
            flags = MISSING_LEFT * int(n["missing_go_to_left"]) + CATEGORICAL * int(n["is_categorical"])
            cat = 0
            if n["is_categorical"]:
                cat = len(cat_rows)
                cat_rows.append(bits[n["bitset_idx"]])
            rows[new] = (int(n["feature_idx"]), child, float(n["num_threshold"]), flags, cat, 0.0)
            queue += [(int(n["left"]), child), (int(n["right"]), child + 1)]
    feature, child, threshold, flags, cat_row, leaf_value = zip(*rows)
    return FlatTrees(_i32(roots), _i32(feature), _i32(child), np.asarray(threshold, np.float64),
                     _i32(flags), _i32(cat_row), np.asarray(leaf_value, np.float64),
                     np.asarray(cat_rows, np.uint32), known_cats, float(np.ravel(clf._baseline_prediction)[0]))


def _i32(values) -> np.ndarray:
    return np.asarray(values, np.int32)


def _raw_scores_py(X, roots, feature, child, threshold, flags, cat_row, leaf_value, cat_left, known_cats,
                   baseline, out):
    for i in range(X.shape[0]):
        acc = baseline
        for t in range(roots.shape[0]):  # trees in training order: the same sum as sklearn's
            node = roots[t]
            while child[node] != node:
                x = X[i, feature[node]]
                fl = flags[node]
                missing_right = (fl & MISSING_LEFT) == 0
                # numeric split: x <= threshold goes left; NaN goes where training sent missing values
                right = (x > threshold[node]) | (math.isnan(x) & missing_right)
                if fl & CATEGORICAL:
                    # NaN/negative -> missing; in the left bitset -> left; another known category ->
                    # right; an unknown one -> missing. Codes are cast to uint8 as sklearn does.
                    valid = (x >= 0) & (x < 256)
                    c = np.int64(x) if valid else 0
                    in_left = (cat_left[cat_row[node], c >> 5] >> (c & 31)) & 1
                    is_known = (known_cats[feature[node], c >> 5] >> (c & 31)) & 1
                    right = missing_right if not valid else (False if in_left else (
                        True if is_known else missing_right))
                node = child[node] + right
            acc += leaf_value[node]
        out[i] = acc


_raw_scores = njit(cache=True, nogil=True)(_raw_scores_py) if njit else None


class CompiledHGB:
    """``predict_proba`` of the wrapped model: the wrapper's input shift, sklearn's own input
    preprocessing (validation, ordinal encoding of the categorical columns), then the compiled walk."""

    def __init__(self, clf, flat: FlatTrees, shift=None):
        self.clf, self.flat, self.shift = clf, flat, shift

    def raw(self, X: np.ndarray, n_trees: int | None = None) -> np.ndarray:
        """Raw scores (log-odds); ``n_trees`` sums only the first trees (a cost/quality study, not the
        scorer's path)."""
        f = self.flat
        if self.shift is not None:
            X = self.shift(X)
        X = np.ascontiguousarray(self.clf._preprocess_X(X, reset=False), dtype=np.float64)
        out = np.empty(len(X), np.float64)
        _raw_scores(X, f.roots[:n_trees], f.feature, f.child, f.threshold, f.flags, f.cat_row, f.leaf_value,
                    f.cat_left, f.known_cats, f.baseline, out)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import (
            expit,  # what sklearn's HalfBinomialLoss.predict_proba uses
        )

        return expit(self.raw(X))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_for(classifier) -> CompiledHGB | None:
    """The compiled evaluator for ``classifier`` (built once per object), or None when it does not apply."""
    if _raw_scores is None:
        return None
    try:
        return _CACHE[classifier]
    except (KeyError, TypeError):
        pass
    compiled = _build(classifier)
    try:
        _CACHE[classifier] = compiled
    except TypeError:  # not weak-referenceable: build each time is still correct, only slower
        pass
    return compiled


def _build(classifier) -> CompiledHGB | None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # The fast tier wraps its HGB in model._CatSafe, which maps negative category codes to 254.
    inner = getattr(classifier, "clf", classifier)
    if not isinstance(inner, HistGradientBoostingClassifier) or inner.n_trees_per_iteration_ != 1:
        return None
    shift = None
    if inner is not classifier:
        from apps.finance import model

        if type(classifier) is not model._CatSafe:
            return None
        shift = model._safe_cats  # what _CatSafe.predict_proba applies before the classifier
    return CompiledHGB(inner, flatten_hgb(inner), shift)
