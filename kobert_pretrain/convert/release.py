"""`convert(cfg)`: write a Hugging Face directory (and ONNX) that gives the trained model's numbers.

Output (built in a temporary directory, renamed into place only after every check passed):

    config.json, model.safetensors   BertForPreTraining (BertForMaskedLM for MLM-only runs)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, spm.model
    model.onnx                       with --onnx: inputs input_ids, token_type_ids, attention_mask
    conversion_report.json           largest differences MXNet vs PyTorch (every layer) and PyTorch vs ONNX
    README.md                        model card
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from kobert_pretrain.checkpoint import CHECKPOINTS, META, find_checkpoint
from kobert_pretrain.config import ConvertConfig
from kobert_pretrain.convert.keymap import convert_state
from kobert_pretrain.convert.model_card import model_card
from kobert_pretrain.convert.parity import verify_pytorch
from kobert_pretrain.convert.tokenizer import build_tokenizer, check_tokenizer
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.fsutil import atomic_output_dir, default_file_mode, ensure_free_output_dir
from kobert_pretrain.model import ModelShape
from kobert_pretrain.shards.format import INDEX_FILE, ShardSet
from kobert_pretrain.train_state import TrainingState
from kobert_pretrain.vocab import PAD, SPECIAL_IDS, Vocab


def convert(cfg: ConvertConfig) -> Path:
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.out)
    ensure_free_output_dir(out, "convert")
    ckpt, state, arrays = read_checkpoint(cfg.source)
    shape = ModelShape(**state.model_shape)
    vocab = _vocab(cfg, state)
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as e:
        raise UserError(f"conversion needs the convert extra ({e}): pip install -e '.[convert]'") from None
    # save_pretrained's "Writing model shards" bar would precede every error line and the final report.
    transformers.utils.logging.disable_progress_bar()

    params = {k: v.astype("float32").asnumpy() for k, v in arrays.items()}
    with atomic_output_dir(out, "convert") as tmp:
        model = _to_pytorch(params, shape, vocab)
        report = {"checkpoint": str(ckpt.path), "step": state.step, "tolerance": cfg.tolerance}
        report["mxnet_vs_pytorch"] = verify_pytorch(arrays, shape, model, cfg)
        model.save_pretrained(str(tmp))
        tokenizer = build_tokenizer(vocab, shape.max_length)
        report["tokenizer_texts_checked"] = check_tokenizer(tokenizer, vocab.sp)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "spm.model").write_bytes((vocab.path / "spm.model").read_bytes())
        if cfg.onnx:
            from kobert_pretrain.convert.onnx_export import export_onnx

            report["pytorch_vs_onnx"] = export_onnx(model, shape, tmp / "model.onnx", cfg)
        (tmp / "conversion_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(ckpt, state, shape, report), encoding="utf-8")
        # safetensors creates model.safetensors with mode 0600; a release is read by others like its other files.
        mode = default_file_mode()
        for f in tmp.iterdir():
            if f.is_file():
                f.chmod(mode)
    worst = max(v for section in ("mxnet_vs_pytorch", "pytorch_vs_onnx") for v in report.get(section, {}).values())
    print(f"convert: step {state.step} -> {out} (largest difference {worst:.2e}, tolerance {cfg.tolerance:g})",
          file=sys.stderr)
    return out


def _vocab(cfg: ConvertConfig, state: TrainingState) -> Vocab:
    if cfg.vocab:
        # The user's choice, or an error: never a silent fall-back to the run's vocabulary.
        if not Path(cfg.vocab).exists():
            raise UserError(f"--vocab {cfg.vocab} does not exist; give the directory `vocab --out` wrote")
        return _matching_vocab(cfg.vocab, state)
    candidates = []
    train = state.config.get("train", {})
    if train.get("vocab"):
        candidates.append(train["vocab"])
    shards = train.get("shards")
    if shards and (Path(shards) / INDEX_FILE).is_file():
        # the index alone: the shards need not be intact (or still there) to name their vocabulary
        index = json.loads((Path(shards) / INDEX_FILE).read_text())
        candidates.append(ShardSet(Path(shards), index).recorded_vocab_dir)
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return _matching_vocab(candidate, state)
    raise UserError("cannot find the run's vocabulary directory (recorded: "
                    + (", ".join(c for c in candidates if c) or "none") + "): pass --vocab DIR")


def _matching_vocab(path: str, state: TrainingState) -> Vocab:
    vocab = Vocab.load(path)
    if vocab.sha256 != state.vocab_sha256:
        raise UserError(f"vocabulary {path} is not the one this checkpoint was trained with")
    return vocab


READ_ATTEMPTS = 5


def read_checkpoint(source: str):
    """(checkpoint, training state, Gluon parameters as MXNet arrays by name), read once into memory.

    A run that is still training deletes older checkpoints as it saves (retention keeps `keep_last`), so the
    newest checkpoint can vanish between being found and being read: then the newest intact one is taken
    again, up to READ_ATTEMPTS times. A checkpoint directory given explicitly is not replaced by another.
    """
    path = Path(source)
    explicit = path.parent.name == CHECKPOINTS or (path / META).exists()
    for _ in range(READ_ATTEMPTS):
        before = _checkpoint_names(path)
        try:
            ckpt = find_checkpoint(source)
        except UserError:
            # "none intact" because the one being verified was deleted: the run has saved a newer one since.
            if explicit or _checkpoint_names(path) == before:
                raise
            continue
        try:
            state = ckpt.training_state()
            return ckpt, state, _read_params(ckpt)
        except (OSError, UserError):
            if not _vanished(ckpt):
                raise
        if explicit:
            raise UserError(f"checkpoint {ckpt.path} was deleted while it was being read (by a run still "
                            "training?); convert a checkpoint the run keeps, or a copy") from None
    raise UserError(f"the newest checkpoint of {source} was deleted while it was being read, {READ_ATTEMPTS} "
                    "times in a row (a run saving at every step with --checkpoint.keep_last=1?); convert a copy "
                    "of one of its checkpoints") from None


def _read_params(ckpt):
    """model.params, checked against the checksum the checkpoint was verified with."""
    import mxnet as mx

    return mx.nd.load_frombuffer(ckpt.read_file("model.params"))


def _checkpoint_names(run: Path) -> set[str]:
    try:
        return {p.name for p in (run / CHECKPOINTS).iterdir()}
    except OSError:
        return set()


def _vanished(ckpt) -> bool:
    """Whether (part of) the checkpoint was deleted, as retention does, since it was verified."""
    return not all((ckpt.path / name).is_file() for name in [*ckpt.meta["files"], META])


def hf_config(shape: ModelShape, vocab: Vocab):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.units,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=shape.hidden_size,
        hidden_act="gelu",  # erf GELU, as GluonNLP's
        hidden_dropout_prob=shape.dropout,
        attention_probs_dropout_prob=shape.dropout,
        max_position_embeddings=shape.max_length,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=SPECIAL_IDS[PAD],  # 1 in the KoBERT layout (KoBERT issue 36: released with 0)
        architectures=["BertForPreTraining" if shape.use_nsp else "BertForMaskedLM"],
        tie_word_embeddings=True,
    )


def _to_pytorch(params: dict[str, np.ndarray], shape: ModelShape, vocab: Vocab):
    import torch
    from transformers import BertForMaskedLM, BertForPreTraining

    config = hf_config(shape, vocab)
    model = (BertForPreTraining if shape.use_nsp else BertForMaskedLM)(config)
    if not shape.use_nsp:
        # BertForMaskedLM has no pooler: the pooler trained alongside MLM-only is not exported.
        params = {k: v for k, v in params.items() if not k.startswith("pooler.")}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = convert_state(params, expected)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    tensors.setdefault("cls.predictions.decoder.bias", tensors["cls.predictions.bias"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")]
    if missing or unexpected:
        raise UserError(f"cannot convert: torch reported missing {missing} / unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    return model


