"""File-system helpers shared by every writer: the user cache and atomic writes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from .errors import DataError, DiskFull, FolderInUse


def cache_root() -> Path:
    """Directory for ultra's caches: ``$ULTRA_CACHE_DIR``, else ``$XDG_CACHE_HOME/ultra``, else ``~/.cache/ultra``."""
    if os.environ.get("ULTRA_CACHE_DIR"):
        return Path(os.environ["ULTRA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ultra"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    A crash or an exception inside the block leaves no partial ``target`` behind. The file gets the
    permissions of a file created normally (``0666`` less the umask), not ``mkstemp``'s ``0600``.
    """
    target = Path(target)
    with disk_full_named(target.parent, f"writing {target.name}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            if tmp_path.exists():
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, target)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def remove_stale_parts(folder: str | Path, name: str = "*") -> None:
    """Delete the temporary files of :func:`atomic_path` for ``name`` (all of them by default) in ``folder``: those a
    killed process left. Call it only where no other process can be writing them (under the folder's lock)."""
    for part in Path(folder).glob(f".{name}.*.part"):
        part.unlink(missing_ok=True)


_FULL_DISK_TEXT = re.compile(r"No space left on device|Disk quota exceeded|StorageFull|QuotaExceeded|os error 28")
"""How a full disk reads in the message of a library that does not raise ``OSError`` for it (safetensors' Rust
writer raises ``SafetensorError`` with the io error's text)."""


def is_full_disk(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full (ENOSPC or EDQUOT), as an ``OSError`` or in a library's message."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return bool(_FULL_DISK_TEXT.search(str(err)))


@contextlib.contextmanager
def disk_full_named(folder: str | Path, doing: str) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) inside the block into one :class:`DiskFull` error naming the folder, whether
    it comes as an ``OSError`` or as a library's own error (safetensors)."""
    try:
        yield
    except Exception as err:
        if not is_full_disk(err):
            raise
        raise DiskFull(
            f"the disk of {folder} is full ({doing}): free some space and run the command again; "
            f"it resumes where it stopped"
        ) from None


def reserve_space(path: str | Path) -> None:
    """Allocate a (sparse, memory-mapped) file's blocks now, so that a full disk is an error here, not a bus error
    (SIGBUS) when a page of the map is first written."""
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def try_lock(path: str | Path):
    """The inter-process lock file ``path`` (a ``filelock.FileLock``), acquired if no other process holds it now,
    else None; the caller releases it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


@contextlib.contextmanager
def build_lock(path: str | Path, what: str) -> Iterator[None]:
    """An inter-process lock (``<path>.lock``) around building ``path``: a second process waits for the
    first, then finds the finished result instead of building over it."""
    from filelock import FileLock

    lock = try_lock(f"{path}.lock")
    if lock is None:
        logging.getLogger(__name__).info("waiting for another process building %s (%s.lock)", what, path)
        lock = FileLock(f"{path}.lock")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


LOCK_NAME = ".ultra.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, option: str, held: bool = True) -> Iterator[None]:
    """Hold ``folder/.ultra.lock`` for the block, so that no two commands write into one folder at once; refuse at
    once (:class:`FolderInUse`, naming ``option``, the setting that chose the folder) when another process holds it.
    ``held=False`` (the other processes of a multi-process run, covered by the first one's lock): nothing is locked."""
    if not held:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = try_lock(folder / LOCK_NAME)
    if lock is None:
        raise FolderInUse(
            f"{folder} is in use by another command (it holds {folder / LOCK_NAME}): wait for it to "
            f"finish, or choose another {option}"
        )
    try:
        yield
    finally:
        lock.release()


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def map_safetensors(path: str | Path) -> tuple[dict, dict[str, str]]:
    """The tensors of a safetensors file, memory-mapped (copy-on-write) rather than read, and its metadata.

    Processes that map the same file share its pages through the page cache (one copy in RAM for
    every DDP process and data-loader worker); only the pages touched are read. Raises ValueError
    when the header is damaged or the file is shorter than the header says.
    """
    import json

    import numpy as np
    import torch

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= size - 8:
            raise ValueError(f"{path}: a safetensors header of {length} bytes does not fit a {size}-byte file")
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", None) or {}
    base, tensors = 8 + length, {}
    for name, info in header.items():
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        shape, (start, stop) = tuple(info["shape"]), info["data_offsets"]
        if stop - start != int(np.prod(shape)) * dtype.itemsize or base + stop > size:
            raise ValueError(f"{path}: tensor '{name}' ({info['dtype']} {list(shape)}) is truncated or damaged")
        if stop == start:
            tensors[name] = torch.from_numpy(np.empty(shape, dtype))
        else:
            tensors[name] = torch.from_numpy(np.memmap(path, dtype=dtype, mode="c", offset=base + start, shape=shape))
    return tensors, metadata


def refuse_overwrite(paths: Iterable[Path], overwrite: bool) -> None:
    """Raise if any of ``paths`` exists and ``overwrite`` is not set."""
    existing = [p for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} output file(s) exist already (e.g. {existing[0]}); pass --overwrite to replace them"
        )


def refuse_collisions(outputs_of: Mapping[Path, Sequence[Path]], other_inputs: Iterable[Path] = ()) -> None:
    """Before any work: refuse an output that is an input (the images of ``outputs_of`` and ``other_inputs``, e.g.
    their labels), whatever ``--overwrite`` says, and an output that two images would both write."""
    inputs = {Path(p).resolve(): Path(p) for p in [*outputs_of, *other_inputs]}
    writer: dict[Path, Path] = {}
    for image, outputs in outputs_of.items():
        for out in outputs:
            key = Path(out).resolve()
            if key in inputs:
                raise DataError(
                    f"output {out} is the input {inputs[key]}; choose another output (inputs are never replaced)"
                )
            if writer.setdefault(key, Path(image)) != Path(image):
                raise DataError(
                    f"{writer[key]} and {image} would both write {out}; rename one or write them to separate folders"
                )


def require_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there (before any long work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None
