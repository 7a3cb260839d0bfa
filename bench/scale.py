"""How every stage of a cached training run grows with the number of cached tokens N, and what a full run needs.

Synthetic feature caches in the real on-disk format (the folder :class:`ultra.data.cache.FeatureCache`
opens: memory-mapped float16 ``x11.npy``, labels, five-crop geometry, manifest) are written at N
doubling from about 0.25M tokens. Their tokens are clustered like real ones: 27 class centres, a few
classes per image laid out in regions that the five overlapping crops of the image share, a
per-image offset, a common mean and noise, so kNN search and k-means do the work they do on real
tokens. Each stage then runs in its own process (so its peak memory is its own), with the settings
of ``configs/cocostuff27.yaml`` (graph, batch size, restarts):

- ``graph``: the global kNN graph, built and stored (``load_or_build_graphs``);
- ``views``: the view-correspondence operator, built and stored;
- ``operators``: opening both for training, the memory each training process holds;
- ``batch``: one random node batch (draw + operator rows + token gather; the draw is timed apart);
- ``step``: one SGD step of the linear head (loss, backward, AdamW) on a prepared batch;
- ``exact_pass`` / ``eigh``: the exact solver's D x D accumulation over every node, and its solve;
- ``kmeans``: cosine k-means of the head's outputs over all tokens (restarts on a sample, one full pass);
- ``eval``: segmenting a fixed number of 320 px images (backbone, head, centroids; independent of N).

Memory is the peak of the process's private resident memory (``RssAnon``) during the stage, above
what it held just before (imports, the opened cache); pages of memory-mapped files (cache, graphs)
are shared between processes and reported apart as "mapped". Time is the fastest of several runs of
the same work, since this machine's speed drifts by 20-30% over minutes: a stage runs the same number of
times at every size (the view operator and a node batch 7 times, an SGD step 5, the short fixed-size stages 3,
the long ones once), in a first sweep over the sizes in increasing order; the stages that grow with N (graph,
view operator, exact pass, k-means) run again in a second sweep, in decreasing order (so that the runs of a
size lie far apart in time). The graph build, the view operator and the exact pass are timed in segments (64
views of the build, a chunk of images of the operator, one batch of the pass: the same work in every run), and
their time is the sum of each segment's fastest run. Every file of the cache is read once before each stage
(this machine pages out memory-mapped file pages left idle for a minute), and the pages a stage still had
to read from disk are counted ("disk reads"). The fastest time of a fixed kernel (the graph build's
inner step) is printed before each graph build to show the machine's speed. Time ratios of stages under 50 ms and
memory ratios of stages under 64 MB are taken on those floors (timer and allocator noise). The draw of
a node batch is also timed at N = 63.5M (COCO-Stuff-27 train) without a cache, since it needs none.

Prints a table per N, the largest per-doubling ratio of each stage, a projection to COCO-Stuff-27 and
Cityscapes-27, and last: ``scale: max time ratio per doubling X (stage), max memory ratio Y (stage);
node batch at N=...: Z ms``.

    python bench/scale.py [--sizes 5] [--start-images 205] [--root DIR] [--keep] [--once]

The default run keeps every size's cache until it ends: about 9 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cocostuff27.yaml"
GRID, VIEWS, DIM, CLASSES, LAYER = (16, 16), 5, 384, 27, 11
STAGES = ("graph", "views", "operators", "batch", "step", "exact_pass", "eigh", "kmeans", "eval")
TIME_FLOOR_S, MEMORY_FLOOR_MB = 0.05, 64.0
COCO_NODES, COCO_IMAGES = 49_629 * VIEWS * 256, 49_629
CITYSCAPES_NODES, CITYSCAPES_IMAGES = 2_975 * VIEWS * 256, 2_975


# --- synthetic caches --------------------------------------------------------------------------------
def five_crop_geometry(height: int = 320, width: int = 427, fraction: float = 0.6) -> np.ndarray:
    """``[5, 5]`` boxes ``(x0, y0, x1, y1, flip)`` of the five-crop views, normalised to the image (as
    FiveCropViews)."""
    c = round(fraction * min(height, width))
    corners = [(0, 0), (0, width - c), (height - c, 0), (height - c, width - c), ((height - c) // 2, (width - c) // 2)]
    return np.array([[x / width, y / height, (x + c) / width, (y + c) / height, 0.0] for y, x in corners], np.float32)


def write_synthetic_cache(folder: Path, num_images: int, seed: int = 0, chunk: int = 64) -> Path:
    """A complete feature cache of ``num_images`` synthetic images (five 16 x 16 views each, layer-11 tokens)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    common = rng.standard_normal(DIM).astype(np.float32) * (1.5 / np.sqrt(DIM))
    frequency = 1.0 / np.arange(1, CLASSES + 1)
    frequency /= frequency.sum()
    geometry = five_crop_geometry()
    views = num_images * VIEWS
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tokens = np.lib.format.open_memmap(partial / f"x{LAYER}.npy", "w+", np.float16, (views, *GRID, DIM))
    labels = np.lib.format.open_memmap(partial / "labels.npy", "w+", np.uint8, (views, *GRID))
    np.save(partial / "geometry.npy", np.tile(geometry, (num_images, 1)))
    # token centres of every view in image coordinates: [5, 16, 16, 2]
    u = (np.arange(GRID[1]) + 0.5) / GRID[1]
    v = (np.arange(GRID[0]) + 0.5) / GRID[0]
    px = geometry[:, 0, None, None] + u[None, None, :] * (geometry[:, 2] - geometry[:, 0])[:, None, None]
    py = geometry[:, 1, None, None] + v[None, :, None] * (geometry[:, 3] - geometry[:, 1])[:, None, None]
    points = np.stack(np.broadcast_arrays(px, py), -1)
    for start in range(0, num_images, chunk):
        count = min(chunk, num_images - start)
        g = np.random.default_rng([seed, start])
        regions = g.integers(3, 6)
        seeds = g.random((count, regions, 2))  # region centres per image
        classes = np.stack([g.choice(CLASSES, regions, replace=False, p=frequency) for _ in range(count)])
        dist = ((points[None, :, :, :, None, :] - seeds[:, None, None, None]) ** 2).sum(-1)  # [c, 5, 16, 16, regions]
        region = dist.argmin(-1)
        label = np.take_along_axis(classes[:, None, None, None, :], region[..., None], -1)[..., 0]
        offset = g.standard_normal((count, 1, 1, 1, DIM), dtype=np.float32) * (0.4 / np.sqrt(DIM))
        noise = g.standard_normal((count, VIEWS, *GRID, DIM), dtype=np.float32) * (0.8 / np.sqrt(DIM))
        x = centres[label] + offset + common + noise
        rows = slice(start * VIEWS, (start + count) * VIEWS)
        tokens[rows] = x.reshape(-1, *GRID, DIM).astype(np.float16)
        labels[rows] = label.reshape(-1, *GRID).astype(np.uint8)
    tokens.flush()
    labels.flush()
    del tokens, labels
    meta = {
        "backbone": "synthetic",
        "views": "five-crop 224 px",
        "dataset": f"synthetic-{num_images}-{seed}",
        "num_classes": CLASSES,
        "tokens": [["x", LAYER]],
        "grid": list(GRID),
        "views_per_image": VIEWS,
        "num_images": num_images,
        "dims": {f"x{LAYER}": DIM},
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(partial, folder)
    os.sync()  # written back now, not while the stages are timed
    return folder


# --- measuring one stage (in its own process) ------------------------------------------------------------
class MemoryPeak:
    """Samples this process's private (anonymous) and file-backed resident memory every few ms."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.stop = interval, threading.Event()
        self.base = self.read()
        self.peak = dict(self.base)
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, float]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) / 1024  # MB
        return fields

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            for name, value in self.read().items():
                self.peak[name] = max(self.peak[name], value)

    def __enter__(self) -> MemoryPeak:
        self.base = self.read()
        self.peak = dict(self.base)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        for name, value in self.read().items():
            self.peak[name] = max(self.peak[name], value)

    @property
    def private_mb(self) -> float:
        return self.peak["RssAnon"] - self.base["RssAnon"]

    @property
    def mapped_mb(self) -> float:
        return self.peak["RssFile"] - self.base["RssFile"]


def _settings() -> dict:
    from dataclasses import asdict

    import yaml

    from ultra.data.transforms import EvalConfig
    from ultra.graphs.knn import KnnConfig
    from ultra.head.batches import BatchConfig

    data = yaml.safe_load(CONFIG.read_text())
    config = data["data"]
    return {
        "knn": asdict(KnnConfig(**config.get("knn", {}))),
        "batch_nodes": BatchConfig(**config.get("batches", {})).nodes,
        "out_dim": data["model"]["out_dim"],
        "restarts": data["readout"]["restarts"],
        "eval_crop": EvalConfig(**data.get("evaluation", {})).crop,
    }


def _operators(cache, settings, view: bool = True, on_view=None):
    from ultra.graphs.knn import GraphSpec, KnnConfig
    from ultra.graphs.store import load_or_build_graphs

    return load_or_build_graphs(cache, [GraphSpec("xx", LAYER)], KnnConfig(**settings["knn"]), view, on_view=on_view)


def _head(out_dim: int):
    import torch

    from ultra.head.projection import ProjectionHead

    torch.manual_seed(0)
    return ProjectionHead(DIM, out_dim, "linear").eval()


RUNS = {
    "graph": 1,
    "views": 7,
    "operators": 3,
    "batch": 7,
    "step": 5,
    "exact_pass": 1,
    "eigh": 3,
    "kmeans": 1,
    "eval": 3,
}
"""Runs of each stage in its process, in each of the two sweeps: the same at every size, so that the fastest of them
is as optimistic at every N (more runs of the small sizes alone would bias the ratios up)."""

SEGMENT_VIEWS = 64
"""The graph build's time is taken in segments of this many views (and one for what follows the last view)."""

RESWEPT = ("graph", "views", "exact", "kmeans")
"""The runners of the stages that grow with N, run again in the second sweep (the others' cost is bounded)."""


def measure(fn, marked: bool = False) -> dict:
    """Seconds, peak memory (private and mapped, MB above the level at the start) and major page faults (pages
    read from disk) of one call of ``fn``. With ``marked``, ``fn`` returns a list of ``time.perf_counter()`` marks and
    the times between them are kept too ("segments": from the start to the first mark, ..., the last one to the end)."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    with MemoryPeak() as memory:
        start = time.perf_counter()
        marks = fn()
        end = time.perf_counter()
    result = {
        "seconds": end - start,
        "private_mb": memory.private_mb,
        "mapped_mb": memory.mapped_mb,
        "runs": 1,
        "faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults,
    }
    if marked:
        result["segments"] = np.diff([start, *marks, end]).tolist()
    return result


def combine(runs: list[dict]) -> dict:
    """Several runs of one stage: the fastest (its time and disk reads), the largest memory peaks, the number of runs.
    Runs timed in the same segments (the same work in each: deterministic builds and passes) take the fastest
    run of each segment, summed: a slow minute of one run then costs only where every run was slow. The
    reference-kernel readings of the runs are all kept."""
    out = dict(min(runs, key=lambda r: r["seconds"]))
    out["private_mb"] = max(r["private_mb"] for r in runs)
    out["mapped_mb"] = max(r["mapped_mb"] for r in runs)
    out["runs"] = sum(r["runs"] for r in runs)
    segments = [r.get("segments") for r in runs]
    if all(segments) and len({len(s) for s in segments}) == 1:
        out["segments"] = [min(times) for times in zip(*segments)]
        out["seconds"] = sum(out["segments"])
    if all("reference_ms" in r for r in runs):
        out["reference_ms"] = [ms for r in runs for ms in r["reference_ms"]]
    return out


def repeat(fn, runs: int, marked: bool = False) -> dict:
    """:func:`measure` ``fn`` ``runs`` times; the runs combined by :func:`combine`."""
    return combine([measure(fn, marked) for _ in range(runs)])


def marks_every(every: int = 1) -> tuple[list[float], Callable[[int], None]]:
    """A list of ``time.perf_counter()`` marks and the progress callback that appends one every ``every`` calls (the
    graph builds' ``on_view`` / ``on_chunk`` hooks)."""
    marks, done = [], [0]

    def count(_index: int) -> None:
        done[0] += 1
        if done[0] % every == 0:
            marks.append(time.perf_counter())

    return marks, count


def reference_kernel_ms(repeats: int = 30) -> float:
    """Fastest time of the graph build's inner step on fixed data (a view's 256 queries against 33 views' keys,
    cosine and top-17): the machine's speed at the time, printed beside the graph's times."""
    import torch

    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(256, DIM, generator=g), torch.randn(33 * 256, DIM, generator=g)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (queries @ keys.T).topk(17, dim=1)
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def _graph_stage(cache, settings) -> dict:
    for stored in (cache.path / "graphs").glob("xx*"):  # measure the build, not a load of an earlier one
        stored.unlink()
    reference = reference_kernel_ms()

    def build() -> list[float]:
        marks, on_view = marks_every(SEGMENT_VIEWS)
        _operators(cache, settings, view=False, on_view=on_view)
        return marks

    result = measure(build, marked=True)
    result["candidates_s"] = _candidates_time(cache.num_views, settings["knn"]["candidate_images"])
    result["reference_ms"] = [reference]
    return {"graph": result}


def _views_stage(cache, settings) -> dict:
    """The view operator, built chunk by chunk of images (timed in those segments) and stored."""
    from ultra.graphs.store import build_view_operator

    path = cache.path / "graphs" / "views.safetensors"

    def build() -> list[float]:
        marks, on_chunk = marks_every()
        build_view_operator(cache.geometry, cache.views_per_image, cache.grid, on_chunk=on_chunk).save(path)
        return marks

    return {"views": repeat(build, RUNS["views"], marked=True)}


def _operators_stage(cache, settings) -> dict:
    result = repeat(lambda: _operators(cache, settings), RUNS["operators"])
    operators = _operators(cache, settings)
    result["nnz_per_node"] = operators.graphs[0].nnz / cache.num_nodes
    result["graph_bytes"] = sum(p.stat().st_size for p in (cache.path / "graphs").glob("xx*.safetensors"))
    return {"operators": result}


def _batches(cache, settings, **kwargs):
    from ultra.head.batches import NodeBatches

    return NodeBatches(cache, [("x", LAYER)], _operators(cache, settings), settings["batch_nodes"], **kwargs)


def _batch_stage(cache, settings) -> dict:
    batches = _batches(cache, settings, steps_per_epoch=1_000_000, seed=0)
    counter = iter(range(1_000_000))
    result = repeat(lambda: batches[next(counter)], RUNS["batch"])
    result["draw_s"] = repeat(lambda: batches.nodes(next(counter)), RUNS["batch"])["seconds"]
    return {"batch": result}


def _step_stage(cache, settings) -> dict:
    import torch

    from ultra.head.loss import head_loss

    batches = _batches(cache, settings, steps_per_epoch=1_000_000, seed=0)
    head = _head(settings["out_dim"]).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    prepared = [batches[i] for i in range(4)]
    counter = iter(range(1_000_000))

    def step() -> None:
        batch = prepared[next(counter) % len(prepared)]
        loss = head_loss(head(batch["features"]), batch, [1.0], 1.0, 0.1)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {"step": repeat(step, RUNS["step"])}


def _exact_stage(cache, settings) -> dict:
    """The exact solver's accumulation pass over every node (timed batch by batch), and its eigen-solve (one process
    for both)."""
    from ultra.head.exact import QuadraticForms

    sweep = _batches(cache, settings, steps_per_epoch=1, order="sweep")
    forms = []

    def accumulate() -> list[float]:
        forms.append(QuadraticForms(DIM, [1.0]))
        marks = []
        for i in range(len(sweep)):
            forms[-1].update(sweep[i])
            marks.append(time.perf_counter())
        return marks[:-1]

    exact_pass = repeat(accumulate, RUNS["exact_pass"], marked=True)
    return {
        "exact_pass": exact_pass,
        "eigh": repeat(lambda: forms[-1].solve(settings["out_dim"], view_weight=0.1), RUNS["eigh"]),
    }


def _kmeans_stage(cache, settings) -> dict:
    from ultra.readout.fit import CachedRows, fit_centroids

    rows = CachedRows(cache, [("x", LAYER)], _head(settings["out_dim"]))
    return {
        "kmeans": repeat(lambda: fit_centroids(rows, CLASSES, seed=0, restarts=settings["restarts"]), RUNS["kmeans"])
    }


EVAL_IMAGES = 8


def _eval_stage(cache, settings) -> dict:
    """Segment EVAL_IMAGES fixed images (DINOv2-S/14 architecture with random weights: the cost, not the quality)."""
    import torch
    import torch.nn.functional as F

    from ultra.backbone.vit import FrozenViT
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    backbone = FrozenViT("vit_small_patch14_dinov2", weights="random")
    readout = ClusterReadout(
        [("x", LAYER)], F.normalize(torch.randn(CLASSES, settings["out_dim"]), dim=-1), _head(settings["out_dim"])
    )
    segmenter = Segmenter(backbone, {"head": readout}, [str(i) for i in range(CLASSES)])
    size = settings["eval_crop"]
    images = torch.rand(EVAL_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def segment() -> None:
        for i in range(0, EVAL_IMAGES, 4):
            segmenter.pixel_scores(images[i : i + 4], (size, size))

    return {"eval": repeat(segment, RUNS["eval"])}


RUNNERS = {
    "graph": _graph_stage,
    "views": _views_stage,
    "operators": _operators_stage,
    "batch": _batch_stage,
    "step": _step_stage,
    "exact": _exact_stage,
    "kmeans": _kmeans_stage,
    "eval": _eval_stage,
}
"""One process each, in this order (each needs the operators its predecessors stored); ``exact`` measures two stages."""

UNCACHED = ("eval",)
"""Runners that do not read the cache (no read-through before them)."""


def read_through(folder: Path, block: int = 1 << 24) -> None:
    """Read every file under ``folder`` once, so that a stage starts with them in the page cache (this machine
    pages out memory-mapped file pages left idle for a minute, and a stage should not time the disk)."""
    buffer = bytearray(block)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def run_stage(runner: str, cache_path: Path) -> dict:
    """The measurements of one runner of :data:`RUNNERS` on the cache at ``cache_path``: stage -> result."""
    from ultra.data.cache import FeatureCache

    if runner not in UNCACHED:
        read_through(cache_path)
    return RUNNERS[runner](FeatureCache(cache_path), _settings())


def _candidates_time(views: int, count: int) -> float:
    """Seconds of the candidate-image search of the graph build (part of the graph stage) for ``views`` views."""
    import torch

    from ultra.graphs.knn import nearest_images

    means = torch.randn(views, DIM, generator=torch.Generator().manual_seed(0))
    groups = torch.arange(views) // VIEWS
    start = time.perf_counter()
    nearest_images(means, min(count, views - VIEWS), groups)
    return time.perf_counter() - start


def draw_time_at(nodes: int, batch_nodes: int, repeats: int = 20) -> float:
    """Fastest of ``repeats`` draws of one random node batch among ``nodes`` (the draw needs no cache), in seconds."""
    import torch

    from ultra.head.batches import distinct_uniform

    counter = iter(range(1_000_000))
    return repeat(lambda: distinct_uniform(nodes, batch_nodes, torch.Generator().manual_seed(next(counter))), repeats)[
        "seconds"
    ]


# --- the driver ------------------------------------------------------------------------------------------
def _child(runner: str, cache: Path, once: bool) -> dict:
    """The results of ``runner`` on ``cache``, measured in a new process (its memory peaks are its own)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, __file__, "--stage", runner, "--cache", str(cache), *(["--once"] if once else [])]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"stage {runner} on {cache} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _record(row: dict, results: dict, sweep: int, started: float) -> None:
    """Merge a runner's results into the row of its size (fastest time, largest memory), printing progress."""
    for stage, result in results.items():
        if stage in row:
            result = combine([row[stage], result])
        row[stage] = result
        print(
            f"[{_fmt_time(time.perf_counter() - started)}] sweep {sweep}, N={row['nodes']:,}: {stage} "
            f"{_fmt_time(result['seconds'])} (runs: {result['runs']})",
            flush=True,
        )


def _ratios(rows: list[dict], field: str, floor: float) -> dict[str, float]:
    """The largest ratio, over consecutive sizes, of each stage's ``field`` (values below ``floor`` count as
    ``floor``)."""
    out = {}
    for stage in STAGES:
        values = [max(r[stage][field], floor) for r in rows]
        out[stage] = max(b / a for a, b in zip(values, values[1:]))
    return out


def _fmt_time(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt_mb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


PARALLEL = {
    "graph": True,
    "views": False,
    "operators": False,
    "batch": True,
    "step": True,
    "exact_pass": True,
    "eigh": True,
    "kmeans": True,
    "eval": True,
}
"""Whether a stage spreads over the cores (torch's threads, or the data loader's workers for node batches)."""


BOUNDED = ("batch", "step", "eigh", "eval")
"""Stages whose cost does not grow with N (a batch touches at most batch_nodes x degree tokens; D x D; fixed images)."""


def _at(rows: list[dict], stage: str, field: str, target: int) -> float:
    """``field`` of ``stage`` at ``target`` nodes: its value at the largest size for the bounded stages, otherwise
    on the line through the two largest sizes (slope >= 0)."""
    (a, b) = rows[-2], rows[-1]
    if stage in BOUNDED:
        return max(b[stage][field], 0.0)
    slope = max(b[stage][field] - a[stage][field], 0.0) / (b["nodes"] - a["nodes"])
    return max(b[stage][field], 0.0) + slope * (target - b["nodes"])


def projection(rows: list[dict]) -> list[str]:
    """Per-stage time and memory at Cityscapes-27 / COCO-Stuff-27 scale, extrapolated from the two largest sizes."""
    cores = os.cpu_count() or 1
    last = rows[-1]
    views_last = last["images"] * VIEWS
    lines = [
        "",
        f"projection: each growing stage's time and private memory on the line through N={rows[-2]['nodes']:,} and "
        f"N={last['nodes']:,} (the bounded stages {', '.join(BOUNDED)} at their N={last['nodes']:,} figures); "
        "the graph's candidate-image search (quadratic in images) apart, scaled by "
        f"(views / {views_last:,})^2; '16 cores' divides the time of stages that use every core by 16/{cores} "
        f"(an assumption, not a measurement; a GPU is faster still on graph, step, exact_pass, kmeans and eval)",
        f"{'stage':<12}{'Cityscapes-27':>14}{'16 cores':>10}{'memory':>10}"
        f"{'COCO-Stuff-27':>15}{'16 cores':>10}{'memory':>10}",
    ]
    for stage in STAGES:
        cells = []
        for nodes, images in ((CITYSCAPES_NODES, CITYSCAPES_IMAGES), (COCO_NODES, COCO_IMAGES)):
            seconds = _at(rows, stage, "seconds", nodes)
            if stage == "graph":
                search = [dict(r, graph={"seconds": r["graph"]["seconds"] - r["graph"]["candidates_s"]}) for r in rows]
                seconds = (
                    _at(search, "graph", "seconds", nodes)
                    + last["graph"]["candidates_s"] * (images * VIEWS / views_last) ** 2
                )
            fast = seconds / (16 / cores) if PARALLEL[stage] else seconds
            cells += [_fmt_time(seconds), _fmt_time(fast), _fmt_mb(_at(rows, stage, "private_mb", nodes))]
        lines.append(f"{stage:<12}{cells[0]:>14}{cells[1]:>10}{cells[2]:>10}{cells[3]:>15}{cells[4]:>10}{cells[5]:>10}")
    nnz, graph_bytes = last["operators"]["nnz_per_node"], last["operators"]["graph_bytes"] / last["nodes"]
    for name, nodes in (("Cityscapes-27", CITYSCAPES_NODES), ("COCO-Stuff-27", COCO_NODES)):
        lines.append(
            f"disk {name} ({nodes:,} tokens): feature cache {nodes * DIM * 2 / 1e9:.1f} GB per token kind and "
            f"layer (D={DIM}, float16), graph {graph_bytes * nodes / 1e9:.1f} GB ({nnz:.1f} entries per node)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, default=5, help="number of doublings of N measured (default 5: 0.26M..4.2M)"
    )
    parser.add_argument(
        "--start-images", type=int, default=205, help="images of the smallest cache (x1,280 tokens each)"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="where the synthetic caches go (default: a temporary folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the synthetic caches")
    parser.add_argument(
        "--once",
        action="store_true",
        help="each stage run once, in one sweep: a quick look (the test suite's smoke run), not the ratios to report",
    )
    parser.add_argument("--stage", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        RUNS.update(dict.fromkeys(RUNS, 1))
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.cache)))
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="ultra-scale-"))
    settings = _settings()
    print(
        f"settings of {CONFIG.name}: knn {settings['knn']}, batch_nodes {settings['batch_nodes']}, "
        f"out_dim {settings['out_dim']}, k-means restarts {settings['restarts']}",
        flush=True,
    )
    rows, folders, started = [], [], time.perf_counter()
    try:
        for i in range(args.sizes):  # sweep 1: every stage, sizes in increasing order
            images = args.start_images << i
            start = time.perf_counter()
            folders.append(write_synthetic_cache(root / f"images-{images}", images))
            rows.append(
                {"nodes": images * VIEWS * GRID[0] * GRID[1], "images": images, "write_s": time.perf_counter() - start}
            )
            for runner in RUNNERS:
                _record(rows[-1], _child(runner, folders[-1], args.once), 1, started)
        for row, folder in reversed(list(zip(rows, folders)) if not args.once else []):  # sweep 2, sizes reversed
            for runner in RESWEPT:
                _record(row, _child(runner, folder, args.once), 2, started)
    finally:
        if not args.keep:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            if args.root is None:
                shutil.rmtree(root, ignore_errors=True)
    for row in rows:
        print(
            f"\nN = {row['nodes']:,} tokens ({row['images']:,} images x {VIEWS} views; synthetic cache written in "
            f"{row['write_s']:.0f} s)"
        )
        print(f"  {'stage':<12}{'time':>10}{'private':>10}{'mapped':>10}{'runs':>6}{'disk reads':>12}")
        for stage in STAGES:
            r = row[stage]
            print(
                f"  {stage:<12}{_fmt_time(r['seconds']):>10}{_fmt_mb(max(r['private_mb'], 0)):>10}"
                f"{_fmt_mb(max(r['mapped_mb'], 0)):>10}{r['runs']:>6}{r['faults']:>12,}"
            )
        graph = row["graph"]
        print(
            f"  node batch draw {row['batch']['draw_s'] * 1000:.1f} ms; graph {row['operators']['nnz_per_node']:.1f} "
            f"entries per node, its candidate-image search {graph['candidates_s']:.2f} s, the reference kernel "
            f"before each graph build {' / '.join(f'{ms:.1f}' for ms in graph['reference_ms'])} ms",
            flush=True,
        )
    if len(rows) < 2:
        print("scale: one size measured, no ratio")
        return
    time_ratio = _ratios(rows, "seconds", TIME_FLOOR_S)
    memory_ratio = _ratios(rows, "private_mb", MEMORY_FLOOR_MB)
    print(
        f"\nlargest ratio per doubling of N (time floor {TIME_FLOOR_S * 1000:.0f} ms, "
        f"memory floor {MEMORY_FLOOR_MB:.0f} MB):"
    )
    for stage in STAGES:
        print(f"  {stage:<12} time {time_ratio[stage]:.2f}x   memory {memory_ratio[stage]:.2f}x")
    for line in projection(rows):
        print(line)
    draw = draw_time_at(COCO_NODES, settings["batch_nodes"])
    worst_time = max(time_ratio, key=time_ratio.get)
    worst_memory = max(memory_ratio, key=memory_ratio.get)
    print(
        f"scale: max time ratio per doubling {time_ratio[worst_time]:.2f} ({worst_time}), max memory ratio "
        f"{memory_ratio[worst_memory]:.2f} ({worst_memory}); node batch at N={COCO_NODES:,}: {draw * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
