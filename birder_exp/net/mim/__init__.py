"""Masked image modeling networks, built around a PreTrainEncoder."""
