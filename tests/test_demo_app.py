"""The demo page through its API (gradio_client against the app served on a free port) and its tasks."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest
from helpers import free_port, save_png
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs the 'demo' extra")
from gradio_client import Client, handle_file  # noqa: E402

from ultra.cli import demo as demo_cli  # noqa: E402

NO_CHECKPOINT = ["--backbone", "vit_tiny_patch16_224", "--weights", "random", "--size", "64"]


@pytest.fixture(scope="module")
def outgoing():
    """gradio's telemetry (version check, usage reports), recorded instead of sent."""
    import gradio.analytics as analytics

    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analytics, "_do_analytics_request", lambda topic, data: calls.append(topic))
        patch.setattr(analytics, "version_check", lambda: calls.append("version_check"))
        yield calls


@pytest.fixture(scope="module")
def served(tiny_checkpoint, outgoing):
    """The page on the tiny checkpoint, and a client of it."""
    app, url = demo_cli.serve(
        ["--checkpoint", str(tiny_checkpoint), "--port", str(free_port()), "--size", "64"], block=False
    )
    yield url, Client(url, verbose=False)
    app.close()


@pytest.fixture
def photo(tmp_path):
    """A 70x50 photo: a red square on a blue ground."""
    picture = np.zeros((50, 70, 3), np.uint8)
    picture[:] = (20, 40, 200)
    picture[10:40, 30:60] = (220, 30, 30)
    return save_png(tmp_path / "photo.png", picture)


def read(path) -> np.ndarray:
    return np.array(Image.open(path))


def test_segment_returns_a_label_map_of_the_photo_size_with_a_legend(served, photo):
    _, client = served
    overlay, legend, labels, status = client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
    labels = read(labels)
    assert labels.shape == (50, 70) and set(np.unique(labels)) <= {0, 1, 2}
    assert read(overlay).shape == (50, 70, 3) and not np.array_equal(read(overlay), read(photo))
    names = {0: "sky", 1: "road", 2: "car"}
    for label in np.unique(labels):  # every label present is in the legend by its class name and share
        share = 100 * (labels == label).mean()
        assert f'data-label="{label}"' in legend and f"{names[label]} ({share:.1f}%)" in legend
    assert "70x50 px segmented by the **head** readout in" in status


def test_a_readout_without_matching_names_its_clusters(served, photo):
    _, client = served
    _, legend, labels, _ = client.predict(handle_file(str(photo)), "raw", False, True, api_name="/segment")
    for label in np.unique(read(labels)):
        assert f"cluster {label} (" in legend


@pytest.mark.parametrize("method", ["similarity", "clusters", "relevance"])
def test_select_returns_a_mask_that_holds_the_clicked_pixel(served, photo, tiny_checkpoint, method):
    from ultra import load
    from ultra.analysis.segments import select, select_cluster
    from ultra.data.transforms import image_to_tensor
    from ultra.demo.app import SELECT_LABELS

    _, client = served
    overlay, mask, picture, status = client.predict(
        handle_file(str(photo)), "45,25", 2, True, 0.5, method, api_name="/select"
    )
    mask = read(mask)
    assert mask.shape == (50, 70) and mask[25, 45] == 255 and set(np.unique(mask)) <= {0, 255}
    assert read(overlay).shape == (50, 70, 3) and read(picture).shape == (50, 70, 3)
    assert f"by the {SELECT_LABELS[method]}: {100 * (mask == 255).mean():.1f}% of the photo" in status
    segmenter, image = load(tiny_checkpoint), image_to_tensor(read(photo))
    if method == "clusters":  # the page's mask is the library's, at the page's size
        expected, _ = select_cluster(segmenter, image, (45, 25), size=64)
        assert np.array_equal(mask == 255, expected.numpy())
    if method == "similarity":  # on the checkpoint's backbone, at the block the page was given
        expected, _ = select(segmenter.backbone, image, (45, 25), layer=2, size=64)
        assert np.array_equal(mask == 255, expected.numpy())
    *_, status = client.predict(handle_file(str(photo)), "45,25", 2, False, 0.9, method, api_name="/select")
    assert "object at (45, 25)" in status


