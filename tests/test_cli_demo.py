"""``ultra-demo``'s command line: its mistakes are one-line errors, and without the demo extra it says how to
install it (the page itself: ``tests/test_demo_app.py``)."""

import socket

import pytest

pytest.importorskip("gradio")

from ultra.cli import demo as demo_cli  # noqa: E402


def test_command_line_mistakes_are_one_line_errors(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo_cli.main(["--checkpoint", str(tiny_checkpoint), "--port", "70000"])
    assert exit_.value.code == 2 and "--port must be in 1-65535, got 70000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo_cli.main(["--checkpoint", str(tiny_checkpoint), "--size", "0"])
    assert "--size must be a positive number of pixels, got 0" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit):
            demo_cli.main(["--checkpoint", str(tiny_checkpoint), "--port", str(port)])
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


def test_without_the_demo_extra_the_command_says_how_to_install_it(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ultra.demo.app", None)  # as if gradio were missing
    with pytest.raises(SystemExit):
        demo_cli.main(["--checkpoint", str(tiny_checkpoint)])
    assert "ultra-demo needs the 'demo' extra: pip install 'ultra-seg[demo]'" in capsys.readouterr().err
