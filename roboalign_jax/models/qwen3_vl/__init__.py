"""Qwen3-VL in Flax Linen, numerically equal to HF transformers' `Qwen3VLForConditionalGeneration`.
See `model.py` for the forward and KV-cache API (the same calls as `models/qwen2_5_vl`)."""
