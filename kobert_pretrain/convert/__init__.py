"""Stage 4: a trained checkpoint -> a Hugging Face (PyTorch) release and, optionally, ONNX.

    keymap.py      the Gluon -> Hugging Face name table (raises on unknown or missing keys)
    parity.py      the parity batches and the MXNet vs PyTorch comparison of every layer and head
    release.py     `convert(cfg)`: weights, config, tokenizer, the checks, written atomically
    onnx_export.py model.onnx, checked against PyTorch with onnxruntime
    model_card.py  the release's README.md
    tokenizer.py   the fast tokenizer: SentencePiece's normalization rebuilt from tokenizers' parts, [MASK] in text
"""

from kobert_pretrain.convert.release import convert

__all__ = ["convert"]
