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
from kobert_pretrain.convert.tokenizer import build_tokenizer, check_tokenizer
from kobert_pretrain.errors import ConfigError, UserError
from kobert_pretrain.fsutil import atomic_output_dir, default_file_mode, ensure_free_output_dir
from kobert_pretrain.model import ModelShape, build_model
from kobert_pretrain.vocab import CLS, PAD, SEP, SPECIAL_IDS, Vocab


def convert(cfg: ConvertConfig) -> Path:
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    out = Path(cfg.out)
    ensure_free_output_dir(out, "convert")
    ckpt, state, arrays = read_checkpoint(cfg.source)
    shape = ModelShape(**state["model_shape"])
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
        report = {"checkpoint": str(ckpt.path), "step": state["step"], "tolerance": cfg.tolerance}
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
    print(f"convert: step {state['step']} -> {out} (largest difference {worst:.2e}, tolerance {cfg.tolerance:g})",
          file=sys.stderr)
    return out


def _vocab(cfg: ConvertConfig, state: dict) -> Vocab:
    if cfg.vocab:
        # The user's choice, or an error: never a silent fall-back to the run's vocabulary.
        if not Path(cfg.vocab).exists():
            raise UserError(f"--vocab {cfg.vocab} does not exist; give the directory `vocab --out` wrote")
        return _matching_vocab(cfg.vocab, state)
    candidates = []
    train = state.get("config", {}).get("train", {})
    if train.get("vocab"):
        candidates.append(train["vocab"])
    shards = train.get("shards")
    if shards and (Path(shards) / "index.json").is_file():
        candidates.append(json.loads((Path(shards) / "index.json").read_text())["config"].get("vocab", ""))
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return _matching_vocab(candidate, state)
    raise UserError("cannot find the run's vocabulary directory (recorded: "
                    + (", ".join(c for c in candidates if c) or "none") + "): pass --vocab DIR")


def _matching_vocab(path: str, state: dict) -> Vocab:
    vocab = Vocab.load(path)
    if vocab.sha256 != state["vocab_sha256"]:
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


def parity_batches(shape: ModelShape, cfg: ConvertConfig):
    """Random padded batches: (input_ids, token_type_ids, valid_length, masked_positions), numpy int64."""
    rng = np.random.default_rng(cfg.seed)
    seq = min(shape.max_length, 48)
    for _ in range(cfg.parity_batches):
        batch = 4
        valid = rng.integers(6, seq + 1, batch)
        valid[0] = seq  # one full-length row
        ids = np.full((batch, seq), SPECIAL_IDS[PAD], dtype=np.int64)
        types = np.zeros((batch, seq), dtype=np.int64)
        positions = np.zeros((batch, 5), dtype=np.int64)
        for r, n in enumerate(valid):
            ids[r, :n] = rng.integers(5, shape.vocab_size, n)
            ids[r, 0], ids[r, n - 1] = SPECIAL_IDS[CLS], SPECIAL_IDS[SEP]
            split = int(rng.integers(2, n - 2))
            ids[r, split] = SPECIAL_IDS[SEP]
            types[r, split + 1:n] = 1
            positions[r] = rng.choice(np.arange(1, n - 1), 5, replace=False)
        yield ids, types, valid, positions


def verify_pytorch(arrays: dict, shape: ModelShape, model, cfg: ConvertConfig) -> dict:
    """Run MXNet and the converted model on the same batches; compare every layer and both heads.

    `arrays` is model.params as read (by structural name, as `save_parameters` writes them): the file itself
    may be gone by now.
    """
    import mxnet as mx
    import torch

    net = build_model(shape, all_encodings=True)
    # What Block.load_parameters does after reading its file: structural names -> the parameters' own names.
    by_structure = net._collect_params_with_prefix()
    net.collect_params().load_dict({by_structure[k].name: v for k, v in arrays.items()}, ctx=mx.cpu(),
                                   cast_dtype=True)
    worst: dict[str, float] = {}
    for ids, types, valid, positions in parity_batches(shape, cfg):
        out = net(mx.nd.array(ids), mx.nd.array(types), mx.nd.array(valid), mx.nd.array(positions))
        layers, pooled = out[0], out[1]
        mlm = out[-1].asnumpy()
        mask = np.arange(ids.shape[1])[None, :] < valid[:, None]
        with torch.no_grad():
            hf = model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                       attention_mask=torch.from_numpy(mask.astype(np.int64)), output_hidden_states=True)
            hf_pooled = model.bert.pooler(hf.hidden_states[-1]).numpy() if shape.use_nsp else None
        compared = []
        for i, layer in enumerate(layers):
            compared.append((f"layer_{i + 1}", layer.asnumpy()[mask], hf.hidden_states[i + 1].numpy()[mask]))
        logits = hf.prediction_logits if shape.use_nsp else hf.logits
        rows = np.arange(len(ids))[:, None]
        compared.append(("mlm_logits", mlm, logits.numpy()[rows, positions]))
        if shape.use_nsp:
            compared.append(("pooled_output", pooled.asnumpy(), hf_pooled))
            compared.append(("nsp_logits", out[2].asnumpy(), hf.seq_relationship_logits.numpy()))
        for name, a, b in compared:
            record_difference(worst, name, a, b, cfg.tolerance, "conversion check failed", "between MXNet and PyTorch")
    return worst


