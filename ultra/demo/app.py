"""The demo page: a gradio Blocks app with three tabs over one photo.

- **Segment**: the checkpoint's label map over the photo, a legend of class names and colours, the
  label PNG to download and the time ``Segmenter.segment`` took; readout, flip and CRF options.
- **Select**: a click on the photo gives the object under it (mask, overlay, the map or the head's clusters).
- **Look inside**: for one block, the first eigenvectors of the photo's kq ("where"), vv ("what")
  and xx graphs as RGB pictures, and the relevance map of a clicked token.

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

from ..analysis.masks import check_threshold
from ..analysis.points import parse_point
from ..analysis.segments import SELECT_METHODS, default_block, select_object
from ..errors import USER_ERRORS, ConfigError
from ..pictures import save_image, save_label_map
from .examples import write_examples
from .models import DemoModels
from .tasks import (
    LOOK_GRAPHS,
    escape_markdown,
    legend_html,
    look_inside,
    read_photo,
    segment_photo,
)

log = logging.getLogger(__name__)

ONE_AT_A_TIME = "ultra-model"
"""The concurrency group of every event that runs the backbone."""
DOWNLOAD_AGE_S = 600
"""Label PNGs offered for download are removed from the app's folder after this many seconds."""
SELECT_LABELS = {"similarity": "token similarity", "clusters": "head clusters", "relevance": "relevance map"}
"""The Select tab's words for :data:`~ultra.analysis.segments.SELECT_METHODS`."""
THEME = gr.themes.Default(
    font=[gr.themes.Font("system-ui"), "sans-serif"], font_mono=[gr.themes.Font("ui-monospace"), "monospace"]
)


def failure(err: Exception, photo: str | None = None) -> str:
    """The page's message (Markdown) for an exception: a user mistake as it is, anything else as a bug (logged); the
    uploaded ``photo`` is named by its name, not by the server's copy of it, and nothing in the error is formatted."""
    text = str(err).replace(photo, Path(photo).name) if photo else str(err)
    if isinstance(err, USER_ERRORS):
        return f"**Error:** {escape_markdown(text)}"
    log.exception("demo task failed")
    return f"**Internal error** ({type(err).__name__}: {escape_markdown(text)}); the server's log has the traceback."


