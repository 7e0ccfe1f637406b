"""The sections of the stages after pretraining: convert, finetune, evaluate, study."""

from __future__ import annotations

from dataclasses import dataclass

from kobert_pretrain.config.options import GIVE_INPUT, GIVE_OUT, bounds_problems, missing_problems, opt
from kobert_pretrain.config.pretraining import SPM_MODEL_TYPES


@dataclass
class ConvertConfig:
    """Stage 4, `kobert-pretrain convert`: a checkpoint to a Hugging Face directory (and ONNX)."""

    source: str = opt("", "checkpoint directory, or a run directory (its newest intact checkpoint)")
    out: str = opt("", "output directory; must be new or empty")
    vocab: str = opt("", "vocabulary directory; empty = the one recorded with the run's shards")
    onnx: bool = opt(False, "also export model.onnx and check it with onnxruntime")
    opset: int = opt(17, "ONNX opset version", min=11, max=21)
    parity_batches: int = opt(3, "random padded batches compared between MXNet, PyTorch and ONNX", min=1)
    tolerance: float = opt(1e-4, "largest allowed absolute difference (float32) in any compared output",
                           min=0, open_min=True)
    seed: int = opt(0, "seed of the parity batches")

    def validate(self) -> list[str]:
        problems = missing_problems("convert", self, source="give a checkpoint or run directory", out=GIVE_OUT)
        return problems + bounds_problems("convert", self)


# The benchmarks Korean BERTs are judged by, as names for their task kinds (`--task nsmc`).
FINETUNE_TASK_ALIASES = {"nsmc": "sentence-classification", "kornli": "pair-classification",
                         "korsts": "pair-regression"}
FINETUNE_TASKS = ("auto", "sentence-classification", "pair-classification", "pair-regression",
                  *FINETUNE_TASK_ALIASES)
FINETUNE_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class FinetuneConfig:
    """Stage 5, `kobert-pretrain finetune`: a release fine-tuned on a labelled Korean task (PyTorch).

    Defaults follow KoBERT's NSMC recipe (max length 64, batch 64, 5 epochs, lr 5e-5, warm-up 10%, clip 1).
    """

    release: str = opt("", "release directory written by `kobert-pretrain convert`")
    out: str = opt("", "output directory for results.json and results.md; must be new or empty")
    task: str = opt("auto", "auto (from the header), sentence-classification, pair-classification or "
                            "pair-regression; nsmc, kornli, korsts name the same three", choices=FINETUNE_TASKS)
    train: str = opt("", "training file: tab-separated, header row (NSMC, KorNLI or KorSTS format)")
    dev: str = opt("", "development file, same columns: picks the best epoch")
    test: str = opt("", "test file, same columns; scored once, at the epoch chosen on dev; empty = none")
    text_column: str = opt("", "column of the (first) sentence; empty = document (sentence tasks) or sentence1")
    text_pair_column: str = opt("", "column of the second sentence of pair tasks; empty = sentence2")
    label_column: str = opt("", "column of the label; empty = label, gold_label or score (by task)")
    labels: list[str] = opt([], "class labels in id order; empty = the training file's labels, sorted "
                                "(numerically when all are integers)")
    max_seq_length: int = opt(64, "tokens per example, [CLS] and [SEP] included; longer ones are truncated",
                              min=8, max=65535)
    batch_size: int = opt(64, "training examples per optimizer step", min=1)
    eval_batch_size: int = opt(256, "examples per forward pass on dev and test", min=1)
    epochs: int = opt(5, "passes over the training file; the best one on dev is kept", min=1)
    lr: float = opt(5e-5, "peak learning rate of AdamW", min=0, open_min=True)
    warmup_ratio: float = opt(0.1, "fraction of all steps with linear warm-up from 0 to lr; then linear decay to 0",
                              min=0, max=1, open_max=True)
    weight_decay: float = opt(0.01, "decoupled weight decay; not applied to LayerNorm weights and biases", min=0)
    clip_grad_norm: float = opt(1.0, "clip the global gradient norm to this; 0 = off", min=0)
    seeds: list[int] = opt([1], "seeds, one fine-tuning run each (classifier init, dropout, data order); "
                                "reports give mean +- sd over them")
    from_scratch: bool = opt(False, "also fine-tune the same architecture and tokenizer from random weights with "
                                    "the same recipe: the baseline shown beside the pretrained score")
    device: str = opt("auto", "auto (cuda when torch.cuda.is_available()), cpu or cuda", choices=FINETUNE_DEVICES)
    max_train_examples: int = opt(0, "use only the first N training examples; 0 = all", min=0, note="0 = all")
    cpu_threads: int = opt(0, "torch CPU threads (torch.set_num_threads); 0 = torch's default, one per core",
                           min=0, note="0 = torch's default")

    def validate(self) -> list[str]:
        """The recipe. The paths (release, out, train, dev) are checked by `finetune` and `evaluate`, which
        report them together with these problems: `evaluate` fills release and out per checkpoint."""
        problems = bounds_problems("finetune", self)
        if not self.seeds:
            problems.append("finetune.seeds: give at least one seed, e.g. --seeds 1,2,3")
        elif len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            problems.append(f"finetune.seeds={','.join(map(str, self.seeds))}: must be distinct and >= 0")
        if len(set(self.labels)) != len(self.labels):
            problems.append("finetune.labels: a label is listed twice")
        return problems


