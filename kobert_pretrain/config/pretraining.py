"""The sections of the pretraining stages: prepare, vocab, shards, model, train, log, checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from kobert_pretrain.config.options import GIVE_INPUT, GIVE_OUT, bounds_problems, missing_problems, opt, to_dict


SPM_MODEL_TYPES = ("unigram", "bpe")
SPM_NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")


PREPARE_FORMATS = ("auto", "text", "jsonl", "csv")
TEXT_DOCUMENTS = ("blank_line", "line")
SPLITTERS = ("kiwi", "rule")


@dataclass
class PrepareConfig:
    """Stage 0, `kobert-pretrain prepare`: raw documents -> cleaned, deduplicated, sentence-split corpus + report."""

    input: list[str] = opt([], "raw files, globs or directories: text, JSONL or CSV, optionally gzip/bzip2/xz/zstd")
    out: str = opt("", "output directory (text/part-NNNNN.txt, report.json, report.html); must be new or empty")
    format: str = opt("auto", "auto (by file name: .jsonl/.json/.ndjson, .csv, .tsv, else text), text, jsonl or csv")
    text_field: str = opt(
        "", "JSONL key or CSV column holding the document; empty = the first of text, body, content, 내용, 본문")
    text_documents: str = opt("blank_line", "plain text: blank_line (a blank line ends a document) or line "
                                            "(every line is a document)")
    normalize: bool = opt(True, "filter normalize: Unicode NFC; remove control and zero-width characters")
    strip_html: bool = opt(True, "filter html: remove tags, decode entities (&amp; &nbsp; &#39;)")
    remove_urls: bool = opt(True, "filter url: remove http(s):// and www. addresses")
    remove_emails: bool = opt(True, "filter email: remove e-mail addresses")
    scrub_pii: bool = opt(False, "filter pii: remove phone numbers and resident-registration-like numbers")
    max_char_repeat: int = opt(3, "filter repeat: cap runs of one character (not digits) at this length; 0 = off")
    boilerplate_min_docs: int = opt(
        10, "filter boilerplate: drop a line found in at least this many documents; 0 = off")
    min_sentence_chars: int = opt(2, "filter short_sentence: drop sentences with fewer non-space characters")
    min_sentence_hangul: float = opt(
        0.0, "filter sentence_hangul: drop sentences whose share of Hangul in non-space characters is lower; 0 = off")
    min_document_chars: int = opt(20, "filter short_document: drop documents with fewer non-space characters")
    min_document_hangul: float = opt(
        0.0, "filter document_hangul: drop documents whose share of Hangul in non-space characters is lower; 0 = off")
    dedup_documents: bool = opt(True, "drop exact duplicate documents (after cleaning); the first in input order stays")
    near_dup_threshold: float = opt(
        0.8, "drop documents whose MinHash Jaccard estimate with an earlier one is at least this; 0 = off")
    minhash_num_perm: int = opt(128, "MinHash permutations per document (signature: 4 bytes each)")
    minhash_ngram: int = opt(5, "characters per MinHash shingle (whitespace collapsed)")
    dedup_sentences: bool = opt(True, "drop exact duplicate sentences of at least dedup_sentence_min_chars")
    dedup_sentence_min_chars: int = opt(
        30, "shortest sentence (non-space characters) deduplicated; shorter ones (\"네.\") may repeat")
    splitter: str = opt("kiwi", "sentence splitter: kiwi (kiwipiepy split_into_sents) or rule (after . ? ! and "
                                "whitespace, as shards)")
    chunk_mb: float = opt(8.0, "input per task, in MB: bounds worker memory; compressed and CSV files are one task")
    part_mb: float = opt(64.0, "largest output part, in MB (a longer single document gets a part of its own)")
    samples_per_filter: int = opt(8, "removed-text samples per filter in the report")
    workers: int = opt(1, "worker processes on this machine (under horovodrun: per rank)")
    seed: int = opt(1, "seed of the MinHash permutations and the report's samples")

    def validate(self) -> list[str]:
        problems = missing_problems("prepare", self, input=GIVE_INPUT, out=GIVE_OUT)
        for name, allowed in (("format", PREPARE_FORMATS), ("text_documents", TEXT_DOCUMENTS),
                              ("splitter", SPLITTERS)):
            if getattr(self, name) not in allowed:
                problems.append(f"prepare.{name}={getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        for name in ("max_char_repeat", "boilerplate_min_docs", "min_sentence_chars", "min_document_chars",
                     "dedup_sentence_min_chars", "samples_per_filter", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"prepare.{name}={getattr(self, name)}: must be >= 0")
        if self.boilerplate_min_docs == 1:
            problems.append("prepare.boilerplate_min_docs=1: would drop every line; use >= 2, or 0 for off")
        for name in ("min_sentence_hangul", "min_document_hangul", "near_dup_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"prepare.{name}={getattr(self, name)}: must be in [0, 1]")
        if self.near_dup_threshold and not 0.5 <= self.near_dup_threshold <= 0.99:
            problems.append(f"prepare.near_dup_threshold={self.near_dup_threshold}: must be 0 (off) or in [0.5, 0.99]")
        if not 16 <= self.minhash_num_perm <= 512:
            problems.append(f"prepare.minhash_num_perm={self.minhash_num_perm}: must be in [16, 512]")
        if not 1 <= self.minhash_ngram <= 32:
            problems.append(f"prepare.minhash_ngram={self.minhash_ngram}: must be in [1, 32]")
        for name in ("chunk_mb", "part_mb"):
            if getattr(self, name) <= 0:
                problems.append(f"prepare.{name}={getattr(self, name)}: must be > 0")
        if self.workers < 1:
            problems.append(f"prepare.workers={self.workers}: must be >= 1")
        return problems

    # Where and how fast to run, not what to produce: output bytes do not depend on these.
    RUN_LOCAL = ("input", "out", "workers")

    def generation_dict(self) -> dict:
        return {k: v for k, v in to_dict(self).items() if k not in self.RUN_LOCAL}


@dataclass
class VocabConfig:
    """Stage 1, `kobert-pretrain vocab`. Field names are SentencePiece's spm_train flags."""

    input: list[str] = opt([], "text files, globs or directories: UTF-8, one sentence per line")
    out: str = opt("", "output directory; must be new or empty")
    vocab_size: int = opt(8002, "pieces in the vocabulary, the 5 special tokens included (KoBERT: 8002)",
                          min=5, open_min=True, note="5 ids are special tokens")
    model_type: str = opt("unigram", "SentencePiece algorithm: unigram or bpe", choices=SPM_MODEL_TYPES)
    character_coverage: float = opt(0.9995, "fraction of characters the vocabulary covers; the rest become [UNK]",
                                    min=0.5, max=1.0)
    normalization_rule_name: str = opt(
        "nmt_nfkc", "Unicode normalization: nmt_nfkc, nfkc, identity (keeps compatibility jamo such as ㅋㅋ), ...",
        choices=SPM_NORMALIZATIONS
    )
    input_sentence_size: int = opt(
        10_000_000, "sentences sampled for training, 0 = all; bounds memory (about 200 bytes each)",
        min=0
    )
    shuffle_input_sentence: bool = opt(True, "sample input_sentence_size sentences uniformly, not the first ones")
    max_sentence_length: int = opt(16384, "longest sentence used for training, in UTF-8 bytes; longer are skipped",
                                   min=1)
    max_sentencepiece_length: int = opt(16, "longest piece, in characters", min=1, max=512)
    split_digits: bool = opt(False, "split runs of digits into single-digit pieces")
    byte_fallback: bool = opt(False, "encode unknown characters as UTF-8 byte pieces instead of [UNK]")
    num_threads: int = opt(
        16, "training threads; fixed by default because SentencePiece's result depends on the thread count",
        min=1
    )
    seed: int = opt(42, "seed of SentencePiece's sentence sampling", min=0)

    def validate(self) -> list[str]:
        problems = missing_problems("vocab", self, input=GIVE_INPUT, out=GIVE_OUT)
        return problems + bounds_problems("vocab", self)


