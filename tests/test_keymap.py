"""The Gluon -> Hugging Face name table: every name maps, and unknown, missing or mismatched ones raise."""

from __future__ import annotations

import numpy as np
import pytest

from kobert_pretrain.convert.keymap import convert_state, hf_name
from kobert_pretrain.errors import UserError


def test_keymap_raises_on_unknown_missing_and_mismatched():
    assert hf_name("encoder.transformer_cells.11.ffn.ffn_2.bias") == "bert.encoder.layer.11.output.dense.bias"
    assert hf_name("encoder.unknown") is None
    expected = {"bert.pooler.dense.weight": (4, 4), "bert.pooler.dense.bias": (4,)}
    good = {"pooler.weight": np.zeros((4, 4)), "pooler.bias": np.zeros(4)}
    assert set(convert_state(good, expected)) == set(expected)
    with pytest.raises(UserError, match="unknown Gluon parameter"):
        convert_state({**good, "mystery.weight": np.zeros(1)}, expected)
    with pytest.raises(UserError, match="not provided by the checkpoint"):
        convert_state({"pooler.weight": np.zeros((4, 4))}, expected)
    with pytest.raises(UserError, match=r"shape mismatch: bert.pooler.dense.weight \(4, 5\) vs \(4, 4\)"):
        convert_state({**good, "pooler.weight": np.zeros((4, 5))}, expected)
