"""``ultra-demo [--checkpoint CHECKPOINT]``: the browser demo (extra ``demo``), served here only unless told otherwise.

Without a checkpoint (or with one that fails validation) the Segment tab says how to train one;
Select and Look inside run on ``--backbone``. With one, the class names and the backbone come from
its header. The page is never shared through a tunnel and sends no analytics.
"""

from __future__ import annotations

import atexit
import signal
from pathlib import Path

from jsonargparse import ArgumentParser

from ..backbone.image_size import check_size
from ..backbone.names import DEFAULT_BACKBONE
from ..errors import ConfigError, DemoUnavailable
from . import DEFAULT_SIZE, WEIGHTS_HELP, add_precision_argument, check_device, console


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ultra-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        type=Path | None,
        default=None,
        help="inference checkpoint (model.safetensors); without one, Segment says how to train one",
    )
    parser.add_argument("--host", type=str, default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument(
        "--backbone",
        type=str,
        default=DEFAULT_BACKBONE,
        help="the frozen ViT of Select and Look inside without a checkpoint (timm name or alias)",
    )
    parser.add_argument(
        "--weights",
        type=str | None,
        default=None,
        help=f"{WEIGHTS_HELP}; auto without a checkpoint",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help="shorter side (pixels) of the photo fed to the backbone in Select and Look inside",
    )
    parser.add_argument("--device", type=str, default="cpu")
    add_precision_argument(parser)
    return parser


def serve(args: list[str] | None = None, block: bool = True):
    """Start the page; with ``block=False`` return ``(app, url)`` at once (the server runs in a thread)."""
    cfg = build_parser().parse_args(args)
    check_size(cfg.size)
    check_device(cfg.device)
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"--port must be in 1-65535, got {cfg.port}")
    try:
        from ..demo.app import THEME, DemoFolder, build_app
    except ImportError as err:
        raise DemoUnavailable(f"ultra-demo needs the 'demo' extra: pip install 'ultra-seg[demo]' ({err})") from None
    from ..demo.models import DemoModels

    models = DemoModels.open(cfg.checkpoint, cfg.backbone, cfg.weights, cfg.device, cfg.size, cfg.precision)
    folder = DemoFolder()
    atexit.register(folder.remove)
    app = build_app(models, folder)
    try:
        _, url, _ = app.launch(
            server_name=cfg.host,
            server_port=cfg.port,
            share=False,
            prevent_thread_lock=True,
            quiet=True,
            theme=THEME,
            max_file_size="50mb",
            show_error=False,
        )
    except OSError as err:
        raise ConfigError(f"cannot serve on {cfg.host}:{cfg.port}: {err}") from None
    print(f"ultra-demo: serving {url} (Ctrl+C stops)", flush=True)
    if not block:
        return app, url
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop cleans up as Ctrl+C does
    app.block_thread()


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl+C: the server closes (gradio deletes the uploads and results it cached) and the exit handlers
    remove the app's folder."""
    raise KeyboardInterrupt


main = console(serve, "ultra-demo")
