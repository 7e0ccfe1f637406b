"""Stage 0, `kobert-pretrain prepare`: raw documents -> cleaned, deduplicated, sentence-split corpus + report.

    readers  raw text, JSONL, CSV (gzip/bzip2/xz/zstd) -> documents; tasks of bounded size
    filters  named, configurable, individually counted cleaning filters
    split    Korean sentence splitting (kiwipiepy) with a round-trip check and a rule fallback
    dedup    exact documents and sentences by hash; near-duplicate documents by MinHash LSH
    output   parts of bounded size in the shards' input convention; output statistics
    report   report.json and report.html (matplotlib plots, samples of removed text)
    workdir  the work directory: fingerprint, results published whole, found again on resume
    tasks    the per-task phases (clean, filter), run by worker processes and ranks
    corpus_wide  the rank-0 phases: boilerplate, deduplication decisions, writing the parts
    build    the phases, workers and Horovod ranks, resume: `prepare(cfg)`
"""

from kobert_pretrain.prepare.build import prepare

__all__ = ["prepare"]
