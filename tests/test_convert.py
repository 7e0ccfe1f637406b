"""Stage 4: Hugging Face and ONNX releases give the trained model's numbers; bad checkpoints write nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from kobert_pretrain.checkpoint import CheckpointManager, find_checkpoint  # noqa: E402
from kobert_pretrain.config import ConvertConfig  # noqa: E402
from kobert_pretrain.convert import convert  # noqa: E402
from kobert_pretrain.errors import UserError  # noqa: E402
from kobert_pretrain.train import train  # noqa: E402

from conftest import SHARED_CORPUS, run_cli, train_config  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory, debug_shards):
    run = tmp_path_factory.mktemp("conv") / "run"
    train(train_config(debug_shards, run, f"--train.eval_shards={debug_shards}", "--train.max_steps=30",
                       "--train.lr=1e-2", "--train.eval_batches=2", "--checkpoint.interval=0"))
    return run


@pytest.fixture(scope="module")
def release(tmp_path_factory, trained):
    out = tmp_path_factory.mktemp("rel") / "hf"
    return convert(ConvertConfig(source=str(trained), out=str(out), onnx=True))


def test_release_files_and_config(release, debug_vocab):
    names = {p.name for p in release.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "spm.model",
            "model.onnx", "conversion_report.json", "README.md"} <= names
    config = json.loads((release / "config.json").read_text())
    assert config["vocab_size"] == 1000 and config["pad_token_id"] == 1 and config["hidden_act"] == "gelu"
    assert config["max_position_embeddings"] == 128 and config["layer_norm_eps"] == 1e-12
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 64
    assert config["architectures"] == ["BertForPreTraining"]
    report = json.loads((release / "conversion_report.json").read_text())
    assert set(report["mxnet_vs_pytorch"]) == {"layer_1", "layer_2", "mlm_logits", "pooled_output", "nsp_logits"}
    assert max(report["mxnet_vs_pytorch"].values()) <= 1e-4 and max(report["pytorch_vs_onnx"].values()) <= 1e-4
    card = (release / "README.md").read_text()
    assert "30 steps" in card and "eval_mlm_loss" in card and "fill-mask" in card
    assert "`[MASK]`, `[CLS]`, `[SEP]`, `[UNK]` and `[PAD]` become\nids 4, 2, 3, 0 and 1" in card
    assert report["tokenizer_texts_checked"] == 75


def test_pytorch_matches_mxnet_on_a_fresh_batch(release, trained):
    import mxnet as mx
    import torch
    from transformers import BertForPreTraining

    from kobert_pretrain.model import ModelShape, build_model

    ckpt = find_checkpoint(trained)
    shape = ModelShape(**ckpt.state()["model_shape"])
    net = build_model(shape)
    net.load_parameters(str(ckpt.path / "model.params"))
    model = BertForPreTraining.from_pretrained(str(release)).eval()
    rng = np.random.default_rng(11)
    ids = rng.integers(5, 1000, (3, 20))
    ids[:, 0], ids[:, -1] = 2, 3
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    positions = np.array([[1, 4, 7], [2, 3, 15], [5, 6, 18]])
    _, pooled, nsp, mlm = net(mx.nd.array(ids), mx.nd.array(types), mx.nd.array([20, 20, 20]), mx.nd.array(positions))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types))
    np.testing.assert_allclose(out.prediction_logits.numpy()[np.arange(3)[:, None], positions], mlm.asnumpy(),
                               atol=1e-4)
    np.testing.assert_allclose(out.seq_relationship_logits.numpy(), nsp.asnumpy(), atol=1e-4)


def _korean_lines():
    lines = []
    if SHARED_CORPUS.is_dir():
        for f in sorted(SHARED_CORPUS.rglob("*.txt"))[:25]:
            lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()][:12]
    lines += ["ㅋㅋㅋ 정말 웃기다 ㅎㅎ ㅠㅠ", "2024년 3월 15일, 1,234.5원", "KoBERT는 SKT Brain이 공개했다.",
              "이모지 😀👍🏻 테스트", "  여러   칸   띄어쓰기  ", "\t탭\t문자", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
              "한자 漢字 混用", "``quoted'' text", "e-mail: test@example.com", "…말줄임표와 ‘따옴표’"]
    return lines


def test_autotokenizer_ids_equal_sentencepiece(release, demo_corpus):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(release))
    sp = spm.SentencePieceProcessor(model_file=str(release / "spm.model"))
    lines = _korean_lines() + [ln for ln in demo_corpus.read_text(encoding="utf-8").splitlines() if ln][:150]
    assert len(lines) >= 160
    for line in lines:
        assert tokenizer(line, add_special_tokens=False)["input_ids"] == sp.encode(line), line
    pair = tokenizer("대한민국은 민주공화국이다.", "주권은 국민에게 있다.")
    a, b = sp.encode("대한민국은 민주공화국이다."), sp.encode("주권은 국민에게 있다.")
    assert pair["input_ids"] == [2, *a, 3, *b, 3]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert tokenizer.pad_token_id == 1 and tokenizer.mask_token_id == 4 and tokenizer.unk_token_id == 0
    assert tokenizer("[MASK]", add_special_tokens=False)["input_ids"] == [4]
    assert tokenizer.decode(sp.encode("대한민국 헌법")) == "대한민국 헌법"
    # [MASK] in text is where a masked '▁국민' (one piece of the debug vocabulary) was in training.
    text = "모든 국민은 법 앞에 평등하다."
    assert sp.encode(text, out_type=str).count("▁국민") == 1
    masked = [4 if i == sp.piece_to_id("▁국민") else i for i in sp.encode(text)]
    assert tokenizer(text.replace("국민", "[MASK]"))["input_ids"] == [2, *masked, 3]


def test_stock_classes_and_fill_mask_load(release):
    from transformers import AutoTokenizer, BertForMaskedLM, BertModel, pipeline

    assert BertModel.from_pretrained(str(release)).config.pad_token_id == 1
    BertForMaskedLM.from_pretrained(str(release))
    predictions = pipeline("fill-mask", model=str(release))("대한민국의 주권은 [MASK]에게 있다.", top_k=20)
    assert len(predictions) == 20 and all(0 <= p["score"] <= 1 and 0 <= p["token"] < 1000 for p in predictions)
    # The filled sentence reads as written: a word-start piece after a space, any other piece joined, and no
    # space before '에게' (which continues the word [MASK] stands for).
    tokenizer = AutoTokenizer.from_pretrained(str(release))
    for p in predictions:
        piece = tokenizer.convert_ids_to_tokens(p["token"])
        if p["token"] > 4 and piece != "▁":
            word = (" " + piece[1:]) if piece.startswith("▁") else piece
            assert p["sequence"] == f"대한민국의 주권은{word}에게 있다.", (piece, p["sequence"])


def test_onnx_matches_pytorch(release):
    import onnxruntime
    import torch
    from transformers import BertForPreTraining

    session = onnxruntime.InferenceSession(str(release / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "token_type_ids", "attention_mask"]
    model = BertForPreTraining.from_pretrained(str(release)).eval()
    ids = np.array([[2, 10, 11, 12, 3, 13, 14, 3, 1, 1], [2, 20, 21, 22, 23, 3, 24, 25, 26, 3]])
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 0, 0], [0] * 6 + [1] * 4])
    mask = (ids != 1).astype(np.int64)
    seq, pooled, mlm, nsp = session.run(None, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)
    keep = mask.astype(bool)
    np.testing.assert_allclose(seq[keep], out.hidden_states[-1].numpy()[keep], atol=1e-4)
    np.testing.assert_allclose(mlm[keep], out.prediction_logits.numpy()[keep], atol=1e-4)
    np.testing.assert_allclose(nsp, out.seq_relationship_logits.numpy(), atol=1e-4)
    assert pooled.shape == (2, 64)


def _doctored_run(tmp_path, trained, edit):
    """A copy of the trained run whose newest checkpoint has edited parameters (checksums rewritten)."""
    import mxnet as mx

    ckpt = find_checkpoint(trained)
    params = mx.nd.load(str(ckpt.path / "model.params"))
    edit(params)
    run = tmp_path / "doctored"

    def write(tmp):
        mx.nd.save(str(tmp / "model.params"), params)
        for name in ("optimizer.states", "optimizer.json"):
            shutil.copy(ckpt.path / name, tmp / name)

    CheckpointManager(run).save(ckpt.step, write, ckpt.state())
    return run


@pytest.mark.parametrize("edit,message", [
    (lambda p: p.update({"extra_head.weight": p["pooler.weight"]}), "unknown Gluon parameter(s): extra_head.weight"),
    (lambda p: [p.pop(k) for k in ("classifier.weight", "classifier.bias")], "cls.seq_relationship"),
    (lambda p: p.update({"pooler.bias": p["pooler.bias"][:10]}), "shape mismatch"),
])
def test_bad_checkpoints_write_nothing(tmp_path, trained, edit, message):
    run = _doctored_run(tmp_path, trained, edit)
    result = run_cli("convert", run, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_parity_failure_names_the_first_layer(tmp_path, trained):
    with pytest.raises(UserError, match="layer_1 differs between MXNet and PyTorch"):
        convert(ConvertConfig(source=str(trained), out=str(tmp_path / "out"), tolerance=1e-12))
    assert not (tmp_path / "out").exists()


def _live_run(tmp_path, trained):
    """A copy of the trained run with a second, newer checkpoint, and a function that saves one more."""
    run = tmp_path / "live"
    shutil.copytree(trained, run)

    def save_newer():
        ckpt = find_checkpoint(run)

        def write(tmp):
            for name in ("model.params", "optimizer.states", "optimizer.json"):
                shutil.copy(ckpt.path / name, tmp / name)

        return CheckpointManager(run, keep_last=10).save(ckpt.step + 1, write, {**ckpt.state(), "step": ckpt.step + 1})

    save_newer()
    return run, save_newer


@pytest.mark.parametrize("moment", ["after finding it", "after reading state.json"])
def test_checkpoint_deleted_while_read_falls_back_to_the_newest_intact(tmp_path, trained, monkeypatch, moment):
    """A run still training deletes checkpoints as it saves (retention): convert takes the newest intact one."""
    from kobert_pretrain.convert import release as release_module

    run, _ = _live_run(tmp_path, trained)
    deleted = []

    def delete(path):
        if not deleted:
            deleted.append(path.name)
            shutil.rmtree(path)

    if moment == "after finding it":
        def find(source):
            ckpt = find_checkpoint(source)
            delete(ckpt.path)
            return ckpt

        monkeypatch.setattr(release_module, "find_checkpoint", find)
    else:
        from kobert_pretrain.checkpoint import Checkpoint

        read_file = Checkpoint.read_file

        def read_after_deleting(ckpt, name):  # model.params, read after state.json
            delete(ckpt.path)
            return read_file(ckpt, name)

        monkeypatch.setattr(Checkpoint, "read_file", read_after_deleting)
    out = convert(ConvertConfig(source=str(run), out=str(tmp_path / "hf")))
    assert deleted == ["step-00000031"]
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["step"] == 30 and report["checkpoint"] == str(run / "checkpoints" / "step-00000030")


def test_checkpoint_deleted_while_read_is_a_one_line_error(tmp_path, trained, monkeypatch):
    from kobert_pretrain.convert import release as release_module

    run, save_newer = _live_run(tmp_path, trained)

    def find_then_retention(source):  # a run saving every step with keep_last=1
        ckpt = find_checkpoint(source)
        save_newer()
        shutil.rmtree(ckpt.path)
        return ckpt

    monkeypatch.setattr(release_module, "find_checkpoint", find_then_retention)
    with pytest.raises(UserError) as error:
        convert(ConvertConfig(source=str(run), out=str(tmp_path / "hf")))
    assert str(error.value) == (f"the newest checkpoint of {run} was deleted while it was being read, 5 times in a "
                                "row (a run saving at every step with --checkpoint.keep_last=1?); convert a copy of "
                                "one of its checkpoints")
    explicit = run / "checkpoints" / "step-00000036"
    with pytest.raises(UserError) as error:
        convert(ConvertConfig(source=str(explicit), out=str(tmp_path / "hf")))
    assert str(error.value) == (f"checkpoint {explicit} was deleted while it was being read (by a run still "
                                "training?); convert a checkpoint the run keeps, or a copy")
    assert not (tmp_path / "hf").exists()


def test_mlm_only_run_converts_to_masked_lm(tmp_path, debug_shards):
    from transformers import BertForMaskedLM

    run = tmp_path / "run"
    train(train_config(debug_shards, run, "--model.use_nsp=false", "--train.max_steps=2", "--log.interval=1"))
    out = convert(ConvertConfig(source=str(run), out=str(tmp_path / "hf"), onnx=True))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    BertForMaskedLM.from_pretrained(str(out))
    report = json.loads((out / "conversion_report.json").read_text())
    assert "nsp_logits" not in report["mxnet_vs_pytorch"] and "mlm_logits" in report["pytorch_vs_onnx"]


@pytest.mark.parametrize("fields", [{"normalization_rule_name": "identity"}, {"model_type": "bpe"},
                                    {"byte_fallback": True}])
def test_tokenizer_parity_for_other_vocab_settings(tmp_path, demo_corpus, fields):
    import sentencepiece as spm

    from kobert_pretrain.config import VocabConfig
    from kobert_pretrain.convert.tokenizer import build_tokenizer
    from kobert_pretrain.vocab import Vocab, build_vocab

    corpus = tmp_path / "c.txt"
    corpus.write_text(demo_corpus.read_text(encoding="utf-8") + "\n정말 웃기다 ㅋㅋㅋ ㅎㅎ\nKoBERT 2024\n" * 30,
                      encoding="utf-8")
    vocab = Vocab.load(build_vocab(VocabConfig(input=[str(corpus)], out=str(tmp_path / "v"), vocab_size=1200,
                                               num_threads=2, **fields)))
    tokenizer = build_tokenizer(vocab, 128)
    sp = spm.SentencePieceProcessor(model_file=str(vocab.path / "spm.model"))
    lines = _korean_lines() + [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln][:100]
    for line in lines:
        assert tokenizer(line, add_special_tokens=False)["input_ids"] == sp.encode(line), (fields, line)


def test_release_file_modes_follow_the_umask(release, trained, tmp_path):
    import os
    import stat
    import subprocess
    import sys

    from conftest import ROOT

    mask = os.umask(0)
    os.umask(mask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in release.iterdir()} == \
        {p.name: 0o666 & ~mask for p in release.iterdir()}
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-m", "kobert_pretrain", "convert", str(trained), "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o027))
    assert result.returncode == 0, result.stderr[-2000:]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes


def test_vocab_option_is_used_or_refused_never_ignored(tmp_path, trained, demo_corpus):
    from conftest import assert_one_line_error

    out = tmp_path / "out"
    assert_one_line_error(run_cli("convert", trained, "--vocab", tmp_path / "nope", "--out", out),
                          f"kobert-pretrain: error: --vocab {tmp_path / 'nope'} does not exist; "
                          "give the directory `vocab --out` wrote")
    assert_one_line_error(run_cli("convert", trained, "--vocab", demo_corpus, "--out", out),
                          f"kobert-pretrain: error: {demo_corpus} is a file, not a vocab directory")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("convert", trained, "--vocab", tmp_path / "empty", "--out", out),
                          f"kobert-pretrain: error: {tmp_path / 'empty'} is not a kobert-pretrain vocab directory")
    assert not out.exists()


def test_source_or_out_that_is_a_file(tmp_path, trained, demo_corpus):
    from conftest import assert_one_line_error

    assert_one_line_error(run_cli("convert", demo_corpus, "--out", tmp_path / "out"),
                          f"kobert-pretrain: error: {demo_corpus} is a file, not a run or checkpoint directory")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run_cli("convert", trained, "--out", tmp_path / "afile" / "hf"),
                          f"--out {tmp_path / 'afile' / 'hf'}: {tmp_path / 'afile'} is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_missing_checkpoint_is_named_with_the_ones_there(tmp_path, trained):
    from conftest import assert_one_line_error

    missing = trained / "checkpoints" / "step-00009999"
    there = ", ".join(sorted(p.name for p in (trained / "checkpoints").iterdir()))
    assert_one_line_error(run_cli("convert", missing, "--out", tmp_path / "out"),
                          f"kobert-pretrain: error: not found: {missing} ({trained / 'checkpoints'} holds {there})")
    assert_one_line_error(run_cli("convert", tmp_path / "no-run", "--out", tmp_path / "out"),
                          f"kobert-pretrain: error: not found: {tmp_path / 'no-run'}")
    assert not (tmp_path / "out").exists()


def test_full_disk_leaves_nothing(full_disk, trained):
    from conftest import assert_one_line_error

    assert_one_line_error(run_cli("convert", trained, "--out", full_disk / "hf", "--onnx"),
                          f"kobert-pretrain: error: no space left on device while writing {full_disk / 'hf'}")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
