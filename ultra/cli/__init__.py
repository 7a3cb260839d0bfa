"""Console entry points (train, evaluate, segment, select) and their common error handling."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from ..crf import CRFUnavailable
from ..data.io import DataError
from ..inference import CheckpointError
from ..weights import WeightsError

USER_ERRORS = (DataError, CheckpointError, WeightsError, CRFUnavailable, FileExistsError, FileNotFoundError, ValueError, KeyError)


def console(run: Callable[[list[str] | None], object], prog: str) -> Callable[[list[str] | None], None]:
    """Wrap ``run(args)`` as a console entry point: user errors print one line and exit with status 2."""
    def main(args: list[str] | None = None) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            run(args)
        except USER_ERRORS as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(2)

    main.__doc__ = f"Console entry point of {prog}."
    return main
