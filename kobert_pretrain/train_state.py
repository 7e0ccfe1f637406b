"""What a training checkpoint holds (`TrainingState`, its state.json) and the MXNet save/restore of the rest.

Everything here that touches MXNet's private optimizer internals (`Trainer._updaters`, `_param2idx`,
`_all_index_update_counts`) is in this file and nowhere else; MXNet is imported only inside the functions
that need it, so reading a checkpoint's state (convert, export) does not load it.

    model.params      `parameters_for_saving`: by structural name, float16 replaced by float32 masters
    optimizer.states  `save_optimizer_states`: the moments (mx.nd.save), plus optimizer.json (layout, counters)
    state.json        `TrainingState`
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from kobert_pretrain.errors import UserError
from kobert_pretrain.fsutil import atomic_write_json

RNG_NOTE = ("dropout is reseeded from (seed, step, rank) before every step; data order and masks are "
            "functions of (seed, epoch, position): no RNG state to restore")


@dataclass
class TrainingState:
    """state.json: everything besides parameters and moments that a resumed run needs, and what convert reads."""

    step: int  # optimizer steps done
    phase: int  # the phase the next step reads from
    data: dict | None  # that phase's loader cursor (None: the phase has not started)
    tokens_seen: int
    sequences_seen: int
    loss_scaler: dict
    world_size: int
    model_shape: dict  # ModelShape fields
    vocab_sha256: str
    shards: list  # fingerprints of the phases' shard sets
    config: dict  # the resolved config of the run
    config_hash: str = ""
    rng: str = RNG_NOTE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict, where) -> "TrainingState":
        """The state read from `where`'s state.json, checked for the fields the stages read."""
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in state]
        if missing or not isinstance(state["step"], int) or not isinstance(state["model_shape"], dict) \
                or not isinstance(state["config"], dict):
            raise UserError(f"checkpoint {where}: state.json is not a kobert-pretrain training state "
                            f"({'missing ' + ', '.join(missing) if missing else 'bad values'})")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def write_model_and_optimizer(directory: Path, parameters: dict, gluon_trainer) -> None:
    """model.params (`parameters`, from `parameters_for_saving`) and the optimizer files, into `directory`."""
    import mxnet as mx

    mx.nd.save(str(directory / "model.params"), parameters)
    save_optimizer_states(gluon_trainer, directory)


def load_model_and_optimizer(ckpt, net, gluon_trainer, ctx) -> None:
    """The parameters and optimizer states of checkpoint `ckpt` into `net` and `gluon_trainer`; a
    checkpoint that passes its checksums but cannot be loaded is a UserError naming it."""
    import mxnet as mx

    try:
        net.load_parameters(str(ckpt.path / "model.params"), ctx=ctx, cast_dtype=True, dtype_source="current")
        load_optimizer_states(gluon_trainer, ckpt.path, ctx)
    except (mx.base.MXNetError, KeyError, ValueError, TypeError, AssertionError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {ckpt.path} passes its checksums but cannot be loaded "
                        f"({first_line[:200]}); resume from an earlier one with --resume PATH") from None


def parameters_for_saving(net, trainer) -> dict:
    """The model's parameters by Gluon's structural name, as `Block.save_parameters` writes them, as CPU
    copies, except that float16 parameters are replaced by the optimizer's float32 master copies
    (multi_precision): a float16 run's checkpoints, exports and releases keep full-precision weights.

    CPU copies make a checkpoint device-independent: `mx.nd.load` restores each array to the device it
    was saved from, so arrays saved on gpu(0) would put every rank of a node on GPU 0 at resume."""
    import mxnet as mx

    updater = trainer._updaters[0]
    arrays = {}
    for name, param in net._collect_params_with_prefix().items():
        data = param._reduce()
        if data.dtype == np.float16:
            master = master_weight(updater.states.get(trainer._param2idx.get(param.name)), data.shape)
            # not updated yet: the float16 values are exact
            data = master if master is not None else data.astype("float32")
        arrays[name] = data.as_in_context(mx.cpu())
    return arrays


def master_weight(state, shape):
    """The float32 master copy inside a multi-precision optimizer state, found by its structure.

    MXNet's optimizers (LAMB) keep `(weight32, moments)`, GluonNLP's BERTAdam `((mean, var), weight32)`:
    the master is the one top-level array of the state (the moments are a tuple), float32, of the weight's
    shape. None when there is none (a float32 run, or a parameter not updated yet).
    """
    if not isinstance(state, (tuple, list)):
        return None
    arrays = [s for s in state if not isinstance(s, (tuple, list)) and s is not None
              and getattr(s, "dtype", None) == np.float32 and tuple(s.shape) == tuple(shape)]
    return arrays[0] if len(arrays) == 1 else None


# Optimizer states as a binary NDArray file plus a small JSON of update counters. MXNet's own
# Trainer.save_states pickles every array: 4.4 s instead of 0.4 s for BERT-base's 760 MB of moments.
# With multi_precision a state is (float32 master weight, moments) or ((moments), master), saved as
# nested lists. Arrays are written from CPU copies (see parameters_for_saving).

