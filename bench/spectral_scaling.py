"""Scaling of the dataset-level spectral solve with the number of tokens, against the exact eigh reference.

For N, 2N, 4N, 8N tokens (images of clustered synthetic tokens), each size in a fresh process:
kNN graph construction (inter-image neighbours among each image's nearest images), time per solver
epoch (minibatches of images over one shared table) and peak memory above the process baseline;
then the dense ``torch.linalg.eigh`` reference while it fits. Prints growth factors per doubling.

    python bench/spectral_scaling.py [--images 32] [--tokens 256] [--doublings 3]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(images: int, tokens: int, method: str) -> dict:
    import torch

    from ultra.analysis.solver import SolverConfig, exact_eigenvectors, solve
    from ultra.graphs.knn import KnnConfig, knn_graph

    torch.set_num_threads(max(1, torch.get_num_threads()))
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(12, 64, generator=g) * 2
    data = centers[torch.randint(0, 12, (images, tokens), generator=g)] + torch.randn(images, tokens, 64, generator=g)
    base = _rss_mb()
    t0 = time.perf_counter()
    graph = knn_graph(data, config=KnnConfig(k_intra=8, k_inter=8, candidate_images=8, k_any=0))
    build = time.perf_counter() - t0
    out = {"nodes": images * tokens, "nnz": graph.nnz, "graph_s": build}
    if method == "solver":
        config = dict(num_vectors=32, lr=0.02, batch_images=8)

        def timed(epochs: int) -> float:
            start = time.perf_counter()
            solve([graph], None, SolverConfig(epochs=epochs, **config), nodes_per_image=tokens)
            return time.perf_counter() - start

        timed(1)  # warm-up
        out["epoch_s"] = (timed(9) - timed(1)) / 8  # set-up and the final Rayleigh-Ritz cancel out
    else:
        t1 = time.perf_counter()
        exact_eigenvectors([graph], None, 32)
        out["eigh_s"] = time.perf_counter() - t1
    out["peak_mb"] = _rss_mb() - base
    return out


def _run(images: int, tokens: int, method: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(images), str(tokens)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(images: int = 32, tokens: int = 256, doublings: int = 3, eigh_limit_s: float = 120.0) -> None:
    rows = []
    eigh_allowed = True
    for i in range(doublings + 1):
        n_images = images * 2**i
        row = _run(n_images, tokens, "solver")
        if eigh_allowed:
            row.update({k: v for k, v in _run(n_images, tokens, "eigh").items() if k in ("eigh_s",)})
            eigh_allowed = row["eigh_s"] * 8 < eigh_limit_s  # eigh is cubic: the next size costs ~8x
        rows.append(row)
        print(
            f"N={row['nodes']:>7}  graph {row['graph_s']:6.2f} s  epoch {row['epoch_s']:6.3f} s  "
            f"peak {row['peak_mb']:7.1f} MB  eigh {row.get('eigh_s', float('nan')):7.2f} s",
            flush=True,
        )
    print("\ngrowth per doubling of N (goal <= 2.2x):")
    print(f"{'N':>7} {'graph':>7} {'epoch':>7} {'memory':>7} {'eigh':>7}")
    for prev, cur in zip(rows, rows[1:]):
        ratio = lambda key: cur[key] / prev[key] if key in cur and key in prev and prev[key] > 0 else float("nan")
        print(
            f"{cur['nodes']:>7} {ratio('graph_s'):>6.2f}x {ratio('epoch_s'):>6.2f}x {ratio('peak_mb'):>6.2f}x "
            f"{ratio('eigh_s'):>6.2f}x"
        )
    crossover = [r["nodes"] for r in rows if "eigh_s" in r and r["eigh_s"] > r["epoch_s"] * 300]
    if crossover:
        print(f"\nexact eigh costs more than a 300-epoch solve from N = {crossover[0]} tokens")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(int(sys.argv[3]), int(sys.argv[4]), sys.argv[2])))
    else:
        from jsonargparse import auto_cli

        auto_cli(main)
