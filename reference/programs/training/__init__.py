"""Training, for use from code and by the `train` command (reference/programs/train.py):

- settings.py: `TrainConfig`, the presets, the precedence of flags, config file, checkpoint and preset.
- memory.py: the memory a run needs, estimated from its settings, and the refusal of one that cannot fit.
- trainer.py: `Trainer` (the loop, evaluation, checkpoints), `configure_optimizers`, `train()`.
- splits.py: the run's train and val splits, read and checked (`load_splits`), SFT's layouts, DPO's pairs.
- run_log.py: what a run reports: log.jsonl (`LogFile`, `RunLog`) and the progress bar or lines on stderr.

    from reference.programs.training.settings import TrainConfig
    from reference.programs.training.trainer import train
    train(TrainConfig(max_iters=100))
"""
