"""Model definitions: the Qwen2.5-VL backbone (`qwen2_5_vl`)."""