def test_look_inside_shows_each_graph_and_the_clicked_token(served, photo):
    _, client = served
    kq, vv, feat, relevance, status = client.predict(handle_file(str(photo)), 1, "10,20", api_name="/look_inside")
    pictures = [read(p) for p in (kq, vv, feat)]
    assert all(p.shape == (50, 70, 3) and p.std() > 0 for p in pictures)
    assert not np.array_equal(pictures[0], pictures[1])  # where and what are different graphs
    assert read(relevance).shape == (50, 70, 3) and "block 1" in status
    *_, relevance, status = client.predict(handle_file(str(photo)), 1, "", api_name="/look_inside")
    assert relevance is None and "click on the photo" in status


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not an image at all", "cannot read photo bad.png"),
        ("huge", "bad.png is 5001x5000 px (25,005,000 pixels), more than the demo's 25,000,000 (25 MP)"),
        ("tiny", "bad.png is 1x1 px: the demo needs at least 16 px on each side"),  # in every tab alike
        (
            "wide",
            "is 1000x20 px: at a shorter side of 64 px its longer side would be 3200 px, more than the maximum 2048",
        ),
    ],
)
def test_a_bad_upload_is_a_message_naming_it(served, tmp_path, content, message):
    _, client = served
    bad = tmp_path / "bad.png"
    if content == "huge":
        Image.new("RGB", (5001, 5000)).save(bad)
    elif content == "tiny":
        Image.new("RGB", (1, 1)).save(bad)
    elif content == "wide":
        Image.new("RGB", (1000, 20)).save(bad)
    else:
        bad.write_bytes(content)
    for api, args in (
        ("/segment", ("head", False, False)),
        ("/select", ("5,5", 2, True, 0.5)),
        ("/look_inside", (1, "5,5")),
    ):
        result = client.predict(handle_file(str(bad)), *args, api_name=api)
        assert message in result[-1] and all(out in (None, "") for out in result[:-1]), api
        assert "/tmp" not in result[-1]  # the upload by its name, not the server's copy


def test_a_point_outside_the_photo_and_no_point_are_messages(served, photo):
    _, client = served

    def select(point):
        return client.predict(handle_file(str(photo)), point, 2, True, 0.5, api_name="/select")[-1]

    assert "point (80.0, 5.0) is outside the 70x50 image (x must lie in \\[0, 70), y in \\[0, 50))" in select("80,5")
    assert "point (70.0, 5.0) is outside" in select("69.99999999999999999,5")  # the point as it was read
    assert "must be X,Y in pixels (finite numbers), got 'nan,5'" in select("nan,5")
    assert "no point: click on the photo" in select("")
    assert "the point must be X,Y in pixels, got 'here'" in select("here")


def test_the_page_loads_nothing_from_elsewhere_and_serves_this_machine_only(served, outgoing, photo):
    url, client = served
    client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
    assert outgoing == []  # no telemetry at start or on use
    assert url.startswith("http://127.0.0.1:")
    page = urllib.request.urlopen(url).read().decode()
    config = urllib.request.urlopen(url + "config").read().decode()
    for text in (page, config):
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text
    assert '"analytics_enabled":false' in config.replace(" ", "")