def guarded(task: Callable, empty: tuple) -> Callable:
    """``task(photo, ...) -> (*outputs, status)``, with any exception turned into ``(*empty, message)``."""

    def run(photo, *args, **kwargs):
        try:
            return task(photo, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the page must answer, whatever went wrong
            return (*empty, failure(err, photo))

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


class DemoActions:
    """What the page's events compute (each wrapped by :func:`guarded` when wired). Pictures are handed to gradio as
    PNG files of their own: gradio writes an array into its cache in place, at a path named by the content, so an
    identical result for another request would rewrite the file a client is still downloading (a cut-short
    download); a file is copied into the cache under a temporary name and renamed, and never rewritten."""

    def __init__(self, models: DemoModels, folder: DemoFolder):
        self.models, self.folder = models, folder

    def picture(self, array: np.ndarray | None, name: str) -> str | None:
        """``array`` as a fresh PNG file in the app's folder (None stays None)."""
        return None if array is None else str(save_image(array, self.folder.new_file(f"{name}.png")))

    def show_photo(self, photo: str | None):
        """The uploaded photo, as the Select and Look inside tabs show it (their points cleared)."""
        picture = self.picture(read_photo(photo), Path(photo).stem) if photo else None
        return picture, picture, "", "", ""

    def segment(self, photo: str, readout: str, crf: bool, flip: bool):
        """Segment the photo with the checkpoint: overlay, legend, label PNG, status."""
        segmenter = self.models.segmenter
        if segmenter is None:
            return None, "", None, f"**No segmenter.** {self.models.problem}"
        result = segment_photo(segmenter, photo, readout=readout, crf=crf, flip=flip)
        labels = save_label_map(result.labels, self.folder.new_file(f"{Path(photo).stem}_labels.png"))
        height, width = result.labels.shape
        status = (
            f"{width}x{height} px segmented by the **{readout}** readout in {result.seconds:.2f} s "
            f"(backbone at {segmenter.resize} px{', flip-averaged' if flip else ''}{', CRF' if crf else ''})"
        )
        return self.picture(result.overlay, "segments"), legend_html(result.legend), str(labels), status

    def select(
        self,
        photo: str,
        point: str,
        layer: int,
        otsu: bool,
        fraction: float,
        method: str = SELECT_METHODS[0],
        progress=gr.Progress(),
    ):
        """The object under the point ``"x,y"`` by ``method``: overlay, mask, clusters or relevance map, status."""
        xy = clicked_point(point)
        if xy is None:
            raise ConfigError("no point: click on the photo (or type x,y)")
        threshold = "otsu" if otsu else check_threshold(fraction)
        by = SELECT_LABELS.get(method, method)  # an unknown method is refused by select_object
        progress(0.0, desc=f"selecting by the {by}")
        models = self.models
        picture = read_photo(photo)
        result = select_object(picture, xy, models.segmenter, models.vit, method, layer, models.size, threshold)
        status = f"object at ({xy[0]:.0f}, {xy[1]:.0f}) by the {by}: {100 * result.mask.mean():.1f}% of the photo"
        mask = (result.mask * 255).astype(np.uint8)
        pictures = (self.picture(result.overlay, "object"), self.picture(mask, "mask"))
        return *pictures, self.picture(result.map, "map"), status

    def look(self, photo: str, layer: int, point: str, progress=gr.Progress()):
        """The kq, vv and xx eigenvectors of one block, and the relevance map of the token at ``"x,y"`` if given."""
        xy = clicked_point(point)
        view = look_inside(
            self.models.vit,
            photo,
            layer=layer,
            point=xy,
            size=self.models.size,
            report=lambda fraction, what: progress(fraction, desc=what),
        )
        pictures = [self.picture(view.eigenvectors[kind], f"{kind}-eigenvectors") for kind in LOOK_GRAPHS]
        where = (
            f", relevance of the token at ({xy[0]:.0f}, {xy[1]:.0f})"
            if xy
            else "; click on the photo for a token's relevance"
        )
        return (
            *pictures,
            self.picture(view.relevance, "relevance"),
            f"block {view.layer}: eigenvectors 1-3 as RGB{where}",
        )


def _segment_tab(models: DemoModels) -> dict:
    """The Segment tab's components."""
    if models.segmenter is None:
        gr.Markdown(f"**No segmenter.** {models.problem}", elem_id="segment-problem")
    usable, names = models.segmenter is not None, models.readouts or ["head"]
    with gr.Row():
        tab = {
            "readout": gr.Dropdown(names, value=names[0], label="Readout", interactive=usable),
            "flip": gr.Checkbox(label="Flip-average", value=False),
            "crf": gr.Checkbox(label="Dense CRF", value=False),
            "run": gr.Button("Segment", variant="primary", elem_id="segment-button", interactive=usable),
        }
    with gr.Row():
        tab["overlay"] = gr.Image(label="Segments", format="png", interactive=False, elem_id="segment-overlay")
        with gr.Column():
            tab["legend"] = gr.HTML(label="Legend", elem_id="segment-legend")
            tab["labels"] = gr.File(label="Label map (PNG)", interactive=False)
    tab["status"] = gr.Markdown(elem_id="segment-status")
    return tab


def _select_tab(depth: int) -> dict:
    """The Select tab's components (the block slider follows the method's default block)."""
    gr.Markdown(
        "Click on an object in the photo. **token similarity**: the squared cosine similarity of every token to "
        "the clicked one at a block, thresholded (the best measured); **head clusters**: the clicked pixel's cluster "
        "of the checkpoint's head; **relevance map**: the clicked token's relevance map at a block, thresholded. "
        "Each is kept to its connected part under the click."
    )
    with gr.Row():
        tab = {
            "view": gr.Image(label="Photo: click on an object", format="png", interactive=False, elem_id="select-photo")
        }
        with gr.Column():
            tab["point"] = gr.Textbox(label="Point x,y (pixels; a click fills it)", elem_id="select-point")
            tab["method"] = gr.Radio(
                [(SELECT_LABELS[m], m) for m in SELECT_METHODS],
                value=SELECT_METHODS[0],
                label="Select by",
                elem_id="select-method",
            )
            first = default_block(SELECT_METHODS[0], depth)
            tab["layer"] = gr.Slider(0, depth - 1, value=first, step=1, label="Block", elem_id="select-layer")
            tab["method"].change(
                lambda method: default_block(method, depth), tab["method"], tab["layer"], api_visibility="private"
            )
            tab["otsu"] = gr.Checkbox(label="Otsu's threshold", value=True)
            tab["fraction"] = gr.Slider(
                0.05, 0.95, value=0.5, step=0.05, label="Threshold (fraction of the map's maximum)"
            )
            tab["run"] = gr.Button("Select", elem_id="select-button")
    with gr.Row():
        tab["overlay"] = gr.Image(label="Object", format="png", interactive=False, elem_id="select-overlay")
        tab["mask"] = gr.Image(label="Mask", format="png", interactive=False, image_mode="L", elem_id="select-mask")
        tab["map"] = gr.Image(label="The map, or the head's clusters", format="png", interactive=False)
    tab["status"] = gr.Markdown(elem_id="select-status")
    return tab


def _look_tab(last: int) -> dict:
    """The Look inside tab's components."""
    gr.Markdown(
        "The first eigenvectors of one block's graphs on this photo: **kq** (key-query, where), "
        "**vv** (value-value, what), **xx** (the block's output tokens). Click on the photo for "
        "the relevance map of a token."
    )
    with gr.Row():
        tab = {"view": gr.Image(label="Photo", format="png", interactive=False, elem_id="look-photo")}
        with gr.Column():
            tab["layer"] = gr.Slider(0, last, value=last, step=1, label="Block")
            tab["point"] = gr.Textbox(label="Point x,y (pixels; a click fills it, empty: none)", elem_id="look-point")
            tab["run"] = gr.Button("Show the graphs", elem_id="look-button")
    with gr.Row():
        tab["graphs"] = [
            gr.Image(label=f"{kind} eigenvectors 1-3", format="png", interactive=False) for kind in LOOK_GRAPHS
        ]
        tab["map"] = gr.Image(label="Relevance map", format="png", interactive=False)
    tab["status"] = gr.Markdown(elem_id="look-status")
    return tab


def _wire(actions: DemoActions, photo, segment: dict, select: dict, look: dict) -> None:
    """The page's events, one at a time (one concurrency group); clicks on a photo fill its point and run the tab."""
    common = {"concurrency_id": ONE_AT_A_TIME, "concurrency_limit": 1}
    photo.change(
        guarded(actions.show_photo, (None, None, "", "")),
        [photo],
        [select["view"], look["view"], select["point"], look["point"], segment["status"]],
        api_visibility="private",
        **common,
    )
    segment["run"].click(
        guarded(actions.segment, (None, "", None)),
        [photo, segment["readout"], segment["crf"], segment["flip"]],
        [segment["overlay"], segment["legend"], segment["labels"], segment["status"]],
        api_name="segment",
        **common,
    )
    for tab, action, inputs, outputs, empty, name in (
        (
            select,
            actions.select,
            ["point", "layer", "otsu", "fraction", "method"],
            ["overlay", "mask", "map"],
            3,
            "select",
        ),
        (look, actions.look, ["layer", "point"], ["map"], 4, "look_inside"),
    ):
        wired_inputs = [photo, *(tab[key] for key in inputs)]
        wired_outputs = [*tab.get("graphs", []), *(tab[key] for key in outputs), tab["status"]]
        run = guarded(action, (None,) * empty)
        tab["run"].click(run, wired_inputs, wired_outputs, api_name=name, **common)
        tab["view"].select(clicked, None, [tab["point"]], api_visibility="private").then(
            run, wired_inputs, wired_outputs, api_visibility="private", **common
        )


def build_app(models: DemoModels, folder: DemoFolder) -> gr.Blocks:
    """The page over ``models``; its examples and label PNGs are written into ``folder``."""
    examples = write_examples(folder.examples)
    with gr.Blocks(title="ultra demo", analytics_enabled=False, delete_cache=(DOWNLOAD_AGE_S, DOWNLOAD_AGE_S)) as app:
        gr.Markdown(f"# ultra\n{escape_markdown(models.describe())}", elem_id="header")
        with gr.Row():
            photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo")
            gr.Examples([[str(p)] for p in examples], inputs=[photo], label="Examples (synthetic scenes)")
        with gr.Tabs():
            with gr.Tab("Segment", elem_id="tab-segment"):
                segment = _segment_tab(models)
            with gr.Tab("Select", elem_id="tab-select"):
                select = _select_tab(models.vit.num_layers)
            with gr.Tab("Look inside", elem_id="tab-look"):
                look = _look_tab(models.vit.num_layers - 1)
        _wire(DemoActions(models, folder), photo, segment, select, look)
    return app
