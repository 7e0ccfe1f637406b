"""Test helper (tests/test_launch.py): with KOBERT_TEST_SLOW_SAVE_S set, every checkpoint save of a
process that has this directory on PYTHONPATH first sleeps that long, as on a slow filesystem."""

import os

if os.environ.get("KOBERT_TEST_SLOW_SAVE_S"):
    import time

    import kobert_pretrain.checkpoint as checkpoint

    _save = checkpoint.CheckpointManager.save

    def _slow_save(self, *args, **kwargs):
        time.sleep(float(os.environ["KOBERT_TEST_SLOW_SAVE_S"]))
        return _save(self, *args, **kwargs)

    checkpoint.CheckpointManager.save = _slow_save
