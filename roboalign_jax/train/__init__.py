"""Trainers per stage and the machinery they share (state, optimiser, checkpoints, metrics)."""
