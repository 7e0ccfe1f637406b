"""model.py: every dropout of the BERT graph asks for MXNet's seeded kernel, not cuDNN's."""

from __future__ import annotations

import json

from kobert_pretrain.config import PRESETS
from kobert_pretrain.model import ModelShape, build_model


def test_every_dropout_of_the_graph_is_seeded_by_mx_random_seed():
    import mxnet as mx

    net = build_model(ModelShape(*PRESETS["debug"], vocab_size=1000, dropout=0.1, use_nsp=True))
    net.initialize(ctx=mx.cpu())
    net.hybridize()
    ones = mx.nd.ones((1, 8))
    net(ones, ones * 0, mx.nd.array([8]), mx.nd.zeros((1, 1)))
    symbol = json.loads(net._cached_graph[1].tojson())
    dropouts = [n for n in symbol["nodes"] if n["op"] == "Dropout"]
    # 2 layers x (attention, attention output, FFN) + the embedding dropout
    assert len(dropouts) == 7
    assert all(n["attrs"]["cudnn_off"] == "True" and n["attrs"]["p"] == "0.1" for n in dropouts), dropouts[0]["attrs"]
