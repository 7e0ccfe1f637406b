"""`kobert-pretrain study vocab`: which vocabulary size to pretrain with, measured (see study/run.py)."""

from kobert_pretrain.study.run import study_vocab

__all__ = ["study_vocab"]
