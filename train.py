"""Train the projection head (see ``python train.py --help``); same as the ``ultra-train`` command."""
from ultra.cli.train import main

if __name__ == "__main__":
    main()