@dataclass
class EvaluateConfig:
    """`kobert-pretrain evaluate`: convert and fine-tune checkpoints of a run (the recipe is [finetune])."""

    run_dir: str = opt("", "run directory of `kobert-pretrain train`")
    out: str = opt("", "output directory (evaluate.json, evaluate.png, one folder per step); "
                       "empty = RUN_DIR/evaluate; re-running skips the steps already there")
    every: int = opt(0, "evaluate the checkpoints whose step is a multiple of this; 0 = see steps", min=0)
    steps: list[int] = opt([], "evaluate exactly these steps, e.g. 1000,5000; empty (and every = 0) = all kept")
    vocab: str = opt("", "vocabulary directory for convert; empty = the one recorded with the run's shards")

    def validate(self) -> list[str]:
        """The selection; the run directory is checked by `evaluate`."""
        problems = bounds_problems("evaluate", self)
        if self.every and self.steps:
            problems.append("evaluate: give --every K or --steps N,M,..., not both")
        if any(s < 0 for s in self.steps):
            problems.append("evaluate.steps: steps must be >= 0")
        return problems


@dataclass
class StudyConfig:
    """`kobert-pretrain study vocab`: the same model pretrained with each candidate vocabulary, measured alike.

    Every other section is the recipe each candidate follows ([vocab] but its size and type, [shards],
    [model], [train], [log], [checkpoint], [convert], and [finetune] when a task is given).
    """

    input: list[str] = opt([], "text files, globs or directories in the BERT input convention (one sentence per "
                               "line, a blank line between documents)")
    out: str = opt("", "study directory; re-running resumes it and re-uses finished candidates")
    sizes: list[int] = opt([4000, 8002, 16000, 32000], "vocabulary sizes to compare, specials included")
    model_types: list[str] = opt(["unigram"], "SentencePiece algorithms to compare: unigram and/or bpe")
    steps: int = opt(0, "optimizer steps per candidate; 0 = train.max_steps", min=0)
    evaluations: int = opt(10, "held-out evaluations per candidate, evenly spaced (the learning curve)", min=1)
    heldout_every: int = opt(50, "every N-th document is held out (never trained on): the measured text", min=2)
    heldout_max_mb: float = opt(4.0, "at most this much held-out text (MB of UTF-8); later documents train",
                                min=0, open_min=True)
    stats_max_mb: float = opt(4.0, "held-out text read for the tokenization statistics (MB)", min=0,
                              open_min=True)
    latency_batch: int = opt(32, "held-out sentences per ONNX inference batch", min=1)
    latency_repeats: int = opt(20, "timed ONNX runs per candidate (after 3 warm-up runs); the median is shown",
                               min=1)
    latency_threads: int = opt(1, "onnxruntime intra-op threads for the latency measurement", min=1)

    def validate(self) -> list[str]:
        problems = missing_problems("study", self, input=GIVE_INPUT, out="give a study directory with --out",
                                    sizes="give at least one size, e.g. --sizes 4000,8002")
        if self.sizes and (len(set(self.sizes)) != len(self.sizes) or min(self.sizes) <= 5):
            problems.append(f"study.sizes={','.join(map(str, self.sizes))}: must be distinct and > 5 "
                            "(5 ids are special tokens)")
        bad = [t for t in self.model_types if t not in SPM_MODEL_TYPES]
        if not self.model_types or bad or len(set(self.model_types)) != len(self.model_types):
            problems.append(f"study.model_types={','.join(self.model_types)}: give distinct values of "
                            f"{', '.join(SPM_MODEL_TYPES)}")
        return problems + bounds_problems("study", self)
