"""Evaluation harnesses and run reports."""
