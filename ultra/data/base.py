"""The dataset base class: pairs of image and label files, label mapping through a lookup table, checks."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError
from .io import IMAGE_SUFFIXES, image_size, read_image, read_label

IGNORE = 255
_INVALID = -1

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], dict]
"""``(image, label) -> {"image": ..., "label": ..., ...}`` (see :mod:`ultra.data.transforms`)."""


@dataclass(frozen=True)
class Sample:
    """One image file and its label file (``None`` when unlabelled)."""

    name: str
    image: Path
    label: Path | None = None


def label_lut(mapping: dict[int, int], size: int = 65536) -> np.ndarray:
    """A lookup table raw id -> class id (or ``IGNORE``); raw ids not in ``mapping`` are invalid."""
    lut = np.full(size, _INVALID, dtype=np.int64)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


class SegmentationDataset(Dataset):
    """Base class of every dataset: ``samples`` of files, ``classes`` names and a raw-id lookup table.

    ``valid_ids`` describes the raw ids the lookup table accepts, for error messages.
    ``__getitem__`` returns ``{"image", "label", "name", "index"}`` (plus what ``transform`` adds);
    without a transform the image is ``uint8 [3, H, W]`` and the label ``int64 [H, W]`` with
    ``ignore_index`` (255) for unlabelled pixels. Unlabelled samples get a label of all ``ignore_index``.
    """

    ignore_index = IGNORE

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        lut: np.ndarray,
        valid_ids: str,
        transform: Transform | None = None,
    ):
        if not samples:
            raise DataError(f"{type(self).__name__}: no images found")
        repeated = sorted({name for name in classes if list(classes).count(name) > 1})
        if repeated:
            raise DataError(
                f"{type(self).__name__}: the class names {repeated} appear more than once in the class list"
            )
        first: dict[str, Sample] = {}
        for sample in samples:
            other = first.setdefault(sample.name, sample)
            if other is not sample:
                raise DataError(
                    f"{type(self).__name__}: two images are named '{sample.name}' ({other.image} and {sample.image}); "
                    f"names must be unique (they choose the label map, the cache rows and the output files)"
                )
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.lut = lut
        self.valid_ids = valid_ids
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        return all(s.label is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def settings(self) -> dict:
        """Parameters other than the files that determine the content (generated sets override this)."""
        return {}

    def fingerprint(self) -> str:
        """A hash of what determines the content: class, classes, settings and files (path, size, modification time)."""
        h = hashlib.sha256(f"{type(self).__name__}|{self.classes}|{sorted(self.settings().items())}".encode())
        for sample in self.samples:
            h.update(f"{sample.name}|{sample.image}|{sample.label}".encode())
            for path in (sample.image, sample.label):
                if path is not None and Path(path).is_file():
                    stat = Path(path).stat()
                    h.update(f"{stat.st_size}|{stat.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def check(self, require_labels: bool = False, headers_only: bool = False) -> None:
        """Read every image and label once (raising :class:`DataError` naming the first bad file); ``headers_only``:
        only their headers (a file that cannot be opened, a decompression bomb, a label of another size than its
        image), fast enough to run before a long build."""
        if require_labels and not self.has_labels:
            missing = next(s for s in self.samples if s.label is None)
            raise DataError(
                f"{type(self).__name__}: image {missing.image} has no label map; the evaluation needs labels"
            )
        if headers_only:
            for sample in self.samples:
                size = image_size(sample.image)
                if sample.label is not None and sample.label.suffix.lower() in IMAGE_SUFFIXES:
                    label_size = image_size(sample.label, "label map")
                    if label_size != size:
                        raise DataError(
                            f"label map {sample.label} is {label_size[0]}x{label_size[1]} px, its image "
                            f"{sample.image} {size[0]}x{size[1]}"
                        )
            return
        labelled, raw_ids = 0, set()
        for index in range(len(self)):
            image, raw = self.load(index)
            if raw is None:
                continue
            labelled += int((self.label_of(index, image, raw) != self.ignore_index).sum())
            raw_ids.update(np.unique(raw).tolist())
        if require_labels and labelled == 0:
            raise DataError(
                f"{type(self).__name__}: none of the {len(self)} label maps has a labelled pixel (every pixel "
                f"is {self.ignore_index}, 'unlabelled'): there is nothing to evaluate"
            )
        self.check_label_layout(raw_ids)

    def check_label_layout(self, raw_ids: set[int]) -> None:
        """Refuse label files whose ids, taken over the whole set, say they are in another layout than the one the
        lookup table reads (each id alone being valid); :meth:`check` calls it with every raw id of the set."""

    def with_transform(self, transform: Transform | None) -> SegmentationDataset:
        """A shallow copy of this data set with another transform."""
        clone = copy.copy(self)
        clone.transform = transform
        return clone

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw ``uint8 [H, W, 3]`` image and raw label ids (before the lookup table) of one sample."""
        sample = self.samples[index]
        return read_image(sample.image), read_label(sample.label) if sample.label is not None else None

    def map_label(self, raw: np.ndarray, where: object) -> np.ndarray:
        """Raw ids -> class ids through the lookup table; unknown ids raise an error naming ``where``."""
        if raw.min() < 0 or raw.max() >= len(self.lut):
            bad = raw[(raw < 0) | (raw >= len(self.lut))]
            raise DataError(f"label map {where}: values {np.unique(bad)[:10].tolist()} are outside the known ids")
        mapped = self.lut[raw]
        if (mapped == _INVALID).any():
            bad = np.unique(raw[mapped == _INVALID])
            raise DataError(
                f"label map {where}: values {bad[:10].tolist()} are not valid for {type(self).__name__} "
                f"(expected {self.valid_ids})"
            )
        return mapped

    def label_of(self, index: int, image: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """The class ids of sample ``index``'s raw label ids, checked against its image's size."""
        sample = self.samples[index]
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"label map {sample.label or sample.name} is {raw.shape[1]}x{raw.shape[0]} px but its image "
                f"{sample.image} is {image.shape[1]}x{image.shape[0]} px"
            )
        return self.map_label(raw, sample.label or sample.name)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, raw = self.load(index)
        if raw is None:
            label = np.full(image.shape[:2], self.ignore_index, dtype=np.int64)
        else:
            label = self.label_of(index, image, raw)
        item = {
            "image": tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)),
            "label": tv_tensors.Mask(torch.from_numpy(label)),
        }
        if self.transform is not None:
            item = self.transform(item["image"], item["label"])
        return {**item, "name": sample.name, "index": index}
