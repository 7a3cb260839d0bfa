"""Evaluate an inference checkpoint (see ``python eval.py --help``); same as the ``ultra-eval`` command."""
from ultra.cli.evaluate import main

if __name__ == "__main__":
    main()
