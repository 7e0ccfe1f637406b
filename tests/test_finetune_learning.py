"""Stage 5 learns for real: a release of our own pipeline, fine-tuned on an NSMC slice, beats chance on NSMC dev.

The first 500 rows of nsmc_dev.tsv are 55% label 0: a constant prediction scores accuracy 0.55 and macro-F1
0.355, random guessing accuracy 0.50 +- 0.022. The bounds, accuracy and macro-F1 >= 0.58, are beyond both
(3.6 sd above guessing; a constant predictor fails the macro-F1 bound). Measured (seed 1, CPU, torch 2.13):
dev accuracy 0.55, 0.610, 0.624 after epochs 1-3, macro-F1 0.624 at epoch 3. The pretrained-versus-scratch
comparison on the shared corpus is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kobert_pretrain.config import ConvertConfig, FinetuneConfig  # noqa: E402
from kobert_pretrain.convert import convert  # noqa: E402
from kobert_pretrain.finetune import finetune  # noqa: E402
from kobert_pretrain.train import train  # noqa: E402

from conftest import ROOT, train_config  # noqa: E402

SHARED_EVAL = ROOT.parent / "shared" / "eval"


@pytest.fixture(scope="module")
def nsmc(tmp_path_factory):
    if not (SHARED_EVAL / "nsmc_train.tsv").is_file():
        pytest.skip("../shared/eval is not present")
    dev = tmp_path_factory.mktemp("nsmc") / "dev500.tsv"
    dev.write_text("\n".join((SHARED_EVAL / "nsmc_dev.tsv").read_text(encoding="utf-8").splitlines()[:501]) + "\n",
                   encoding="utf-8")
    return SHARED_EVAL / "nsmc_train.tsv", dev


@pytest.fixture(scope="module")
def demo_release(tmp_path_factory, debug_shards):
    """The debug BERT pretrained 20 steps on the demo corpus, converted: vocab -> shards -> train -> convert."""
    root = tmp_path_factory.mktemp("learn")
    train(train_config(debug_shards, root / "run", "--train.max_steps=20", "--train.lr=1e-2",
                       "--checkpoint.interval=0"))
    return convert(ConvertConfig(source=str(root / "run"), out=str(root / "release")))


def test_nsmc_slice_beats_chance(demo_release, nsmc, tmp_path):
    train_file, dev = nsmc
    cfg = FinetuneConfig(release=str(demo_release), out=str(tmp_path / "out"), train=str(train_file), dev=str(dev),
                         max_train_examples=1000, epochs=3, batch_size=16, lr=1e-3, seeds=[1], cpu_threads=1)
    results = json.loads((finetune(cfg) / "results.json").read_text())
    assert results["files"] == {"train": {"path": str(train_file.resolve()), "examples": 1000},
                                "dev": {"path": str(dev.resolve()), "examples": 500}}
    dev_metrics = results["models"]["pretrained"]["seeds"][0]["dev"]
    assert dev_metrics["accuracy"] >= 0.58 and dev_metrics["macro_f1"] >= 0.58, dev_metrics
