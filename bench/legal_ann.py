"""ANN index choice at scale: recall@10 against exact search, and query cost, per FAISS factory.

Runs on what ``bench/legal.py`` leaves behind in its work directory (the float16 copy of every passage
vector, the corpus and the knowledge base's static embedder), so the comparison uses the very vectors
the benchmark ingested, not a fresh sample. Each factory is trained on the same sample and filled with
the same vectors; the questions are the benchmark's own (same seed). Exact search over the same
float32-widened vectors is the baseline, as in ``bench/legal.py``.

    python bench/legal_ann.py --workdir /tmp/legal7/bench --n 2000000 \
        --factories IVF2048,SQ8 IVF2048,SQfp16 --nprobe 16 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from legal import exact_topk, peak_rss_mib, sample_records  # noqa: E402  (the main benchmark's helpers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("var/bench/legal"), help="bench/legal.py's --workdir")
    ap.add_argument("--n", type=int, required=True, help="the --n of the bench/legal.py run to reuse")
    ap.add_argument("--seed", type=int, default=0, help="bench/legal.py's --seed (same questions)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--factories", nargs="+", default=["IVF2048,SQ8", "IVF2048,SQfp16"])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--train-size", type=int, default=102_400, help="training sample (50 per list for IVF2048)")
    args = ap.parse_args(argv)

    import faiss

    from apps.legal.config import LegalConfig
    from apps.legal.embedders import StaticEmbedder
    from apps.legal.generate import make_questions

    faiss.omp_set_num_threads(1)
    work = args.workdir / f"n{args.n}"
    cfg = LegalConfig(kb_dir=work / "kb")
    n_pass = json.loads((work / f"result-{args.n}.json").read_text())["ingest"]["passages"]
    embedder = StaticEmbedder.load(cfg.static_dir)
    records = sample_records(work / "corpus.jsonl", args.n, args.queries, args.seed)
    questions = make_questions(records, args.queries, seed=args.seed + 1)
    qv = np.ascontiguousarray(embedder.embed([q["question"] for q in questions]), dtype=np.float32)
    dim = qv.shape[1]
    # the file is pre-allocated larger than needed; the first n_pass rows are the ingested passages
    vectors = np.memmap(work / "vectors.f16", dtype=np.float16, mode="r")[: n_pass * dim].reshape(n_pass, dim)

    t = time.perf_counter()
    _, exact_ids = exact_topk(vectors, n_pass, qv, 10)
    exact_ms = (time.perf_counter() - t) / len(qv) * 1000
    rng = np.random.default_rng(args.seed)
    train = np.asarray(vectors[np.sort(rng.choice(n_pass, min(args.train_size, n_pass), replace=False))],
                       dtype=np.float32)
    result = {"n": args.n, "passages": n_pass, "synthetic_data": True, "queries": len(qv),
              "load_avg_start": os.getloadavg()[0], "exact_ms_per_query": round(exact_ms, 2), "factories": {}}
    for factory in args.factories:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        index.train(train)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        for lo in range(0, n_pass, 250_000):
            index.add(np.asarray(vectors[lo: lo + 250_000], dtype=np.float32))
        add_s = time.perf_counter() - t
        row = {"train_seconds": round(train_s, 1), "add_seconds": round(add_s, 1),
               "bytes_per_vector": index.sa_code_size() if hasattr(index, "sa_code_size") else None}
        for nprobe in args.nprobe:
            faiss.extract_index_ivf(index).nprobe = nprobe
            t = time.perf_counter()
            _, ids = index.search(qv, 10)
            per_q = (time.perf_counter() - t) / len(qv) * 1000
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)]))
            row[f"nprobe_{nprobe}"] = {"recall_at_10": round(recall, 4), "ms_per_query_batched": round(per_q, 3)}
        result["factories"][factory] = row
        print(json.dumps({"progress": factory, **row}), file=sys.stderr)
        del index
    base = result["factories"].get(args.factories[0], {})
    result["ratios_vs_first"] = {
        f: {k: round(v["recall_at_10"] / max(base[k]["recall_at_10"], 1e-9), 3)
            for k, v in row.items() if k.startswith("nprobe_")}
        for f, row in result["factories"].items()}
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
