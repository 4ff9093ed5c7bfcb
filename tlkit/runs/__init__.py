"""Run directories: what training writes and everything that reads it back.

- :mod:`~tlkit.runs.rundir`: the run directory's layout, ``config.json``, weights (safetensors), metrics and the
  writer lock;
- :mod:`~tlkit.runs.metrics`: :class:`ClassificationReport`, the one result object of train, finetune and evaluate;
- :mod:`~tlkit.runs.plots`: training curves and confusion matrices.

Head training (:mod:`tlkit.heads`) and fine-tuning (:mod:`tlkit.finetuning`) write runs; :mod:`tlkit.inference`
reads them. Importing this package does not import torch.
"""

from tlkit.runs.metrics import ClassificationReport, classification_report
from tlkit.runs.rundir import new_config, read_config, run_lock

__all__ = ["ClassificationReport", "classification_report", "new_config", "read_config", "run_lock"]