INPUT_FORMATS = ("sentences", "documents")
MASKING_MODES = ("dynamic", "static")


@dataclass
class ShardsConfig:
    """Stage 2, `kobert-pretrain shards`: NSP pairs and masked-LM instances (google-research/bert semantics)."""

    input: list[str] = opt([], "text files, globs or directories: UTF-8, see input_format")
    vocab: str = opt("", "vocabulary directory written by `kobert-pretrain vocab`")
    out: str = opt("", "output directory for the shard set; a re-run with the same arguments resumes it")
    input_format: str = opt(
        "sentences", "sentences: one sentence per line, blank line between documents; documents: one document "
        "per line, split into sentences after . ? ! and whitespace",
        choices=INPUT_FORMATS
    )
    max_seq_length: int = opt(128, "tokens per instance, [CLS] and both [SEP] included", min=8, max=65535)
    dupe_factor: int = opt(5, "passes over the corpus, each with other pairings (google: 10, GluonNLP: 5)", min=1)
    short_seq_prob: float = opt(0.1, "probability of a shorter target length, drawn from [2, max_seq_length - 3]",
                                min=0, max=1)
    random_next_prob: float = opt(0.5, "probability that segment B comes from another document (NSP label 1)",
                                  min=0, max=1)
    masking: str = opt("dynamic", "dynamic: the loader draws new masks every epoch; static: masks in the shards",
                       choices=MASKING_MODES)
    masked_lm_prob: float = opt(0.15, "fraction of tokens to predict, before the max_predictions_per_seq cap",
                                min=0, max=1, open_min=True, open_max=True)
    max_predictions_per_seq: int = opt(20, "masked positions per instance at most (20 at seq 128, 80 at 512)")
    whole_word_mask: bool = opt(False, "mask whole words: a piece starting with '\u2581' and its continuations")
    num_shards: int = opt(0, "shard files; 0 = enough for about target_shard_mb each, rounded to num_shards_multiple",
                          min=0, note="0 = automatic")
    num_shards_multiple: int = opt(8, "with num_shards = 0, make the count a multiple of this (readers per set)", min=1)
    target_shard_mb: float = opt(256.0, "with num_shards = 0, approximate token data per shard, in MB",
                                 min=0, open_min=True)
    chunk_mb: float = opt(
        4.0, "input text per generation task, in MB: bounds worker memory and the random-next document pool",
        min=0, open_min=True
    )
    workers: int = opt(1, "worker processes on this machine (under horovodrun: per rank)", min=1)
    seed: int = opt(12345, "seed of pairing, truncation, static masks and shuffling", min=0)

    def validate(self) -> list[str]:
        problems = missing_problems("shards", self, input=GIVE_INPUT,
                                    vocab="give the vocabulary directory with --vocab", out=GIVE_OUT)
        problems += bounds_problems("shards", self)
        if not 1 <= self.max_predictions_per_seq <= self.max_seq_length - 3:
            problems.append(
                f"shards.max_predictions_per_seq={self.max_predictions_per_seq}: must be in [1, max_seq_length - 3]"
            )
        return problems

    # Fields that say where and how fast to run, not what to produce: they are left out
    # of the shard set's fingerprint and config.json, so output bytes do not depend on them.
    RUN_LOCAL = ("out", "workers")

    def generation_dict(self) -> dict:
        return {k: v for k, v in to_dict(self).items() if k not in self.RUN_LOCAL}


