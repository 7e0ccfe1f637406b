"""Stage 4: a trained checkpoint -> a Hugging Face (PyTorch) release and, optionally, ONNX.

    keymap.py     the Gluon -> Hugging Face name table (raises on unknown or missing keys)
    release.py    `convert(cfg)`: weights, config, tokenizer, parity checks, model card
    tokenizer.py  the fast tokenizer: SentencePiece's normalization rebuilt from tokenizers' parts, [MASK] in text
"""

from kobert_pretrain.convert.release import convert

__all__ = ["convert"]
