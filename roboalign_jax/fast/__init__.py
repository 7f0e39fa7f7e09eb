"""FAST action tokens: DCT + quantisation + BPE codec, and the bridge to the MLLM's `<action_k>` tokens."""

from roboalign_jax.fast.vocab import (ACTION_END, ACTION_START, NUM_ACTION_TOKENS, ActionVocab, action_token,
                                      action_token_strings, fast_ids_to_text, text_to_fast_ids)

__all__ = [
    "ACTION_END",
    "ACTION_START",
    "NUM_ACTION_TOKENS",
    "ActionVocab",
    "action_token",
    "action_token_strings",
    "fast_ids_to_text",
    "text_to_fast_ids",
]
