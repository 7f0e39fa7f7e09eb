"""FAST action tokens: DCT + quantisation + BPE codec, and the bridge to the MLLM's `<action_k>` tokens."""

from roboalign_jax.fast import dct  # the module: dct.dct / dct.idct (JAX), dct.dct_numpy / dct.idct_numpy
from roboalign_jax.fast.tokenizer import FASTTokenizer
from roboalign_jax.fast.vocab import (ACTION_END, ACTION_START, NUM_ACTION_TOKENS, ActionVocab, action_token,
                                      action_token_strings, fast_ids_to_text, text_to_fast_ids)

__all__ = [
    "ACTION_END",
    "ACTION_START",
    "NUM_ACTION_TOKENS",
    "ActionVocab",
    "FASTTokenizer",
    "action_token",
    "action_token_strings",
    "dct",
    "fast_ids_to_text",
    "text_to_fast_ids",
]
