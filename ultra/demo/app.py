"""The demo page: a gradio Blocks app with three tabs over one photo.

- **Segment**: the checkpoint's label map over the photo, a legend of class names and colours, the
  label PNG to download and the time ``Segmenter.segment`` took; readout, flip and CRF options.
- **Select**: a click on the photo gives the object under it (mask, overlay, the token's relevance map).
- **Look inside**: for one block, the first eigenvectors of the photo's kq ("where"), vv ("what")
  and feat graphs as RGB pictures, and the relevance map of a clicked token.

The page sends nothing anywhere: analytics are off and the theme uses the system's fonts (no font
download). Every event runs under one concurrency group, one at a time (the relevance maps switch
the backbone's attention to an explicit form while they run). A user mistake is a message in the
page; any other failure is logged with its traceback and the page says so, and the app lives on.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np

from ..analysis.segments import check_threshold, parse_point
from ..errors import USER_ERRORS, ConfigError
from ..pictures import save_label_map
from .examples import write_examples
from .models import DemoModels
from .tasks import legend_html, look_inside, read_photo, segment_photo, select_object

log = logging.getLogger(__name__)

ONE_AT_A_TIME = "ultra-model"
"""The concurrency group of every event that runs the backbone."""
DOWNLOAD_AGE_S = 600
"""Label PNGs offered for download are removed from the app's folder after this many seconds."""
THEME = gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"],
                          font_mono=[gr.themes.Font("ui-monospace"), "monospace"])


def failure(err: Exception) -> str:
    """The page's message for an exception: a user mistake as it is, anything else as a bug (logged)."""
    if isinstance(err, USER_ERRORS):
        return f"**Error:** {err}"
    log.exception("demo task failed")
    return f"**Internal error** ({type(err).__name__}: {err}); the server's log has the traceback."


