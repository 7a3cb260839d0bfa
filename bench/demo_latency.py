"""What the demo page adds to a segmentation: one photo through the page vs ``Segmenter.segment`` on it, in one run.

``ultra-demo`` runs as its own process, as a user starts it. The page's cost is measured twice:

* as the browser pays it: the requests the page's script makes (upload the photo, join the queue, read the
  event stream until the result, fetch the overlay it shows), sent with httpx;
* as a Python client pays it: ``gradio_client``'s ``predict`` (which also downloads the label PNG, and adds
  its own threads and polling).

The bare cost is ``Segmenter.segment(path)`` (reading the photo and segmenting it). Each runs ``--repeats``
times after a warm-up, one after the other, on the same photo and checkpoint; the medians and their ratios
to the bare cost are printed.

    python bench/demo_latency.py --checkpoint runs/camvid/model.safetensors [--photo PHOTO] [--repeats 10]

Without ``--photo`` a 480x360 synthetic scene is used (CamVid's size).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from gradio_client import Client, handle_file

from ultra.data.synthetic import SyntheticScenes
from ultra.pictures import save_image
from ultra.readout.checkpoint import load


def timed(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, ``repeats`` times after one warm-up, the calls alternating (so a machine that slows
    down or speeds up midway weighs on all of them alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def segment_event(http: httpx.Client) -> int:
    """The index of the page's Segment event (the page's script reads the config once, when it loads)."""
    endpoints = http.get("config").json()["dependencies"]
    return next(i for i, event in enumerate(endpoints) if event.get("api_name") == "segment")


def segment_as_the_page_does(http: httpx.Client, fn_index: int, photo: Path) -> None:
    """Upload ``photo``, run the Segment event through the queue and fetch the overlay, as the page's script does."""
    with open(photo, "rb") as file:
        uploaded = http.post("gradio_api/upload", files={"files": file}).json()[0]
    session = uuid.uuid4().hex
    photo_data = {"path": uploaded, "orig_name": photo.name, "meta": {"_type": "gradio.FileData"}}
    http.post(
        "gradio_api/queue/join",
        json={
            "data": [photo_data, "head", False, False],
            "fn_index": fn_index,
            "session_hash": session,
            "event_data": None,
            "trigger_id": None,
        },
    )
    with http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                break
    overlay = message["output"]["data"][0]
    if overlay is None:
        raise SystemExit(f"the page did not segment the photo: {message['output']['data'][-1]}")
    http.get(overlay["url"]).raise_for_status()


def synthetic_photo(folder: Path) -> Path:
    """A 480x360 scene: the middle rows of a 480 px synthetic one."""
    scene = SyntheticScenes(num_images=1, size=480, num_classes=6, seed=5).load(0)[0]
    return save_image(scene[60:420], folder / "scene_480x360.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--photo", type=Path)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = args.photo or synthetic_photo(Path(tmp))
        segmenter = load(args.checkpoint)
        height, width = segmenter.segment(photo).shape
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ultra-demo"),
                "--checkpoint",
                str(args.checkpoint),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            url = next(line.split()[2] for line in server.stdout if line.startswith("ultra-demo: serving"))
            client = Client(url, verbose=False)
            with httpx.Client(base_url=url) as http:
                fn_index = segment_event(http)
                seconds = timed(
                    {
                        "Segmenter.segment": lambda: segmenter.segment(photo),
                        "through the page (browser requests)": lambda: segment_as_the_page_does(http, fn_index, photo),
                        "through gradio_client": lambda: client.predict(
                            handle_file(str(photo)), "head", False, False, api_name="/segment"
                        ),
                    },
                    args.repeats,
                )
        finally:
            server.terminate()
            server.wait(30)
    print(
        f"photo {photo.name} ({width}x{height} px), checkpoint {args.checkpoint}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}, the three alternating"
    )
    bare = statistics.median(seconds["Segmenter.segment"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:<36}{median:6.3f} s   {median / bare:5.2f}x Segmenter.segment")


if __name__ == "__main__":
    main()