def record_difference(worst: dict, name: str, a, b, tolerance: float, failure: str, between: str) -> None:
    """Keep the largest |a - b| per output; stop the conversion if it exceeds the tolerance (NaN too)."""
    diff = float(np.abs(a - b).max())
    worst[name] = max(worst.get(name, 0.0), diff)
    if not diff <= tolerance:
        raise UserError(f"{failure}: {name} differs {between} by {diff:.3g} (tolerance {tolerance:g}); "
                        "nothing was written")


def model_card(ckpt, state: dict, shape: ModelShape, report: dict) -> str:
    run_dir = ckpt.path.parent.parent
    evals = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "eval" and record.get("step", 0) <= state["step"]:
                evals.append(record)
    final_eval = evals[-1] if evals else None
    train = state["config"]["train"]
    eval_text = ("\n".join(f"- {k}: {v:.4f}" for k, v in final_eval.items() if k.startswith("eval_"))
                 + f"\n(at step {final_eval['step']})") if final_eval else "No held-out evaluation was run."
    arch = "BertForPreTraining" if shape.use_nsp else "BertForMaskedLM"
    return f"""# BERT pretrained with kobert-pretrain

- Architecture: `{arch}`, {shape.num_layers} layers x {shape.units} hidden, {shape.num_heads} heads,
  FFN {shape.hidden_size}, {shape.max_length} positions, vocabulary {shape.vocab_size} (SentencePiece,
  cased; `[UNK]=0 [PAD]=1 [CLS]=2 [SEP]=3 [MASK]=4`), {shape.parameter_count():,} parameters.
- Training: {state['step']:,} steps, {state['tokens_seen']:,} tokens seen, optimizer {train['optimizer']}
  (peak lr {train['lr']:g}, warm-up {train['warmup_steps']} steps, {train['decay']} decay), global batch
  {train['global_batch_size'] or 'micro x ranks'}, {train['dtype']}, seed {train['seed']}.
- Checkpoint: `{ckpt.path}`.

## Evaluation

{eval_text}

## Conversion check

Largest absolute differences between the MXNet model and this one on random padded batches
(tolerance {report['tolerance']:g}):

```json
{json.dumps({k: v for k, v in report.items() if k in ('mxnet_vs_pytorch', 'pytorch_vs_onnx')}, indent=2)}
```

## Use

```python
from transformers import AutoTokenizer, {arch}, pipeline

tokenizer = AutoTokenizer.from_pretrained("PATH")   # spm.model's ids, see below
model = {arch}.from_pretrained("PATH")
fill = pipeline("fill-mask", model="PATH")
print(fill("대한민국의 수도는 [MASK]이다."))
```

The tokenizer gives the ids `sentencepiece` gives with `spm.model` (its normalization included: NFD or
compatibility jamo, full- and half-width forms, control characters), inside `[CLS] ... [SEP]`. One exception:
where two orders of the same pieces score exactly alike (a run of dots), SentencePiece's float32 rounding
picks one and the fast tokenizer's float64 may pick the other.

Special tokens typed in the text are special tokens: `[MASK]`, `[CLS]`, `[SEP]`, `[UNK]` and `[PAD]` become
ids 4, 2, 3, 0 and 1 (`sentencepiece` spells them out). `[MASK]` takes the spaces before it, and the text
right after it continues the masked word, as in training: `수도는 [MASK]이다.` gives `... 는 [MASK] 이 다 .`,
as a masked `▁서울` followed by `이`; write `[MASK] 이다` for a new word after it.

`BertModel.from_pretrained("PATH")` gives the encoder alone. `model.onnx` (if present) takes
`input_ids`, `token_type_ids`, `attention_mask` (int64, dynamic batch and sequence) and returns
the sequence output, pooled output, MLM logits and NSP logits.
"""
