"""GPT-1's text pipeline: ftfy, the original standardisation, spaCy's English tokenizer, BPE.

    enc = TextEncoder()                      # release vocabulary: 40,478 pieces
    enc.encode(["Hello world!"])             # [[3570, 1276, 267]]
    enc.special                              # {'_start_': 40478, '_delimiter_': 40479, ...}
"""
from .encoder import ROCSTORIES_SPECIAL, TextEncoder, special_token_ids
from .normalize import normalize, standardize
from .vocab import VocabularyError, load_vocabulary
