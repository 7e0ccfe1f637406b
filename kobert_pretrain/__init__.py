"""kobert-pretrain: raw text to a released BERT.

The pipeline, one module per stage:

    prepare -> cleaned, deduplicated, sentence-split corpus  (kobert_pretrain.prepare)
               and a data report
    vocab   -> SentencePiece model with fixed special ids   (kobert_pretrain.vocab)
    shards  -> NSP pairs and masked-LM instances on disk     (kobert_pretrain.shards)
    train   -> Horovod-distributed GluonNLP BERT, with        (kobert_pretrain.train,
               checkpoints it can always resume from          kobert_pretrain.checkpoint)
    convert -> Hugging Face (PyTorch) and ONNX releases       (kobert_pretrain.convert)
    finetune -> downstream scores of a release or a run's     (kobert_pretrain.finetune)
               checkpoints, beside a from-scratch baseline

Every stage is one importable function that takes its config dataclass
(`kobert_pretrain.config`) and returns the path it wrote; `kobert-pretrain`
(`kobert_pretrain.cli`) only parses arguments and dispatches.
"""

__version__ = "0.1.0"
