"""Model definitions: the backbone contract and registry (`backbone`), the Qwen2.5-VL backbone
(`qwen2_5_vl`), the KV-cache sampler (`sampling`), Stage 3's GR00T-N1.5 flow-matching head
(`action_head`) and the debug stage's model (`debug_lm`)."""
