"""RoboAlign in JAX/Flax: align a multimodal LLM to robot actions (FAST tokens, SFT, GRPO),
then train a flow-matching VLA head on its frozen hidden states."""

__version__ = "0.1.0"
