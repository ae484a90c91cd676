"""Measure the two-tier decision on a held-out synthetic stream: fast-tier alerts, then the adjudicator.

    python -m apps.finance.adjudicator_eval --model-file FAST.pkl --server URL [--adapter finance] [--n 50000]

Final alert = fast-tier alert AND the adjudicator's P(fraud) > P(legit). Reports precision/recall/F1 of
the fast tier alone and of the two tiers, on the same held-out stream (seed 303, drift 1.0: the same
held-out world as the curriculum figures; with the same ``--n`` as the curriculum's ``--n-test`` it is
the same stream). Each alert carries the account's recent history, as in the adapter's training data.
Synthetic data. Use the curriculum's ``DSV_HOME/finance/curriculum/fast_model_stage2.pkl`` as the fast tier.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
from apps.finance.features import featurize_all
from apps.finance.llm import recent_history, score_prompt
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
    p_fraud = np.zeros(len(y))
    t0 = time.time()
    for i, why, hist in zip(alerts.tolist(), reasons_for(X, alerts), recent_history(test, alerts)):
        alert = {"tx_id": records[i]["tx_id"], "score": float(p[i]), "reasons": why, "tx": records[i],
                 "history": hist}
        p_fraud[i] = client.score(adapter, score_prompt(alert), ["fraud", "legit"])["fraud"]
    elapsed = time.time() - t0
    fast_only = (p >= fast.threshold).astype(float)
    confirmed = p_fraud > 0.5
    on_alerts = y[alerts]
    return {"data": f"synthetic held-out stream seed 303 drift 1.0, n={n}", "alerts": len(alerts),
            "adjudicated_per_s": round(len(alerts) / max(elapsed, 1e-9), 1),
            "fast_tier_only": metrics(y, fast_only, 0.5),
            "two_tier": metrics(y, confirmed.astype(float), 0.5),
            # How well the adapter separates the fast tier's true and false alerts, independent of 0.5:
            # AUPRC over the alerts only, against the alerts' fraud share (what a random ranking scores).
            "adjudicator_on_alerts": {
                "alerts_fraud_share": round(float(on_alerts.mean()), 4) if len(alerts) else 0.0,
                "auprc": metrics(on_alerts, p_fraud[alerts], 0.5)["auprc"] if len(alerts) else 0.0,
                "cleared_true_frauds": int((on_alerts & ~confirmed[alerts]).sum()),
                "cleared_false_alerts": int((~on_alerts.astype(bool) & ~confirmed[alerts]).sum())},
            "adapter": adapter}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-file", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--adapter", default="finance")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--api-key", default=None, help="bearer key (default: DSV_API_KEY)")
    args = ap.parse_args()
    import os

    key = args.api_key or os.environ.get("DSV_API_KEY")
    print(json.dumps(evaluate(args.model_file, args.server, args.adapter, args.n, key), indent=2))


if __name__ == "__main__":
    main()
