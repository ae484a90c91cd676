"""Measure the two-tier decision on a held-out synthetic stream: fast-tier alerts, then the adjudicator.

    python -m apps.finance.adjudicator_eval --model-file FAST.pkl --server URL [--adapter finance] [--n 50000]

Final alert = fast-tier alert AND the adjudicator's P(fraud) > P(legit). Reports precision/recall/F1 of
the fast tier alone and of the two tiers, on the same held-out stream (seed 303, drift 1.0: the same
held-out world as the curriculum figures). Synthetic data.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
from apps.finance.features import featurize_all
from apps.finance.llm import score_prompt
from apps.finance.model import FastScorer, metrics, reasons_for


def evaluate(model_file: str, server: str, adapter: str, n: int, api_key: str | None = None) -> dict:
    from core.client import ModelClient

    fast = FastScorer.load(model_file)
    test = generate_columns(GeneratorConfig(n=n, seed=303, drift=1.0))
    X = featurize_all(test)
    p = fast.predict_proba(X)
    y = test["is_fraud"].astype(int)
    alerts = np.flatnonzero(p >= fast.threshold)
    records = columns_to_records(test, labelled=False)
    client = ModelClient(server, api_key, timeout=120)
    confirmed = np.zeros(len(y), dtype=bool)
    t0 = time.time()
    for i, why in zip(alerts.tolist(), reasons_for(X, alerts)):
        alert = {"tx_id": records[i]["tx_id"], "score": float(p[i]), "reasons": why, "tx": records[i]}
        probs = client.score(adapter, score_prompt(alert), ["fraud", "legit"])
        confirmed[i] = probs["fraud"] > probs["legit"]
    fast_only = (p >= fast.threshold).astype(float)
    return {"data": f"synthetic held-out stream seed 303 drift 1.0, n={n}", "alerts": len(alerts),
            "adjudicated_per_s": round(len(alerts) / max(time.time() - t0, 1e-9), 1),
            "fast_tier_only": metrics(y, fast_only, 0.5),
            "two_tier": metrics(y, confirmed.astype(float), 0.5), "adapter": adapter}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-file", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--adapter", default="finance")
    ap.add_argument("--n", type=int, default=50_000)
    args = ap.parse_args()
    print(json.dumps(evaluate(args.model_file, args.server, args.adapter, args.n), indent=2))


if __name__ == "__main__":
    main()