def guarded(task: Callable, empty: tuple) -> Callable:
    """``task(photo, ...) -> (*outputs, status)``, with any exception turned into ``(*empty, message)``; the message
    names the uploaded photo by its name, not by the server's copy of it."""
    def run(photo, *args, **kwargs):
        try:
            return task(photo, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the page must answer, whatever went wrong
            message = failure(err)
            return (*empty, message.replace(photo, Path(photo).name) if photo else message)

    run.__name__, run.__doc__ = task.__name__, task.__doc__
    return run


class DemoFolder:
    """The app's own folder: the example photos (``examples/``) and the files offered for download
    (``downloads/``, each in its own subfolder so it keeps its plain name, removed after
    :data:`DOWNLOAD_AGE_S` seconds); all of it is removed when the app ends."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ultra-demo-"))
        self.examples, self.downloads = self.root / "examples", self.root / "downloads"
        self.downloads.mkdir()

    def new_file(self, name: str) -> Path:
        """A fresh path called ``name`` for a download; older downloads than :data:`DOWNLOAD_AGE_S` are removed."""
        now = time.time()
        for old in self.downloads.iterdir():
            if now - old.stat().st_mtime > DOWNLOAD_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.downloads)) / name

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def clicked(evt: gr.SelectData) -> str:
    """The pixel ``"x,y"`` of a click on an image."""
    x, y = evt.index
    return f"{int(x)},{int(y)}"


def clicked_point(text: str | None) -> tuple[float, float] | None:
    """The point of a ``"x,y"`` field; None when it is empty."""
    return parse_point(text, "the point") if text and text.strip() else None


def build_app(models: DemoModels, folder: DemoFolder) -> gr.Blocks:
    """The page over ``models``; its examples and label PNGs are written into ``folder``."""
    examples = write_examples(folder.examples)

    def show_photo(photo: str | None):
        """The uploaded photo, as the Select and Look inside tabs show it (their points cleared)."""
        picture = read_photo(photo) if photo else None
        return picture, picture, "", "", ""

    def segment(photo: str, readout: str, crf: bool, flip: bool):
        """Segment the photo with the checkpoint: overlay, legend, label PNG, status."""
        if models.segmenter is None:
            return None, "", None, f"**No segmenter.** {models.problem}"
        result = segment_photo(models.segmenter, photo, readout=readout, crf=crf, flip=flip)
        labels = save_label_map(result.labels, folder.new_file(f"{Path(photo).stem}_labels.png"))
        height, width = result.labels.shape
        status = (f"{width}x{height} px segmented by the **{readout}** readout in {result.seconds:.2f} s "
                  f"(backbone at {models.segmenter.resize} px{', flip-averaged' if flip else ''}{', CRF' if crf else ''})")
        return result.overlay, legend_html(result.legend), str(labels), status

    def select(photo: str, point: str, layer: int, otsu: bool, fraction: float, progress=gr.Progress()):
        """The object under the point ``"x,y"``: overlay, mask, relevance map, status."""
        xy = clicked_point(point)
        if xy is None:
            raise ConfigError("no point: click on the photo (or type x,y)")
        threshold = "otsu" if otsu else check_threshold(fraction)
        progress(0.0, desc="relevance map of the clicked token")
        result = select_object(models.vit, photo, xy, layer=layer, size=models.size, threshold=threshold)
        share = 100 * result.mask.mean()
        mask = (result.mask * 255).astype(np.uint8)
        return result.overlay, mask, result.relevance, f"object at ({xy[0]:.0f}, {xy[1]:.0f}): {share:.1f}% of the photo"

    def look(photo: str, layer: int, point: str, progress=gr.Progress()):
        """The kq, vv and feat eigenvectors of one block, and the relevance map of the token at ``"x,y"`` if given."""
        xy = clicked_point(point)
        view = look_inside(models.vit, photo, layer=layer, point=xy, size=models.size,
                           report=lambda fraction, what: progress(fraction, desc=what))
        pictures = [view.eigenvectors[kind] for kind in ("kq", "vv", "feat")]
        where = (f", relevance of the token at ({xy[0]:.0f}, {xy[1]:.0f})" if xy
                 else "; click on the photo for a token's relevance")
        return (*pictures, view.relevance, f"block {view.layer}: eigenvectors 1-3 as RGB{where}")

    last = models.vit.num_layers - 1
    with gr.Blocks(title="ultra demo", analytics_enabled=False, delete_cache=(DOWNLOAD_AGE_S, DOWNLOAD_AGE_S)) as app:
        gr.Markdown(f"# ultra\n{models.describe()}")
        with gr.Row():
            photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo")
            gr.Examples([[str(p)] for p in examples], inputs=[photo], label="Examples (synthetic scenes)")
        with gr.Tabs():
            with gr.Tab("Segment", elem_id="tab-segment"):
                if models.segmenter is None:
                    gr.Markdown(f"**No segmenter.** {models.problem}", elem_id="segment-problem")
                with gr.Row():
                    readout = gr.Dropdown(models.readouts or ["head"], value=(models.readouts or ["head"])[0],
                                          label="Readout", interactive=models.segmenter is not None)
                    flip = gr.Checkbox(label="Flip-average", value=False)
                    crf = gr.Checkbox(label="Dense CRF", value=False)
                    run_segment = gr.Button("Segment", variant="primary", elem_id="segment-button",
                                            interactive=models.segmenter is not None)
                with gr.Row():
                    segmented = gr.Image(label="Segments", format="png", interactive=False, elem_id="segment-overlay")
                    with gr.Column():
                        legend = gr.HTML(label="Legend", elem_id="segment-legend")
                        label_file = gr.File(label="Label map (PNG)", interactive=False)
                segment_status = gr.Markdown(elem_id="segment-status")
            with gr.Tab("Select", elem_id="tab-select"):
                gr.Markdown("Click on an object in the photo.")
                with gr.Row():
                    select_view = gr.Image(label="Photo: click on an object", format="png", interactive=False,
                                           elem_id="select-photo")
                    with gr.Column():
                        select_point = gr.Textbox(label="Point x,y (pixels; a click fills it)", elem_id="select-point")
                        select_layer = gr.Slider(0, last, value=last, step=1, label="Block")
                        otsu = gr.Checkbox(label="Otsu's threshold", value=True)
                        fraction = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold (fraction of the map's maximum)")
                        run_select = gr.Button("Select", elem_id="select-button")
                with gr.Row():
                    selected = gr.Image(label="Object", format="png", interactive=False, elem_id="select-overlay")
                    mask = gr.Image(label="Mask", format="png", interactive=False, image_mode="L", elem_id="select-mask")
                    select_map = gr.Image(label="Relevance map of the clicked token", format="png", interactive=False)
                select_status = gr.Markdown(elem_id="select-status")
            with gr.Tab("Look inside", elem_id="tab-look"):
                gr.Markdown("The first eigenvectors of one block's graphs on this photo: **kq** (key-query, where), "
                            "**vv** (value-value, what), **feat** (the block's output tokens). Click on the photo for "
                            "the relevance map of a token.")
                with gr.Row():
                    look_view = gr.Image(label="Photo", format="png", interactive=False, elem_id="look-photo")
                    with gr.Column():
                        look_layer = gr.Slider(0, last, value=last, step=1, label="Block")
                        look_point = gr.Textbox(label="Point x,y (pixels; a click fills it, empty: none)",
                                                elem_id="look-point")
                        run_look = gr.Button("Show the graphs", elem_id="look-button")
                with gr.Row():
                    kq, vv, feat = (gr.Image(label=f"{kind} eigenvectors 1-3", format="png", interactive=False)
                                    for kind in ("kq", "vv", "feat"))
                    look_map = gr.Image(label="Relevance map", format="png", interactive=False)
                look_status = gr.Markdown(elem_id="look-status")

        common = {"concurrency_id": ONE_AT_A_TIME, "concurrency_limit": 1}
        photo.change(guarded(show_photo, (None, None, "", "")), [photo],
                     [select_view, look_view, select_point, look_point, segment_status],
                     api_visibility="private", **common)
        run_segment.click(guarded(segment, (None, "", None)), [photo, readout, crf, flip],
                          [segmented, legend, label_file, segment_status], api_name="segment", **common)
        select_inputs = [photo, select_point, select_layer, otsu, fraction]
        select_outputs = [selected, mask, select_map, select_status]
        select_fn = guarded(select, (None, None, None))
        run_select.click(select_fn, select_inputs, select_outputs, api_name="select", **common)
        select_view.select(clicked, None, [select_point], api_visibility="private").then(
            select_fn, select_inputs, select_outputs, api_visibility="private", **common)
        look_inputs = [photo, look_layer, look_point]
        look_outputs = [kq, vv, feat, look_map, look_status]
        look_fn = guarded(look, (None, None, None, None))
        run_look.click(look_fn, look_inputs, look_outputs, api_name="look_inside", **common)
        look_view.select(clicked, None, [look_point], api_visibility="private").then(
            look_fn, look_inputs, look_outputs, api_visibility="private", **common)
    return app