def optimizer_state_arrays(trainer) -> tuple[dict, dict]:
    """(every optimizer state array as a CPU copy, by flat key; the nesting of each parameter's state)."""
    import mxnet as mx

    arrays, structure = {}, {}

    def flatten(key, state):
        if state is None:
            return None
        if isinstance(state, mx.nd.NDArray):
            arrays[key] = state.as_in_context(mx.cpu())
            return "array"
        return [flatten(f"{key}.{i}", s) for i, s in enumerate(state)]

    for index, state in trainer._updaters[0].states.items():
        structure[str(index)] = flatten(str(index), state)
    return arrays, structure


def save_optimizer_states(trainer, directory: Path) -> None:
    import mxnet as mx

    updater = trainer._updaters[0]
    arrays, structure = optimizer_state_arrays(trainer)
    mx.nd.save(str(directory / "optimizer.states"), arrays)
    optimizer = updater.optimizer
    atomic_write_json(directory / "optimizer.json", {
        "structure": structure,
        "num_update": optimizer.num_update,
        # {parameter index: updates} of the device this rank trains on (bias correction in Adam and LAMB
        # reads them). MXNet keys the counts by `weights[0].context.device_id` (Updater.__call__), so on
        # gpu(k) they live under k, not 0; every rank holds the same counts for its own device.
        "update_counts": {str(k): v for k, v in optimizer._index_update_count.items()},
    })


def load_optimizer_states(trainer, directory: Path, ctx) -> None:
    import mxnet as mx

    meta = json.loads((directory / "optimizer.json").read_text(encoding="utf-8"))
    arrays = mx.nd.load(str(directory / "optimizer.states")) if meta["structure"] else {}

    def rebuild(key, shape):
        if shape is None:
            return None
        if shape == "array":
            return arrays[key].as_in_context(ctx)
        return tuple(rebuild(f"{key}.{i}", s) for i, s in enumerate(shape))

    updater = trainer._updaters[0]
    updater.states = {int(k): rebuild(k, v) for k, v in meta["structure"].items()}
    updater.states_synced = dict.fromkeys(updater.states, True)
    optimizer = updater.optimizer
    optimizer.num_update = meta["num_update"]
    if "update_counts" in meta:
        counts = meta["update_counts"]
    else:  # checkpoints before the fix: {device id: counts}, written by rank 0 on device 0
        by_device = meta["index_update_counts"]
        counts = by_device.get("0") or next(iter(by_device.values()), {})
    # Restored under the device this rank updates on, where MXNet's Updater will look them up.
    optimizer._all_index_update_counts = {ctx.device_id: {int(k): v for k, v in counts.items()}}
    optimizer._index_update_count = optimizer._all_index_update_counts[ctx.device_id]


def check_replicas(dist, parameters: dict, step: int, say) -> None:
    """Refuse to save replicas that differ: every rank applies the same update, so parameters that are not
    bit-identical to rank 0's mean a bug. `say` prints the verdict (rank 0's log)."""
    differ = dist.replica_mismatch(parameters.values(), name="checkpoint.replicas")
    if not differ:
        if dist.enabled:
            say(f"checkpoint: step {step}: parameters identical on {dist.size} ranks")
        return
    what = ", ".join(f"rank {r} ({n} of {len(parameters)} tensors)" for r, n in differ.items())
    say(f"checkpoint: step {step}: parameters DIFFER from rank 0's on {what}")
    raise RuntimeError(f"the replicas diverged by step {step} (parameters differ from rank 0's on {what}); "
                       "not saving them. Restart from the last checkpoint, and report this as a bug")


def resume_problems(state: TrainingState, train_cfg, model_shape: dict, vocab_sha256: str,
                    phase_fingerprints: list[str]) -> list[str]:
    """What makes this run (its train config, model shape, vocabulary and the fingerprints of its phases'
    shard sets) not a continuation of the checkpoint's `state`; checked before anything is written."""
    tc = train_cfg
    saved = state.config.get("train", {})
    problems = []
    if state.vocab_sha256 != vocab_sha256:
        problems.append("it was trained with another vocabulary (shards built with another vocab)")
    differing = [f"model.{k} {v} (checkpoint) vs {model_shape.get(k)} (now)"
                 for k, v in state.model_shape.items() if model_shape.get(k) != v]
    if differing:
        problems.append("the model differs: " + ", ".join(differing))
    for number, (fingerprint, saved_fingerprint) in enumerate(zip(phase_fingerprints, state.shards), 1):
        if fingerprint != saved_fingerprint:
            which = "train.shards" if number == 1 else "train.phase2_shards"
            was = saved.get("shards" if number == 1 else "phase2_shards", "?")
            problems.append(f"{which} is another shard set than the one it was trained on ({was})")
    if saved.get("seed", tc.seed) != tc.seed:
        problems.append(f"train.seed {tc.seed} vs {saved['seed']} (the seed fixes data order and masks)")
    if saved.get("optimizer", tc.optimizer) != tc.optimizer:
        problems.append(f"train.optimizer {tc.optimizer} vs {saved['optimizer']} "
                        "(its moments do not carry over)")
    if state.step > tc.max_steps:
        problems.append(f"it is at step {state.step}, past train.max_steps={tc.max_steps}; "
                        "raise max_steps to train further")
    return problems
