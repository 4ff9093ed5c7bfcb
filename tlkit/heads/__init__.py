"""Heads on cached features: the torch heads, the scikit-learn bridge, probes and head training."""
