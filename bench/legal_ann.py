"""ANN index choice at scale: where recall@10 against exact search is lost, and what each fix costs.

An IVF index with 8-bit codes loses recall in two places, measured apart here on the 2 M run's own
passage vectors and questions:

- probing: a true neighbour sits in a list the query does not probe. Measured directly, without any
  codes: the share of the exact top-10 whose list is among the query's ``nprobe`` nearest centroids -
  the recall of an IVF-Flat index over the same lists (the ceiling of any code + re-score);
- quantisation: the codes reorder near-ties. Measured as the recall of ``IVF..,SQ8`` alone versus the
  same index whose top ``10 * rescore`` candidates are re-scored exactly from the float16 vectors
  (``apps.legal.vectors.exact_top_k``, the code path ``DenseIndex.search`` uses).

Per list count: k-means training and add time, codes scanned per query, and single-query latency (one
query at a time, as the service searches) per (nprobe, rescore). Exact brute-force search over the same
vectors is the baseline (ratio). Vectors come from the knowledge base (``kb/dense.f16``) when
``bench/legal.py`` has ingested, otherwise the corpus is embedded once with the knowledge base's static
embedder through ingest's own worker code (``--static-from``), so the study need not wait for an ingest.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/legal_ann.py --workdir /tmp/legal8/bench \
        --n 2000000 --static-from <static dir> --nlist 2048 4096 --nprobe 32 64 128 256 --rescore 0 2 4 8
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
from legal import exact_reference, peak_rss_mib, recall_at_10, sample_records  # noqa: E402  (the main benchmark's helpers)

DIM = 384


def embed_corpus(corpus: Path, static_dir: Path, out: Path, workers: int = 2, batch_docs: int = 2000) -> int:
    """Passage vectors of ``corpus`` in id order, exactly as ingest computes them (same chunking, same
    worker function), written to ``out`` as float16 rows; returns the number of passages."""
    import itertools
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from apps.legal.config import LegalConfig
    from apps.legal.data import iter_raw
    from apps.legal.prepare import init_worker, prepare_in_worker
    from shared.io import atomic_path

    chunk_chars = LegalConfig(kb_dir=Path(".")).chunk_chars
    raw = iter_raw(corpus, 1)
    batches = iter(lambda: list(itertools.islice(raw, batch_docs)), [])
    n = 0
    with atomic_path(out) as tmp, open(tmp, "wb") as fh, ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=init_worker,
            initargs=(os.getpid(), str(static_dir))) as pool:
        inflight = []
        for b in batches:
            inflight.append(pool.submit(prepare_in_worker, b, chunk_chars))
            if len(inflight) > 2 * workers:
                vecs = inflight.pop(0).result().vectors
                fh.write(vecs.astype(np.float16).tobytes()); n += len(vecs)
        for f in inflight:
            vecs = f.result().vectors
            fh.write(vecs.astype(np.float16).tobytes()); n += len(vecs)
    return n


def probe_ceiling(quantizer, qv: np.ndarray, neighbour_vecs: np.ndarray, nprobes: list[int]) -> dict[int, float]:
    """Share of the exact neighbours whose IVF list is among the query's ``nprobe`` nearest centroids."""
    _, probed = quantizer.search(qv, max(nprobes))                          # (nq, max nprobe), nearest first
    nq, k = neighbour_vecs.shape[:2]
    _, home = quantizer.search(neighbour_vecs.reshape(nq * k, -1), 1)      # each neighbour's list
    home = home.reshape(nq, k)
    never = max(nprobes)  # not among the probed lists at any setting
    rank = np.full((nq, k), never)
    for qi in range(nq):
        where = {int(c): r for r, c in enumerate(probed[qi])}
        rank[qi] = [where.get(int(h), never) for h in home[qi]]
    return {p: round(float((rank < p).mean()), 4) for p in nprobes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("var/bench/legal"), help="bench/legal.py's --workdir")
    ap.add_argument("--n", type=int, required=True, help="the --n of the bench/legal.py corpus")
    ap.add_argument("--seed", type=int, default=0, help="bench/legal.py's --seed (same questions)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--static-from", type=Path, default=None, help="static embedder (default: the kb's)")
    ap.add_argument("--nlist", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--code", default="SQ8", help="FAISS code after IVF<nlist>, (SQ8, SQfp16, PQ48x4fs..)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--rescore", type=int, nargs="+", default=[0, 2, 4, 8], help="candidates per hit re-scored")
    ap.add_argument("--train-per-list", type=int, default=50)
    args = ap.parse_args(argv)

    import faiss

    from apps.legal.embedders import StaticEmbedder
    from apps.legal.generate import make_questions
    from apps.legal.vectors import exact_top_k

    faiss.omp_set_num_threads(1)
    work = args.workdir / f"n{args.n}"
    kb_vectors = work / "kb" / "dense.f16"
    result: dict = {"n": args.n, "synthetic_data": True, "load_avg_start": os.getloadavg()[0], "nlist": {}}
    if kb_vectors.exists():
        vec_path = kb_vectors
    else:
        vec_path = work / "study-vectors.f16"
        if not vec_path.exists():
            t = time.perf_counter()
            embed_corpus(work / "corpus.jsonl", args.static_from, vec_path)
            result["embed_seconds"] = round(time.perf_counter() - t, 1)
    result["vectors"] = str(vec_path)
    n_pass = vec_path.stat().st_size // (2 * DIM)
    vectors = np.memmap(vec_path, dtype=np.float16, mode="r", shape=(n_pass, DIM))
    embedder = StaticEmbedder.load(args.static_from or work / "kb" / "static")
    records = sample_records(work / "corpus.jsonl", args.n, args.queries, args.seed)
    questions = make_questions(records, args.queries, seed=args.seed + 1)
    qv = np.ascontiguousarray(embedder.embed([q["question"] for q in questions]), dtype=np.float32)
    result.update(passages=n_pass, queries=len(qv))

    t = time.perf_counter()
    deep_s, deep_ids = exact_reference(vec_path, n_pass, qv, 30)  # ranked by (-score, id): top-10 = first 10
    result["exact_ms_per_query"] = round((time.perf_counter() - t) / len(qv) * 1000, 2)
    exact_s, exact_ids = deep_s[:, :10], deep_ids[:, :10]
    tied_beyond = (deep_s[:, 10:] >= exact_s[:, 9:10] - 1e-6).sum(1)
    result["queries_with_10th_score_tied_beyond_rank_10"] = int((tied_beyond > 0).sum())
    neighbour_vecs = np.asarray(vectors[exact_ids.ravel()], dtype=np.float32).reshape(len(qv), 10, DIM)

    rng = np.random.default_rng(args.seed)
    for nlist in args.nlist:
        factory = f"IVF{nlist},{args.code}"
        n_train = min(n_pass, args.train_per_list * nlist)
        train = np.asarray(vectors[np.sort(rng.choice(n_pass, n_train, replace=False))], dtype=np.float32)
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        index.train(train)
        row: dict = {"factory": factory, "train_points": n_train, "train_seconds": round(time.perf_counter() - t, 1)}
        del train
        ivf = faiss.extract_index_ivf(index)
        row["probe_ceiling"] = probe_ceiling(ivf.quantizer, qv, neighbour_vecs, args.nprobe)
        print(json.dumps({"progress": factory, **row}), file=sys.stderr)
        t = time.perf_counter()
        for lo in range(0, n_pass, 250_000):
            index.add(np.asarray(vectors[lo: lo + 250_000], dtype=np.float32))
        row["add_seconds"] = round(time.perf_counter() - t, 1)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)])
        _, probed = ivf.quantizer.search(qv, max(args.nprobe))
        row["bytes_per_code"] = ivf.code_size
        row["index_mib"] = round(sizes.sum() * (ivf.code_size + 8) / 2**20, 1)
        row["largest_list_vs_mean"] = round(float(sizes.max() / sizes.mean()), 1)
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            scanned = float(np.mean([sizes[p[:nprobe]].sum() for p in probed]))
            cell = {"codes_scanned_per_query": round(scanned)}
            for rescore in args.rescore:
                times, found = [], []
                for q in qv:  # one query at a time, as the service searches
                    t = time.perf_counter()
                    if rescore:
                        _, cand = index.search(q[None], 10 * rescore)
                        _, ids = exact_top_k(q[None], cand, vectors, 10)
                    else:
                        _, ids = index.search(q[None], 10)
                    times.append(time.perf_counter() - t)
                    found.append(ids[0])
                cell[f"rescore_{rescore}"] = {**recall_at_10(found, exact_s, exact_ids, vectors, qv),
                                              "p50_ms": round(float(np.percentile(times, 50)) * 1000, 2),
                                              "p99_ms": round(float(np.percentile(times, 99)) * 1000, 2)}
            row[f"nprobe_{nprobe}"] = cell
            print(json.dumps({"progress": factory, "nprobe": nprobe, **cell}), file=sys.stderr)
        result["nlist"][str(nlist)] = row
        del index
    best = [(c[f"rescore_{r}"]["p50_ms"], nl, p, r) for nl, row in result["nlist"].items()
            for p in args.nprobe for r in args.rescore if r
            for c in [row[f"nprobe_{p}"]] if c[f"rescore_{r}"]["recall_at_10"] >= 0.95]
    if best:
        p50, nl, p, r = min(best)
        result["ratios"] = {"fastest_at_0.95": {"nlist": int(nl), "nprobe": p, "rescore": r, "p50_ms": p50},
                            "exact_ms_vs_that_p50": round(result["exact_ms_per_query"] / max(p50, 1e-9), 1)}
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    result["load_avg_end"] = os.getloadavg()[0]
    out = work / "ann-study.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