# name: (num_layers, units, hidden_size, num_heads, max_length)
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "debug": (2, 64, 256, 2, 128),
    "small": (4, 512, 2048, 8, 512),  # Google's compact BERT-Small (L=4, H=512)
    "base": (12, 768, 3072, 12, 512),  # KoBERT / BERT-base
    "large": (24, 1024, 4096, 16, 512),
}
MODEL_PRESETS = tuple(PRESETS)


@dataclass
class ModelConfig:
    """The BERT shape: a preset, with any field overridable (0 = take the preset's value)."""

    preset: str = opt("base", "debug (2 x 64), small (4 x 512), base (12 x 768, KoBERT), large (24 x 1024)",
                      choices=MODEL_PRESETS)
    num_layers: int = opt(0, "transformer layers; 0 = preset", min=0, note="0 = preset")
    units: int = opt(0, "hidden size of the model; 0 = preset", min=0, note="0 = preset")
    hidden_size: int = opt(0, "feed-forward inner size; 0 = preset", min=0, note="0 = preset")
    num_heads: int = opt(0, "attention heads; 0 = preset", min=0, note="0 = preset")
    max_length: int = opt(0, "position embeddings (longest sequence); 0 = preset", min=0, note="0 = preset")
    dropout: float = opt(0.1, "dropout probability in embeddings, attention and feed-forward",
                         min=0, max=1, open_max=True)
    use_nsp: bool = opt(True, "train the next-sentence head; false = MLM only")

    def resolved(self) -> dict:
        """The shape with preset values filled in."""
        layers, units, hidden, heads, length = PRESETS.get(self.preset, (0, 0, 0, 0, 0))
        return {
            "num_layers": self.num_layers or layers,
            "units": self.units or units,
            "hidden_size": self.hidden_size or hidden,
            "num_heads": self.num_heads or heads,
            "max_length": self.max_length or length,
        }

    def validate(self) -> list[str]:
        problems = bounds_problems("model", self)
        if self.preset not in MODEL_PRESETS:
            return problems
        shape = self.resolved()
        if shape["num_heads"] > 0 and shape["units"] % shape["num_heads"]:
            problems.append(f"model: units {shape['units']} is not divisible by num_heads {shape['num_heads']}")
        return problems


