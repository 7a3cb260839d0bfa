"""A training run: the config, the run folder, and fit -> readouts -> export -> evaluation.

- ``config``: the training config (LightningCLI: the head's solver, the data module, the trainer, the readouts).
- ``run_folder``: the run folder's identity (its settings), resume from ``last.ckpt``, atomic checkpoints.
- ``pipeline``: one run from a config, or one per seed with the summary over seeds.
"""
