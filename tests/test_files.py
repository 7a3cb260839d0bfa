"""Atomic writes and locks."""

import os
import stat
import subprocess
import sys

from ultra.files import atomic_path


def test_atomic_writes_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


def test_try_lock_takes_a_free_lock_and_refuses_a_held_one(tmp_path):
    from ultra.files import try_lock

    first = try_lock(tmp_path / "x.lock")
    assert first is not None and first.is_locked
    held = subprocess.run(
        [sys.executable, "-c", f"from ultra.files import try_lock; print(try_lock({str(tmp_path / 'x.lock')!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert held.stdout.strip() == "None"  # another process sees it held
    first.release()
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from ultra.files import try_lock; print(try_lock({str(tmp_path / 'x.lock')!r}) is not None)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.strip() == "True"
