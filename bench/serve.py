"""Benchmark of the model server against plain sequential ``model.generate`` (same run, same machine).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/serve.py [--out var/bench/serve.json]

Measures, on deepseek-tiny (``DSV_HOME/models/deepseek-tiny``; when absent an UNTRAINED checkpoint of
the same architecture is built in a temp dir and the JSON says ``"untrained": true``):

1. generation: tokens/s and p50/p99 latency through ``dsv serve`` at concurrency 1, 8 and 32, against
   sequential ``model.generate`` calls in one process (goal: >= 5x the baseline's tokens/s at 32);
2. scoring: ``/v1/score`` requests/s and p99 at 32 connections, batched server vs the same server with
   ``--max-batch 1`` (goal 5x); load from ``wrk`` when installed (Debian ``wrk``), else a Python client;
3. HTTP layer capacity on ``/health`` with ``wrk`` if installed (else a Python client, which is then the
   bottleneck and says so) against the product's 2000 requests/s per interface;
4. INT8 (``--quantize int8``'s code path, in process): decode tokens/s and next-token top-1 / greedy
   output agreement against fp32.

Every figure is printed as one JSON object with the ratios; fixed-length generations (``ignore_eos``)
keep token counts equal between server and baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.net import free_port  # noqa: E402  (after the path insert)

PROMPTS = [
    "The transaction was flagged because", "CT shows a 6 mm solid nodule in", "Bearing vibration RMS has",
    "According to Article 577 of the Civil Code,", "该交易因金额远高于", "胸部CT示右肺上叶", "轴承振动有效值连续",
    "根据《民法典》第五百七十七条，",
]
LABELS = ["fraud", "legitimate", "needs review"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def ensure_model(requested: Path | None, workdir: Path) -> tuple[Path, bool]:
    """The real deepseek-tiny if it exists, else an untrained one of the same shape (said in the output)."""
    from core.model.loading import check_checkpoint_dir
    from shared.io import InputError
    from shared.settings import load_settings

    path = requested or load_settings().default_model_dir
    try:
        return check_checkpoint_dir(path), False
    except InputError:
        if requested:
            raise
    from core.model.tiny import build_untrained
    from core.model.tokenizer import train_bpe_tokenizer

    print(f"[bench] {path} not found: building an UNTRAINED deepseek-tiny (same architecture) for timing",
          file=sys.stderr)
    tokenizer = train_bpe_tokenizer(PROMPTS * 50 + [p[::-1] for p in PROMPTS] * 50, vocab_size=8000)
    model = build_untrained(tokenizer, seed=0)
    out = workdir / "deepseek-tiny-untrained"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out, True


def baseline_generate(model_dir: Path, requests: int, max_tokens: int) -> dict:
    """Sequential ``model.generate``: the naive way to serve, one request after another."""
    import torch

    from core.model.loading import load_model

    loaded = load_model(model_dir)
    latencies, tokens = [], 0
    start = time.perf_counter()
    for i in range(requests):
        ids = loaded.tokenizer(PROMPTS[i % len(PROMPTS)], return_tensors="pt").input_ids
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                        max_new_tokens=max_tokens, min_new_tokens=max_tokens)
        latencies.append(time.perf_counter() - t0)
        tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - start
    return {"requests": requests, "tokens": tokens, "tokens_per_s": tokens / wall,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99)}


class Server:
    def __init__(self, model_dir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("DSV_API_KEYS", None)
        self.log = tempfile.NamedTemporaryFile(prefix="dsv-serve-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
             "--adapters-dir", str(model_dir.parent / "no-adapters"), *extra],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


async def load(url: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one(body):
            nonlocal tokens, errors
            async with semaphore:
                t0 = time.perf_counter()
                response = await client.post(path, json=body)
                latencies.append(time.perf_counter() - t0)
                if response.status_code != 200:
                    errors += 1
                    return
                tokens += response.json()["usage"].get("completion_tokens", 0)

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    return {"requests": len(bodies), "concurrency": concurrency, "errors": errors, "tokens": tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall, "requests_per_s": len(bodies) / wall,
            "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99)}


def generation_bodies(model: str, n: int, max_tokens: int) -> list[dict]:
    return [{"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0,
             "ignore_eos": True} for i in range(n)]


def score_bodies(model: str, n: int) -> list[dict]:
    return [{"model": model, "prompt": f"{PROMPTS[i % len(PROMPTS)]} Verdict:", "labels": LABELS} for i in range(n)]


def _parse_wrk(out: str) -> dict:
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}

    def seconds(label: str) -> float | None:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        return float(match.group(1)) * scale[match.group(2)] if match else None

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    timeouts = re.search(r"timeout (\d+)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_s": seconds("50%"), "p99_s": seconds("99%"),
            "errors": int(errors.group(1)) if errors else 0, "timeouts": int(timeouts.group(1)) if timeouts else 0}


def wrk_post(url: str, path: str, body: dict, connections: int, seconds: int) -> dict | None:
    """POST load from wrk (C, ~no CPU) so that the server, not a Python client, is what is measured."""
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                     f'wrk.headers["Content-Type"] = "application/json"\n')
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s", "--latency",
                          "-s", script.name, f"{url}{path}"], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    return {"tool": f"wrk -t1 -c{connections} -d{seconds}s (one fixed body)", "concurrency": connections,
            **_parse_wrk(out)}


def score_load(url: str, name: str, requests: int, seconds: int) -> dict:
    body = score_bodies(name, 1)[0]
    figures = wrk_post(url, "/v1/score", body, 32, seconds)
    if figures is None:
        figures = asyncio.run(load(url, "/v1/score", score_bodies(name, requests), 32))
        figures["tool"] = "python httpx (client-bound: install wrk)"
    return figures


def http_capacity(url: str, seconds: int) -> dict:
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-t1", "-c64", f"-d{seconds}s", "--latency", f"{url}/health"],
                             capture_output=True, text=True, check=True).stdout
        return {"tool": "wrk -t1 -c64", **_parse_wrk(out)}
    import httpx

    async def run():
        count = 0
        deadline = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=url) as client:
            async def worker():
                nonlocal count
                while time.perf_counter() < deadline:
                    await client.get("/health")
                    count += 1
            await asyncio.gather(*(worker() for _ in range(32)))
        return count / seconds

    return {"tool": "python httpx (client-bound: install wrk for the server's figure)",
            "requests_per_s": asyncio.run(run())}


def int8_comparison(model_dir: Path, max_tokens: int) -> dict:
    """fp32 vs ``quantize_int8`` on the same prompts: speed and agreement (top-1 and greedy outputs)."""
    import torch

    from core.model.loading import load_model
    from core.serving.quantize import quantize_int8

    fp32 = load_model(model_dir)
    int8 = load_model(model_dir)
    quantize_int8(int8.model)
    tokenizer = fp32.tokenizer
    prompts = PROMPTS * 2

    def run(model):
        start, outputs, top1 = time.perf_counter(), [], []
        with torch.inference_mode():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt").input_ids
                top1.append(model(input_ids=ids).logits[0].argmax(-1))
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_tokens, min_new_tokens=max_tokens)
                outputs.append(out[0, ids.shape[1]:])
        return time.perf_counter() - start, outputs, top1

    t_fp32, out_fp32, top_fp32 = run(fp32.model)
    t_int8, out_int8, top_int8 = run(int8.model)
    positions = sum(len(a) for a in top_fp32)
    top1_agree = sum(int((a == b).sum()) for a, b in zip(top_fp32, top_int8)) / positions
    exact = sum(bool(torch.equal(a, b)) for a, b in zip(out_fp32, out_int8)) / len(prompts)
    token_agree = sum(int((a == b).sum()) for a, b in zip(out_fp32, out_int8)) / sum(len(a) for a in out_fp32)
    return {"prompts": len(prompts), "fp32_s": t_fp32, "int8_s": t_int8, "speedup": t_fp32 / t_int8,
            "next_token_top1_agreement": top1_agree, "greedy_exact_match": exact,
            "greedy_token_agreement": token_agree,
            "note": "routed experts are fused 3-D parameters (not nn.Linear) and stay fp32, as do LoRA targets"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: deepseek-tiny)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--baseline-requests", type=int, default=8)
    parser.add_argument("--score-requests", type=int, default=256)
    parser.add_argument("--score-seconds", type=int, default=15, help="wrk duration per scoring run")
    parser.add_argument("--http-seconds", type=int, default=5)
    parser.add_argument("--skip-int8", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="dsv-bench-serve-"))
    model_dir, untrained = ensure_model(args.model, workdir)
    name = model_dir.name
    result: dict = {"model": str(model_dir), "untrained": untrained, "max_tokens": args.max_tokens,
                    "cpu_threads": 1, "machine": f"{os.cpu_count()} CPUs",
                    # Other work on a shared machine skews every figure; record how busy it was.
                    "load_average_at_start": os.getloadavg()[0]}

    print("[bench] baseline: sequential model.generate", file=sys.stderr)
    result["baseline_sequential_generate"] = baseline_generate(model_dir, args.baseline_requests, args.max_tokens)
    base_tps = result["baseline_sequential_generate"]["tokens_per_s"]

    server = Server(model_dir, "--max-batch", "32", "--max-wait-ms", "10", "--queue-size", "1024")
    try:
        server.wait_ready()
        asyncio.run(load(server.url, "/v1/completions", generation_bodies(name, 2, 4), 2))  # warm-up
        result["server_generation"] = {}
        for concurrency in (1, 8, 32):
            n = {1: args.baseline_requests, 8: 32, 32: 96}[concurrency]
            print(f"[bench] server generation at concurrency {concurrency}", file=sys.stderr)
            figures = asyncio.run(load(server.url, "/v1/completions",
                                       generation_bodies(name, n, args.max_tokens), concurrency))
            figures["vs_baseline_tokens_per_s"] = figures["tokens_per_s"] / base_tps
            result["server_generation"][f"c{concurrency}"] = figures
        print("[bench] scoring, batched", file=sys.stderr)
        result["score_batched"] = score_load(server.url, name, args.score_requests, args.score_seconds)
        print("[bench] HTTP capacity on /health", file=sys.stderr)
        result["http_health"] = http_capacity(server.url, args.http_seconds)
    finally:
        server.stop()

    unbatched = Server(model_dir, "--max-batch", "1", "--max-wait-ms", "0", "--queue-size", "1024")
    try:
        unbatched.wait_ready()
        print("[bench] scoring, unbatched (--max-batch 1)", file=sys.stderr)
        result["score_unbatched"] = score_load(unbatched.url, name, args.score_requests, args.score_seconds)
    finally:
        unbatched.stop()

    if not args.skip_int8:
        print("[bench] int8 vs fp32", file=sys.stderr)
        result["int8_vs_fp32"] = int8_comparison(model_dir, args.max_tokens)

    c32 = result["server_generation"]["c32"]
    result["load_average_at_end"] = os.getloadavg()[0]
    result["ratios"] = {
        "generation_c32_vs_sequential_generate": c32["tokens_per_s"] / base_tps,
        "generation_goal": 5.0,
        "score_batched_vs_unbatched_rps": (result["score_batched"]["requests_per_s"]
                                           / result["score_unbatched"]["requests_per_s"]),
        "score_batched_vs_unbatched_p99": (result["score_unbatched"]["p99_s"] / result["score_batched"]["p99_s"]),
        "score_goal": 5.0,
        "http_health_vs_goal_2000_rps": result["http_health"]["requests_per_s"] / 2000.0,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