OPTIMIZERS = ("lamb", "bertadam")
DECAYS = ("linear", "poly")
DTYPES = ("float32", "float16")
DEVICES = ("auto", "cpu", "gpu")


@dataclass
class TrainConfig:
    """Stage 3, `kobert-pretrain train`: data, batch, optimizer, schedule, precision."""

    shards: str = opt("", "shard directory for phase 1")
    out: str = opt("", "run directory: metrics.jsonl, checkpoints/, config.json")
    vocab: str = opt("", "vocabulary directory; empty = the one recorded in the shards' config")
    eval_shards: str = opt("", "held-out shard directory for evaluation; empty = no evaluation")
    max_steps: int = opt(1000, "optimizer steps in total (both phases)", min=1)
    micro_batch_size: int = opt(32, "sequences per rank per forward/backward", min=1)
    global_batch_size: int = opt(0, "sequences per optimizer step over all ranks; 0 = micro x ranks", min=0)
    phase2_shards: str = opt("", "shard directory for phase 2 (e.g. seq 512); empty = one phase")
    phase2_start_step: int = opt(0, "step at which phase 2 begins (0 = no phase 2)", min=0)
    phase2_micro_batch_size: int = opt(0, "micro batch in phase 2; 0 = micro_batch_size", min=0)
    phase2_global_batch_size: int = opt(0, "global batch in phase 2; 0 = global_batch_size", min=0)
    optimizer: str = opt("lamb", "lamb (MXNet's LAMB) or bertadam (GluonNLP's Adam with decoupled weight decay)",
                         choices=OPTIMIZERS)
    lr: float = opt(1e-4, "peak learning rate", min=0, open_min=True)
    warmup_steps: int = opt(100, "steps of linear warm-up from 0 to lr", min=0)
    decay: str = opt("linear", "after warm-up: linear or poly (power decay_power) down to end_lr at max_steps",
                     choices=DECAYS)
    decay_power: float = opt(1.0, "exponent of the poly decay")
    end_lr: float = opt(0.0, "learning rate at max_steps")
    weight_decay: float = opt(0.01, "decoupled weight decay; not applied to LayerNorm and biases", min=0)
    beta1: float = opt(0.9, "first-moment decay")
    beta2: float = opt(0.999, "second-moment decay")
    epsilon: float = opt(1e-6, "optimizer epsilon")
    clip_grad_norm: float = opt(1.0, "clip the global gradient norm to this (over all ranks); 0 = off", min=0)
    dtype: str = opt("float32", "float32, or float16 (GPU: fp16 compute, fp32 master weights, loss scaling)",
                     choices=DTYPES)
    loss_scale: float = opt(1024.0, "initial dynamic loss scale for float16 (GluonNLP: 2^10)",
                            min=1, max=2 ** 24, shown="[1, 2^24]")
    loss_scale_window: int = opt(2000, "steps without overflow before the loss scale doubles", min=1)
    max_skipped_steps: int = opt(
        50, "stop as diverged after this many steps in a row with non-finite gradients (each is skipped); "
            "0 = never stop", min=0)
    device: str = opt("auto", "auto (GPU local_rank if any), cpu or gpu", choices=DEVICES)
    fp16_allreduce: bool = opt(False, "compress float32 gradients to fp16 for the allreduce (Horovod); "
                                      "float16 runs allreduce fp16 already")
    allreduce_groups: int = opt(0, "Horovod grouped allreduce: number of groups; 0 = one allreduce per tensor", min=0)
    eval_interval: int = opt(0, "steps between evaluations; 0 = only at the end (if eval_shards)", min=0)
    eval_batches: int = opt(50, "micro-batches per rank per evaluation", min=1)
    bucket_window: int = opt(64, "rounds of micro-batches sorted together by length; 1 = no bucketing", min=1)
    prefetch: int = opt(4, "batches prepared ahead by the loader thread", min=0)
    mxnet_bulk_size: int = opt(0, "operators per MXNet engine push (MXNET_EXEC_BULK_EXEC_MAX_NODE_TRAIN_*); "
                                  "0 = 1000 on CPU (measured: 1.16x), MXNet's own 15 on GPU, where large bulks "
                                  "can hold back the gradient allreduce (measure with scripts/gpu_check.sh)", min=0)
    seed: int = opt(0, "seed of initialisation, data order, dynamic masks and dropout", min=0)

    def validate(self) -> list[str]:
        problems = missing_problems("train", self, shards="give the shard directory with --shards",
                                    out="give a run directory with --out")
        problems += bounds_problems("train", self)
        if not 0 <= self.end_lr <= self.lr:
            problems.append(f"train.end_lr={self.end_lr}: must be in [0, lr]")
        if self.phase2_shards and not self.phase2_start_step:
            problems.append("train.phase2_shards is set but phase2_start_step is 0: say when phase 2 begins")
        elif self.phase2_start_step and not self.phase2_shards:
            problems.append(f"train.phase2_start_step={self.phase2_start_step} needs --train.phase2_shards=DIR "
                            "(the seq-512 shard set)")
        elif self.phase2_start_step and not 0 < self.phase2_start_step < self.max_steps:
            problems.append(f"train.phase2_start_step={self.phase2_start_step}: must be in (0, max_steps)")
        if self.fp16_allreduce and self.dtype == "float16":
            problems.append("train.fp16_allreduce=true does nothing in a float16 run (its gradients are float16 "
                            "already); drop it")
        return problems


@dataclass
class LogConfig:
    """Logging of `kobert-pretrain train`."""

    interval: int = opt(10, "steps between log lines (and metrics.jsonl records)", min=1)
    tensorboard: bool = opt(True, "also write TensorBoard event files when tensorboardX is installed")

    def validate(self) -> list[str]:
        return bounds_problems("log", self)


@dataclass
class CheckpointConfig:
    """Checkpoints of `kobert-pretrain train` (RUN_DIR/checkpoints/step-00001000/)."""

    interval: int = opt(1000, "steps between checkpoints; 0 = only at the end (and on signals)", min=0)
    minutes: float = opt(30.0, "also save when this many minutes passed since the last save; 0 = off", min=0)
    keep_last: int = opt(3, "newest checkpoints kept; older ones are deleted once a newer one is complete", min=1)
    keep_every: int = opt(0, "also keep every checkpoint whose step is a multiple of this (milestones); 0 = none",
                          min=0)

    def validate(self) -> list[str]:
        return bounds_problems("checkpoint", self)
