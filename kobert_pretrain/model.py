"""BERT shapes and the GluonNLP `BERTModel` with its masked-LM and next-sentence heads.

The transformer is GluonNLP 0.10's `BERTEncoder`/`BERTModel` (erf GELU,
LayerNorm eps 1e-12): the MLM decoder (Dense -> GELU -> LayerNorm -> Dense
tied to the word embedding) runs on the masked positions only; the NSP
classifier sits on the pooled [CLS] output and can be switched off.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    units: int
    hidden_size: int
    num_heads: int
    max_length: int
    vocab_size: int
    dropout: float
    use_nsp: bool

    def parameter_count(self) -> int:
        """Trainable parameters (the decoder's output weight is tied to the word embedding)."""
        u, h, v, n = self.units, self.hidden_size, self.vocab_size, self.num_layers
        embeddings = v * u + 2 * u + self.max_length * u + 2 * u
        layer = 4 * (u * u + u) + 2 * u + (u * h + h) + (h * u + u) + 2 * u
        pooler = u * u + u
        mlm_head = u * u + u + 2 * u + v
        nsp_head = (2 * u + 2) if self.use_nsp else 0
        return embeddings + n * layer + pooler + mlm_head + nsp_head

    def train_flops_per_sequence(self, seq_len: int, masked: int) -> float:
        """Forward + backward FLOPs for one sequence: 6 x weights x tokens, attention, and the MLM head
        on masked positions only (the usual BERT accounting, see ../shared/REFERENCE.md)."""
        u, h, n = self.units, self.hidden_size, self.num_layers
        per_token = n * (4 * u * u + 2 * u * h)  # matmul weights each token passes through
        attention = n * 2 * seq_len * seq_len * u  # QK^T and AV
        mlm = masked * (u * u + u * self.vocab_size)
        return 6.0 * (per_token * seq_len + mlm) + 3.0 * 2 * attention


def build_model(shape: ModelShape, all_encodings: bool = False):
    """A GluonNLP BERTModel (not initialised) with MLM decoder and, if enabled, NSP classifier.

    all_encodings=True makes the model return every layer's output (for conversion parity checks).
    """
    from gluonnlp.model.bert import BERTEncoder, BERTModel

    encoder = BERTEncoder(
        num_layers=shape.num_layers,
        units=shape.units,
        hidden_size=shape.hidden_size,
        max_length=shape.max_length,
        num_heads=shape.num_heads,
        dropout=shape.dropout,
        output_attention=False,
        output_all_encodings=all_encodings,
        activation="gelu",
        layer_norm_eps=1e-12,
    )
    net = BERTModel(
        encoder,
        vocab_size=shape.vocab_size,
        token_type_vocab_size=2,
        units=shape.units,
        embed_size=shape.units,
        use_pooler=True,
        use_decoder=True,
        use_classifier=shape.use_nsp,
        use_token_type_embed=True,
    )
    use_seeded_dropout(net)
    return net


def use_seeded_dropout(block) -> int:
    """Make every Gluon Dropout under `block` draw from MXNet's own kernel instead of cuDNN's; return how many.

    Gluon's Dropout asks for cuDNN (cudnn_off=False). In MXNet 1.9.1 cuDNN's dropout state is set up
    once per GPU, on first use, from a seed the operator takes from C rand(), and `mx.random.seed`
    never reaches it (the 1.9.1 library has no reseeding of it, unlike MXNet 2): every rank of a job
    starts from the same state, so ranks drop the same units, and a resumed run draws other masks than
    an uninterrupted one. MXNet's kernel draws from the per-device random resource that
    `mx.random.seed(s)` seeds with s and the device id, which the trainer sets from (seed, step,
    rank) before every step. On CPU nothing changes (there is no cuDNN); on GPU it costs one mask
    kernel per dropout instead of cuDNN's fused one.
    """
    from mxnet.gluon import nn

    seeded = _seeded_dropout_class()
    swapped = 0
    stack = [block]
    while stack:
        current = stack.pop()
        if type(current) is nn.Dropout:
            current.__class__ = seeded
            swapped += 1
        stack.extend(current._children.values())
    return swapped


@functools.lru_cache(maxsize=None)
def _seeded_dropout_class():
    from mxnet.gluon import nn

    class SeededDropout(nn.Dropout):
        """Gluon's Dropout with cudnn_off=True (see `use_seeded_dropout`)."""

        def hybrid_forward(self, F, x):
            if self._rate > 0:
                return F.Dropout(x, p=self._rate, axes=self._axes, name="fwd", cudnn_off=True)
            return F.identity(x)

    return SeededDropout


def no_weight_decay(name: str) -> bool:
    """LayerNorm scales/shifts and biases are not decayed (BERT, GluonNLP, NVIDIA all exclude them)."""
    return name.endswith(("gamma", "beta", "bias"))


def model_for_training(shape: ModelShape, ctx, dtype: str = "float32"):
    """`build_model(shape)` on `ctx`, ready to train: weights from N(0, 0.02) drawn with MXNet's current seed,
    shapes inferred, cast to `dtype`, hybridized; gradients accumulate over micro-batches (grad_req "add",
    zeroed after each step) and `no_weight_decay` parameters are not decayed."""
    import mxnet as mx

    net = build_model(shape)
    net.initialize(init=mx.init.Normal(0.02), ctx=ctx)
    # One forward pass finishes deferred shape inference before parameters are shared.
    ones = mx.nd.ones((1, 8), ctx=ctx)
    net(ones, ones * 0, mx.nd.array([8], ctx=ctx), mx.nd.zeros((1, 1), ctx=ctx))
    if dtype == "float16":
        net.cast("float16")
    net.hybridize(static_alloc=True)
    for name, p in net.collect_params().items():
        p.grad_req = "add"
        if no_weight_decay(name):
            p.wd_mult = 0.0
    return net


def pretraining_loss_sums(net, batch: dict, shape: ModelShape, dtype: str):
    """(MLM cross-entropy summed over the masked tokens, MLM correct, NSP cross-entropy summed over the
    sequences, NSP correct) of one batch of MXNet arrays; NSP terms are zero arrays for an MLM-only model."""
    import mxnet as mx

    # valid_length builds the attention mask, which is added to scores of the compute dtype
    outputs = net(batch["input_ids"], batch["segment_ids"], batch["valid_length"].astype(dtype),
                  batch["masked_positions"])
    if shape.use_nsp:
        _, _, nsp_logits, mlm_logits = outputs
    else:
        _, _, mlm_logits = outputs
        nsp_logits = None
    # (batch, max_predictions, vocab) -> (batch * max_predictions, vocab); fp32 for the softmax
    mlm_logits = mlm_logits.astype("float32").reshape((-1, shape.vocab_size))
    labels = batch["masked_ids"].reshape((-1,)).astype("float32")
    weights = batch["masked_weights"].reshape((-1,))
    log_probs = mx.nd.log_softmax(mlm_logits, axis=-1)
    mlm_ce = -mx.nd.pick(log_probs, labels, axis=-1)
    mlm_sum = (mlm_ce * weights).sum()
    mlm_correct = ((mlm_logits.argmax(axis=-1) == labels) * weights).sum().detach()
    if nsp_logits is None:
        zero = mx.nd.zeros((1,), ctx=batch["input_ids"].context)
        return mlm_sum, mlm_correct, zero, zero
    nsp_logits = nsp_logits.astype("float32")
    nsp_labels = batch["nsp_labels"].astype("float32")
    nsp_ce = -mx.nd.pick(mx.nd.log_softmax(nsp_logits, axis=-1), nsp_labels, axis=-1)
    nsp_correct = (nsp_logits.argmax(axis=-1) == nsp_labels).sum().detach()
    return mlm_sum, mlm_correct, nsp_ce.sum(), nsp_correct
