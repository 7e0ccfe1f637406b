"""Stage 5: does the pretraining work? Downstream scores for a release and for a run's checkpoints.

    tasks.py      task files (NSMC, KorNLI, KorSTS formats): read, checked, labels mapped, task detected
    metrics.py    accuracy, macro-F1, Pearson, Spearman; mean +- sd over seeds
    trainer.py    one fine-tuning run in PyTorch: AdamW, warm-up + linear decay, dev selection, one test pass
    run.py        `finetune(cfg)`: seeds x (pretrained, from scratch) -> results.json, results.md
    report.py     the markdown table and summary lines
    checkpoint_eval.py  `evaluate(ecfg, fcfg)`: convert and fine-tune checkpoints -> evaluate.json, evaluate.png
    demo_task.py  a labelled task from the demo corpus (constitution chapters), for `make demo`

Only trainer.py imports torch at module level, and nothing a training rank imports imports this package.
"""

from kobert_pretrain.finetune.checkpoint_eval import evaluate
from kobert_pretrain.finetune.run import finetune

__all__ = ["evaluate", "finetune"]
