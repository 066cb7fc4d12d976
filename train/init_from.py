"""Fine-tuning: a new run (fresh optimizer, step 0) that starts from a checkpoint's parameters.

    python -m train --config finetune-shakespeare --init-from path/to/gpt2
    python -m train --config shakespeare-char-cpu --init-from runs/shakespeare-char-cpu-... train.lr=1e-4

``--init-from`` takes a Hugging Face GPT-2 directory (config.json + model.safetensors, read by
model/hf.py) or a run directory of ours (its config.json and newest checkpoint). The model fields come
from the checkpoint; a ``model.*`` override is applied on top of them when it keeps every parameter's
shape (dropout, attention_impl, dtype ...) and refused in one line naming the field when it would not
(n_layers, d_model, vocab_size ...). The path is stored in the run's config as ``init_from``; a resumed
fine-tune restores its own checkpoints and never reads it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from train.config import CONFIG_FILE, ConfigError, RunConfig, load_run_config

# Presets that only make sense from a checkpoint (refused in one line without --init-from), with the
# model settings they put over the checkpoint's (nanoGPT fine-tunes with dropout 0, GPT-2's config says 0.1).
NEEDS_INIT_FROM: dict[str, dict[str, Any]] = {"finetune-shakespeare": {"dropout": 0.0, "attention_dropout": 0.0}}
# ModelConfig fields a Hugging Face load can change without touching the tensors' layout on disk
# (model/hf.py re-stacks the layers for either value of scan_layers).
_LAYOUT_ONLY = ("scan_layers",)


def _is_run_dir(p: Path) -> bool:
    if not (p / CONFIG_FILE).is_file():
        return False
    try:
        d = json.loads((p / CONFIG_FILE).read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(d, dict) and "model" in d and "train" in d


def checkpoint_model(path: str) -> tuple[str, ModelConfig]:
    """('run' | 'hf', the checkpoint's ModelConfig); one-line ConfigError when ``path`` is neither."""
    from model import hf

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"--init-from {path}: not a directory; pass a Hugging Face GPT-2 directory (config.json + "
            f"model.safetensors) or a run directory written by `python -m train`"
        )
    if _is_run_dir(p):
        return "run", load_run_config(p).model
    try:
        return "hf", hf.config_from_hf(hf.read_config(p))
    except hf.HFFormatError as e:
        raise ConfigError(f"--init-from {path}: {e}") from None


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    import jax

    from model.params import param_shapes

    flat = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]
    return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in flat}


def apply_init_from(cfg: RunConfig, path: str | None, model_overrides: dict[str, Any]) -> RunConfig:
    """``cfg`` set to fine-tune from ``path``: the checkpoint's model with ``model_overrides`` that keep its shapes.

    Also points a GPT-2-token run (data.level=gpt2 without data.bpe_dir) at the checkpoint's own
    tokenizer files when it has them (a Hugging Face directory's vocab.json + merges.txt).
    """
    if path is None:
        if cfg.name in NEEDS_INIT_FROM:
            raise ConfigError(
                f"the {cfg.name!r} preset fine-tunes a checkpoint: pass --init-from PATH "
                f"(a Hugging Face GPT-2 directory, e.g. a local copy of gpt2, or a run directory)"
            )
        return cfg
    kind, base = checkpoint_model(path)
    model_overrides = {**NEEDS_INIT_FROM.get(cfg.name, {}), **model_overrides}
    layout_free = _LAYOUT_ONLY if kind == "hf" else ()
    model = base
    reference = _shapes(base)
    for name, value in model_overrides.items():
        if getattr(base, name) == value:
            continue
        try:
            changed = base.replace(**{name: value})
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if name not in layout_free and _shapes(changed) != reference:
            raise ConfigError(
                f"model.{name}={value!r} would change the parameter shapes of the checkpoint {path} "
                f"(it has {name}={getattr(base, name)!r}): fine-tuning keeps the checkpoint's architecture; drop the override"
            )
        model = model.replace(**{name: value})
    data = cfg.data
    if data.level == "gpt2" and data.bpe_dir is None and kind == "hf":
        from train.data.bpe import FILE_PAIRS

        p = Path(path).expanduser()
        if any((p / a).is_file() and (p / b).is_file() for a, b in FILE_PAIRS):
            data = data.replace(bpe_dir=str(p.resolve()))
    try:
        return cfg.replace(model=model, data=data, init_from=str(Path(path).expanduser().resolve()))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_init_params(cfg: RunConfig):
    """The parameters of ``cfg.init_from`` laid out for ``cfg.model`` (NumPy or JAX arrays, host side)."""
    from model import hf

    kind, base = checkpoint_model(cfg.init_from)
    if kind == "hf":
        changes = {k: v for k, v in cfg.model.to_dict().items() if getattr(base, k) != v}
        _, params = hf.load(cfg.init_from, **changes)
        return params
    from train.checkpoint import CHECKPOINT_DIR, Checkpointer
    from train.step import abstract_state, model_and_optimizer

    saved = load_run_config(cfg.init_from)
    model, tx, _ = model_and_optimizer(saved.model, saved.train)
    ckpt_dir = Path(cfg.init_from) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        raise ConfigError(f"--init-from {cfg.init_from}: the run has no checkpoint yet ({ckpt_dir} not found)")
    with Checkpointer(ckpt_dir, async_save=False) as ckpt:
        state, _ = ckpt.restore(abstract_state(model, tx, saved.seq_len))
    return state.params


def check_vocab(cfg: RunConfig, data_vocab: int) -> None:
    """A fine-tune cannot grow the checkpoint's vocabulary: data with more ids is refused in one line."""
    if cfg.init_from is not None and data_vocab > cfg.model.vocab_size:
        raise ConfigError(
            f"the data has {data_vocab} token ids (data.level={cfg.data.level}) but the checkpoint "
            f"{cfg.init_from} has model.vocab_size={cfg.model.vocab_size}: use a checkpoint with the data's "
            f"vocabulary (GPT-2's 50257 for data.level=gpt2) or token data whose ids fit"
        )


def init_state(state, cfg: RunConfig):
    """``state`` (a fresh TrainState) with the parameters of ``cfg.init_from``, each placed like the one it replaces.

    AdamW's moments start at zero whatever the parameters, so the fresh optimizer state stays valid.
    """
    import jax

    params = load_init_params(cfg)
    want = jax.tree_util.tree_structure(state.params)
    if jax.tree_util.tree_structure(params) != want:
        raise ConfigError(f"--init-from {cfg.init_from}: its parameter tree does not match model {cfg.model}")

    def place(new, old):
        if tuple(new.shape) != tuple(old.shape):
            raise ConfigError(
                f"--init-from {cfg.init_from}: a parameter of shape {new.shape} where {old.shape} is needed"
            )
        return jax.device_put(jax.numpy.asarray(new, dtype=old.dtype), old.sharding)

    return state.replace(params=jax.tree.map(place, params, state.params))
