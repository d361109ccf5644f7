"""What these CPU cores can compute: matmul GFLOP/s in fp32 and bf16, at the student's own shapes.

The training-throughput target of issue 11 is "at least half of the compute limit". This bench measures
that limit on the machine it runs on: torch matmuls at the shapes a SmolLM2-135M training step multiplies
(a packed batch of 4 x 1024 tokens through the 576-wide attention and 1536-wide MLP projections, forward
and the two backward products) and one large square matmul, in fp32 and bf16, for each thread count.
Run it on an idle machine; the load average is printed with the result.

    python bench/cpu_peak.py [--threads 1,2] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

TOKENS = 4 * 1024  # one packed step of `train`'s defaults
HIDDEN, MLP = 576, 1536  # SmolLM2-135M
SHAPES = {
    "square 2048": (2048, 2048, 2048),
    "qkvo forward": (TOKENS, HIDDEN, HIDDEN),
    "mlp up forward": (TOKENS, HIDDEN, MLP),
    "mlp down forward": (TOKENS, MLP, HIDDEN),
    "mlp weight grad": (MLP, TOKENS, HIDDEN),
}


def gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """Sustained GFLOP/s of an (m x k) @ (k x n) matmul, repeated for about `seconds`."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b, out=out)
        calls += 1
    return 2 * m * k * n * calls / (time.perf_counter() - start) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma-separated torch thread counts")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    opts = ap.parse_args()
    load_before = os.getloadavg()
    rows = []
    for threads in (int(t) for t in opts.threads.split(",")):
        torch.set_num_threads(threads)
        for name, (m, k, n) in SHAPES.items():
            for dtype in (torch.float32, torch.bfloat16):
                row = {"threads": threads, "shape": name, "mkn": [m, k, n], "dtype": str(dtype).split(".")[-1],
                       "gflops": round(gflops(m, k, n, dtype, opts.seconds), 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(json.dumps({"rows": len(rows), "platform": platform.platform(), "processor": platform.processor(),
                      "cores": os.cpu_count(), "torch": torch.__version__, "load_avg_before": load_before,
                      "load_avg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))


if __name__ == "__main__":
    main()