@pytest.mark.parametrize(
    "checkpoint, expected",
    [
        (None, "No checkpoint was given. Train one with `python train.py --config configs/camvid.yaml`"),
        ("broken", "broken.safetensors was refused:"),
    ],
)
def test_without_a_usable_checkpoint_segment_says_how_to_train_and_select_works(tmp_path, photo, checkpoint, expected):
    args = NO_CHECKPOINT + ["--port", str(free_port())]
    if checkpoint:
        (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
        args += ["--checkpoint", str(tmp_path / "broken.safetensors")]
    app, url = demo_cli.serve(args, block=False)
    try:
        client = Client(url, verbose=False)
        *outputs, status = client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
        assert expected in status and outputs == [None, "", None]
        _, mask, _, _ = client.predict(handle_file(str(photo)), "45,25", 11, True, 0.5, api_name="/select")
        assert read(mask)[25, 45] == 255  # by the token similarity, the default
        *_, status = client.predict(handle_file(str(photo)), "45,25", 11, True, 0.5, "clusters", api_name="/select")
        assert "no checkpoint, so no head clusters" in status
    finally:
        app.close()


def test_old_downloads_are_removed_and_the_examples_kept(tmp_path):
    import os
    import time

    from ultra.demo.app import DOWNLOAD_AGE_S, DemoFolder
    from ultra.demo.examples import write_examples

    folder = DemoFolder()
    try:
        examples = write_examples(folder.examples, count=1, size=32)
        old = folder.new_file("a_labels.png")
        old.write_bytes(b"png")
        past = time.time() - DOWNLOAD_AGE_S - 5
        for path in (old.parent, folder.examples):
            os.utime(path, (past, past))
        recent = folder.new_file("b_labels.png")
        assert recent.name == "b_labels.png" and recent.parent.is_dir()
        assert not old.exists() and examples[0].is_file()
    finally:
        folder.remove()
    assert not folder.root.exists()


def test_the_crf_option_refines_or_says_what_is_missing(served, photo, monkeypatch):
    from ultra.readout import crf

    _, client = served
    _, _, labels, status = client.predict(handle_file(str(photo)), "head", True, False, api_name="/segment")
    try:
        crf.require_crf("--crf")
    except crf.CRFUnavailable:
        pass  # without the extra 'crf' only the message below is checked
    else:
        assert read(labels).shape == (50, 70) and ", CRF)" in status, status

    def missing():
        raise crf.CRFUnavailable("no pydensecrf")

    monkeypatch.setattr(crf, "_densecrf", missing)
    *outputs, status = client.predict(handle_file(str(photo)), "head", True, False, api_name="/segment")
    assert "the CRF option needs the dense CRF: pip install 'ultra-seg\\[crf\\]'" in status  # as Markdown
    assert outputs == [None, "", None]


def test_a_bug_is_named_in_the_page_and_the_app_lives_on(served, photo, monkeypatch, caplog):
    from ultra.demo import app as demo_app

    _, client = served
    real = demo_app.segment_photo

    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(demo_app, "segment_photo", broken)
    *outputs, status = client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
    assert "**Internal error** (RuntimeError: something inside broke); the server's log has the traceback" in status
    assert "Traceback" not in status and outputs == [None, "", None]
    assert "demo task failed" in caplog.text
    monkeypatch.setattr(demo_app, "segment_photo", real)
    *_, status = client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
    assert "segmented by the **head** readout" in status


def test_unmatched_clusters_are_black_and_named_so_in_the_legend(tiny_vit, photo):
    import torch

    from ultra.demo.tasks import segment_photo
    from ultra.readout.segmenter import ClusterReadout, Segmenter

    readout = ClusterReadout([("x", 2)], torch.randn(3, 48))
    segmenter = Segmenter(
        tiny_vit, {"head": readout}, ["a", "b"], resize=64, cluster_to_class={"head": torch.tensor([-1, -1, -1])}
    )  # no cluster matched to a class
    result = segment_photo(segmenter, photo)
    assert (result.labels == 255).all() and (result.overlay < read(photo)).all()  # darkened towards black
    assert result.legend == [(255, "unmatched cluster", (0, 0, 0), 1.0)]


def test_no_photo_and_too_few_tokens_are_messages(served, tiny_vit, photo):
    from ultra.demo.tasks import look_inside

    _, client = served
    *outputs, status = client.predict(None, "head", False, False, api_name="/segment")
    assert "no photo: upload one or pick an example" in status and outputs == [None, "", None]
    with pytest.raises(ValueError, match=r"photo photo.png gives only 1x1 tokens at --size 16: too few for graphs"):
        look_inside(tiny_vit, photo, layer=1, size=16)
    few = look_inside(tiny_vit, photo, layer=1, size=48)  # 3x4 tokens: fewer than the graphs' 16 neighbours
    assert all(picture.shape == (50, 70, 3) for picture in few.eigenvectors.values())


def test_pictures_never_go_through_gradios_in_place_cache_writes(served, photo, monkeypatch):
    """gradio writes an array result into its cache in place at a path named by its content: an identical result for
    another request rewrote the file a client was still downloading (about 3 % of downloads cut short under identical
    concurrent requests). The demo hands gradio PNG files, which its cache copies under a temporary name and renames."""
    import gradio.processing_utils as processing

    writes, original = [], processing.save_pil_to_cache

    def recorded(*args, **kwargs):
        writes.append(args[1:])
        return original(*args, **kwargs)

    monkeypatch.setattr(processing, "save_pil_to_cache", recorded)
    _, client = served
    for _ in range(2):  # identical requests
        overlay, _, labels, _ = client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
        assert read(overlay).shape == (50, 70, 3) and read(labels).shape == (50, 70)
        *pictures, _ = client.predict(handle_file(str(photo)), "45,25", 2, True, 0.5, api_name="/select")
        *graphs, _ = client.predict(handle_file(str(photo)), 1, "45,25", api_name="/look_inside")
        assert all(read(p).shape[:2] == (50, 70) for p in [*pictures, *graphs])
    assert writes == []


def test_the_checkpoints_class_names_are_text_in_the_header_and_a_refused_checkpoint_a_message(
    tiny_checkpoint, tmp_path
):
    """A class name holding a Markdown image or an HTML tag would make every visitor's browser fetch its URL."""
    import json

    from safetensors.torch import save_file

    from ultra.readout.checkpoint import read_checkpoint

    meta, tensors = read_checkpoint(tiny_checkpoint)
    meta["classes"] = ["![x](http://127.0.0.1:9/x.png)", "<img src='http://127.0.0.1:9/y.png'>", "road"]
    hostile = tmp_path / "hostile.safetensors"
    save_file(tensors, str(hostile), metadata={"ultra": json.dumps(meta)})
    meta["cluster_to_class"]["ghost"] = [[0, 1], [2]]  # passed validation before, then broke ultra.load
    ragged = tmp_path / "ragged.safetensors"
    save_file(tensors, str(ragged), metadata={"ultra": json.dumps(meta)})
    for checkpoint, shown in (
        (
            hostile,
            r"checkpoint with 3 classes (!\[x\](http://127.0.0.1:9/x.png), \<img src='http://127.0.0.1:9/y.png'\>",
        ),
        (ragged, "was refused: "),
    ):
        app, url = demo_cli.serve(
            ["--checkpoint", str(checkpoint), "--port", str(free_port()), "--size", "64"], block=False
        )
        try:
            config = json.loads(urllib.request.urlopen(url + "config").read())
            header = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "header")
            assert shown in header or shown in _segment_problem(config)
            bare = re.sub(r"\\.", "", header)  # what is left once every backslash-escaped character is taken out
            assert "<img" not in bare and "](" not in bare
        finally:
            app.close()


def _segment_problem(config: dict) -> str:
    return next(
        (c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "segment-problem"), ""
    )


def test_stopped_by_sigterm_the_demo_leaves_no_uploaded_photo_behind(tiny_checkpoint, tmp_path, photo):
    """Service managers and containers stop with SIGTERM: the app's folder and gradio's cache of uploads go, as on
    Ctrl+C."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    temp, cache, port = tmp_path / "tmp", tmp_path / "gradio", free_port()
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    command = [
        str(Path(sys.executable).parent / "ultra-demo"),
        "--checkpoint",
        str(tiny_checkpoint),
        "--port",
        str(port),
    ]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([*command, "--size", "64"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "serving" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(handle_file(str(photo)), "head", False, False, api_name="/segment")
        holding = lambda: [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == photo.read_bytes()]  # noqa: E731
        assert holding()  # the server holds the user's photo
        assert list(temp.glob("ultra-demo-*"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
    finally:
        process.kill()
    assert not holding(), "the uploaded photo is left behind in gradio's cache"
    assert not list(temp.glob("ultra-demo-*")), "the app's folder is left behind"
