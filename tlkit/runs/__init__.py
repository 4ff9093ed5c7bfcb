"""Run directories and what uses them: the transfer model, checkpoints, predict, evaluate, export, plots, advice."""
