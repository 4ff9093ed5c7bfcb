"""The fine-tuning engine: blocks to unfreeze, schedules, optimiser groups, BatchNorm policy, augmentation, state."""
