"""What made a folder of segmentations: ``ultra-segment`` records it in the folder and refuses to mix settings.

A folder of label maps is one experiment: every image in it was segmented by the same checkpoint
(its SHA-256) with the same readout, CRF, flip and backbone precision, the settings that change a label. The record is
``<folder>/ultra-segment.json``; a resume (``--skip_existing``) or a second batch into the folder
with other settings is refused, as ``train.py`` refuses to resume a run with other settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import atomic_path, file_digest

RECORD = "ultra-segment.json"
OVERLAY_SUFFIX = "_overlay.png"


def label_settings(checkpoint: Path, engine: str, readout: str, crf: bool, flip: bool, precision: str) -> dict:
    """The settings that decide an image's labels: the checkpoint's (or exported model's) bytes, the engine (``torch``
    or ``onnx``), the readout, the CRF, the flip and the backbone's arithmetic (``bf16`` or ``fp32``)."""
    return {
        "checkpoint_sha256": file_digest(checkpoint),
        "engine": engine,
        "readout": readout,
        "crf": crf,
        "flip": flip,
        "precision": precision,
    }


def outputs_for(image: Path, folder: Path) -> tuple[Path, Path]:
    """The label map and the overlay an image is written to."""
    return folder / f"{image.stem}.png", folder / f"{image.stem}{OVERLAY_SUFFIX}"


def claim_output_folder(
    folder: Path, settings: dict, images: Iterable[Path], skip_existing: bool, overwrite: bool
) -> None:
    """Check that segmenting ``images`` with ``settings`` into ``folder`` keeps it one experiment, then record the
    settings there. Call it under the folder's lock, before any image is written."""
    images = list(images)
    recorded = _read_record(folder)
    done = {p.name[: -len(OVERLAY_SUFFIX)] for p in folder.glob(f"*{OVERLAY_SUFFIX}")}  # the overlay comes first
    ours = {image.stem for image in images}
    if recorded is None:
        if skip_existing and done & ours:
            raise ConfigError(
                f"--output {folder} holds segmentations (e.g. {sorted(done & ours)[0]}.png) but no {RECORD} saying "
                f"what made them: --skip_existing cannot tell whether they match this checkpoint and settings; "
                f"pass --overwrite to write them again, or choose another --output"
            )
    elif recorded != settings:
        differ = sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))
        what = ", ".join(f"{k} {recorded.get(k)!r} there, {settings.get(k)!r} now" for k in differ)
        if skip_existing or not overwrite:
            raise ConfigError(
                f"--output {folder} holds segmentations made with other settings ({what}); a folder holds one "
                f"experiment: choose another --output" + ("" if skip_existing else ", or pass --overwrite")
            )
        left = sorted(done - ours)
        if left:
            raise ConfigError(
                f"--overwrite with other settings ({what}) would leave {len(left)} image(s) of the earlier settings "
                f"in --output {folder} (e.g. {left[0]}.png); remove them or choose another --output"
            )
    with atomic_path(folder / RECORD) as tmp:
        tmp.write_text(json.dumps(settings, indent=1))


def _read_record(folder: Path) -> dict | None:
    path = folder / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is damaged ({err}); remove it (and the segmentations it describes)") from None
    if not isinstance(record, dict):
        raise DataError(f"{path} is damaged (not a JSON object); remove it (and the segmentations it describes)")
    return record
