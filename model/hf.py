"""Hugging Face GPT-2 checkpoints in and out: ``load(path) -> (ModelConfig, params)`` and ``save(config, params, path)``.

    cfg, params = load("path/to/gpt2")                 # config.json + model.safetensors (or a sharded index)
    logits = Transformer(cfg).apply({"params": params}, tokens)
    save(cfg, params, "out/")                           # GPT2LMHeadModel.from_pretrained("out/") loads it

    python -m model.hf inspect PATH                     # the config and the parameter table
    python -m model.hf export RUN_DIR OUT_DIR [--step N] # a run of ours as a GPT-2 directory (see below)

Tensors are read with ``safetensors.numpy`` (no torch). GPT-2's names, with or without the
``transformer.`` prefix (GPT2LMHeadModel vs GPT2Model), map to ours as follows (``Conv1D`` weights are
stored ``[in, out]``, which is our ``x @ W`` layout already):

    wte.weight [V, D]                 -> embed/embedding          (lm_head.weight is the same tensor: tied)
    wpe.weight [T_max, D]             -> pos_embed
    h.i.ln_1 / ln_2 / ln_f            -> norm_attention / norm_mlp / norm_final {scale, bias}
    h.i.attn.c_attn [D, 3D] + [3D]    -> query, key, value_down [D, H, Dh] and their biases [H, Dh]
    h.i.attn.c_proj [D, D] + [D]      -> value_up [H, Dh, D], value_up_bias
    h.i.mlp.c_fc / c_proj             -> mlp/fc_in, fc_in_bias / mlp/fc_out, fc_out_bias

The causal-mask buffers ``attn.bias`` / ``attn.masked_bias`` are ignored. Anything our Transformer
cannot express (another ``model_type``, an unknown or missing tensor, a shape mismatch, a config
feature such as ``scale_attn_by_inverse_layer_idx``) raises :class:`HFFormatError`, one line naming the
tensor or field. ``reorder_and_upcast_attn`` is accepted: it only changes the precision HF computes
the scores in (we compute them in float32 anyway), not the function.

Named models (``load("gpt2")``) are downloaded with ``huggingface_hub`` when it is installed
(``pip install -e '.[hf]'``) and the hub is reachable; otherwise the error says to pass a local directory.

Export lives one floor up: the model package never imports train (tests/test_structure.py), and a run's
checkpoint is restored by train's code, so ``python -m train.hf_export RUN_DIR OUT_DIR`` restores the
run and calls :func:`save`. ``python -m model.hf export`` hands over to it in a child process (a process
boundary, not an import: the arrows stay pointing down) and returns its exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from model.config import ModelConfig

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # the causal mask, stored as buffers by old versions
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
# GPT2Config fields that change the function and that we cannot express: name -> the value we need
UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
}


class HFFormatError(ValueError):
    """A checkpoint our Transformer cannot express, or cannot be found; the message is one line."""


# ---------------------------------------------------------------------------- config
def config_from_hf(hf: dict) -> ModelConfig:
    """A GPT-2 ``config.json`` (as a dict) as our ModelConfig; unsupported features raise HFFormatError."""
    if hf.get("model_type") != "gpt2":
        raise HFFormatError(
            f"config.json model_type={hf.get('model_type')!r}: only GPT-2-family checkpoints ('gpt2') can be loaded"
        )
    for key, needed in UNSUPPORTED.items():
        if key in hf and hf[key] != needed:
            raise HFFormatError(f"config.json {key}={hf[key]!r}: not supported by our Transformer (needs {needed!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise HFFormatError(f"config.json activation_function={act!r}: supported are {sorted(ACTIVATIONS)}")
    try:
        return ModelConfig(
            vocab_size=hf.get("vocab_size", 50257),
            max_len=hf.get("n_positions", 1024),
            n_layers=hf.get("n_layer", 12),
            d_model=hf.get("n_embd", 768),
            n_heads=hf.get("n_head", 12),
            d_mlp=hf.get("n_inner"),
            gelu=ACTIVATIONS[act],
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            use_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
            dropout=float(hf.get("resid_pdrop", 0.1)),
            attention_dropout=float(hf.get("attn_pdrop", 0.1)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except (ValueError, TypeError) as e:
        raise HFFormatError(f"config.json: {e}") from None


def config_to_hf(cfg: ModelConfig) -> dict:
    """Our ModelConfig as a GPT-2 ``config.json``; a field GPT-2 cannot express raises HFFormatError."""
    needs = {
        "positions": "learned",
        "value_map": "factored",
        "norm": "layernorm",
        "use_bias": True,
        "mlp": True,
        "causal": True,
        "sliding_window": None,
        "embed_scale": False,
    }
    for name, value in needs.items():
        if getattr(cfg, name) != value:
            raise HFFormatError(f"ModelConfig.{name}={getattr(cfg, name)!r}: GPT-2 needs {value!r}")
    if cfg.kv_heads != cfg.n_heads:
        raise HFFormatError(f"ModelConfig.n_kv_heads={cfg.n_kv_heads}: GPT-2 has no grouped-query attention")
    if cfg.head_dim * cfg.n_heads != cfg.d_model:
        raise HFFormatError(f"ModelConfig.d_head={cfg.d_head}: GPT-2 needs d_head * n_heads == d_model")
    eos = 50256 if cfg.vocab_size == 50257 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "activation_function": {"tanh": "gelu_new", "exact": "gelu"}[cfg.gelu],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attention_dropout,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }


# ---------------------------------------------------------------------------- finding and reading files
def resolve(path: str | Path) -> Path:
    """A local checkpoint directory for ``path``: the directory itself, or a named model downloaded from the hub."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") > 1:
        raise HFFormatError(f"{path}: not a checkpoint directory (expected a folder holding {CONFIG} and {WEIGHTS})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise HFFormatError(
            f"{path!r} is not a local directory; pass a directory holding {CONFIG} + {WEIGHTS}, "
            f"or install the hf extra (pip install -e '.[hf]') to download named models"
        ) from None
    patterns = [CONFIG, "*.safetensors", INDEX, "vocab.json", "merges.txt"]
    try:
        return Path(snapshot_download(str(path), allow_patterns=patterns))
    except Exception as e:  # offline, unknown name, gated model: one line either way
        raise HFFormatError(
            f"cannot download {path!r} ({type(e).__name__}); offline? pass a local directory holding {CONFIG} + {WEIGHTS}"
        ) from None


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, by name, as NumPy arrays (single file or sharded index)."""
    from safetensors.numpy import load_file

    if (directory / WEIGHTS).is_file():
        files = [directory / WEIGHTS]
    elif (directory / INDEX).is_file():
        weight_map = json.loads((directory / INDEX).read_text())["weight_map"]
        files = [directory / f for f in sorted(set(weight_map.values()))]
    else:
        raise HFFormatError(
            f"{directory}: no {WEIGHTS} or {INDEX} (a pytorch_model.bin must be converted to safetensors first)"
        )
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except Exception as e:  # NumPy has no bfloat16: safetensors.numpy refuses BF16 files
            try:
                header, _ = _header(f)
            except (OSError, ValueError):
                header = {}
            if not any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values()):
                raise HFFormatError(f"{f.name}: cannot read ({type(e).__name__}: {' '.join(str(e).split())})") from None
            out.update(_read_bf16(f))
    return out


def _header(path: Path) -> tuple[dict, int]:
    """A safetensors file's JSON header and where its data starts (after the 8-byte size and the header)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n)), 8 + n


def _read_bf16(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file with bfloat16 tensors, read directly into float32."""
    import ml_dtypes

    dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
    header, start = _header(path)
    data = np.memmap(path, np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise HFFormatError(f"tensor {name}: dtype {info['dtype']} is not a float type")
        a, b = info["data_offsets"]
        buf = np.asarray(data[start + a : start + b])
        out[name] = buf.view(dtypes[info["dtype"]]).reshape(info["shape"]).astype(np.float32)
    return out


def read_config(directory: Path) -> dict:
    if not (directory / CONFIG).is_file():
        raise HFFormatError(f"{directory}: no {CONFIG}")
    return json.loads((directory / CONFIG).read_text())


# ---------------------------------------------------------------------------- tensors <-> params
def _expected(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """GPT-2 tensor name (no prefix) -> shape, for ``cfg``."""
    d, f, v = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
    shapes = {"wte.weight": (v, d), "wpe.weight": (cfg.max_len, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(cfg.n_layers):
        for name, shape in {
            "ln_1.weight": (d,),
            "ln_1.bias": (d,),
            "attn.c_attn.weight": (d, 3 * d),
            "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d),
            "attn.c_proj.bias": (d,),
            "ln_2.weight": (d,),
            "ln_2.bias": (d,),
            "mlp.c_fc.weight": (d, f),
            "mlp.c_fc.bias": (f,),
            "mlp.c_proj.weight": (f, d),
            "mlp.c_proj.bias": (d,),
        }.items():
            shapes[f"h.{i}.{name}"] = shape
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def _strip(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Names without the ``transformer.`` prefix; buffers dropped; a tied lm_head checked and dropped."""
    out = {}
    for name, t in tensors.items():
        short = name.removeprefix("transformer.")
        if IGNORED.match(short):
            continue
        if short == "lm_head.weight" and cfg.tie_embeddings:
            wte = tensors.get("transformer.wte.weight", tensors.get("wte.weight"))
            if wte is not None and not np.array_equal(t, wte):
                raise HFFormatError("tensor lm_head.weight differs from wte.weight but tie_word_embeddings is true")
            continue
        out[short] = t
    return out


def params_from_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict:
    """Our parameter tree for ``cfg`` from GPT-2 tensors; unknown/missing tensors and wrong shapes raise."""
    tensors = _strip(tensors, cfg)
    expected = _expected(cfg)
    for name in sorted(tensors, key=_natural):
        if name not in expected:
            raise HFFormatError(
                f"tensor {name}: unknown to a {cfg.n_layers}-layer GPT-2 (our Transformer cannot use it)"
            )
        if tuple(tensors[name].shape) != expected[name]:
            raise HFFormatError(f"tensor {name}: shape {tuple(tensors[name].shape)}, expected {expected[name]}")
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise HFFormatError(f"tensor {missing[0]}: missing from the checkpoint ({len(missing)} missing in all)")
    t = {n: np.asarray(a, np.float32) for n, a in tensors.items()}
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.head_dim

    def norm(prefix):
        return {"scale": t[f"{prefix}.weight"], "bias": t[f"{prefix}.bias"]}

    def block(i):
        w, b = t[f"h.{i}.attn.c_attn.weight"], t[f"h.{i}.attn.c_attn.bias"]
        wq, wk, wv = (w[:, j * d : (j + 1) * d].reshape(d, h, dh) for j in range(3))
        bq, bk, bv = (b[j * d : (j + 1) * d].reshape(h, dh) for j in range(3))
        attention = {
            "query": wq,
            "key": wk,
            "value_down": wv,
            "value_up": t[f"h.{i}.attn.c_proj.weight"].reshape(h, dh, d),
            "query_bias": bq,
            "key_bias": bk,
            "value_down_bias": bv,
            "value_up_bias": t[f"h.{i}.attn.c_proj.bias"],
        }
        mlp = {
            "fc_in": t[f"h.{i}.mlp.c_fc.weight"],
            "fc_in_bias": t[f"h.{i}.mlp.c_fc.bias"],
            "fc_out": t[f"h.{i}.mlp.c_proj.weight"],
            "fc_out_bias": t[f"h.{i}.mlp.c_proj.bias"],
        }
        return {
            "attention": attention,
            "mlp": mlp,
            "norm_attention": norm(f"h.{i}.ln_1"),
            "norm_mlp": norm(f"h.{i}.ln_2"),
        }

    blocks = [block(i) for i in range(cfg.n_layers)]
    wte = _pad_rows(t["wte.weight"], cfg.padded_vocab_size)  # our tables have padded_vocab_size rows
    params: dict = {"embed": {"embedding": wte}, "pos_embed": t["wpe.weight"], "norm_final": norm("ln_f")}
    if cfg.scan_layers:
        params["blocks"] = _tree_map(lambda *xs: np.stack(xs), *blocks)
    else:
        params.update({f"block_{i}": b for i, b in enumerate(blocks)})
    if not cfg.tie_embeddings:
        params["unembed"] = _pad_rows(t["lm_head.weight"], cfg.padded_vocab_size).T
    return params


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` [V, D] with zero rows appended up to ``rows`` (the padded vocabulary; those logits are never used)."""
    return np.concatenate([a, np.zeros((rows - a.shape[0], *a.shape[1:]), a.dtype)]) if rows > a.shape[0] else a


def tensors_from_params(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
    """GPT-2 tensors (with the ``transformer.`` prefix GPT2LMHeadModel writes) from our parameter tree."""
    config_to_hf(cfg)  # raises if GPT-2 cannot express the config
    p = _tree_map(lambda a: np.asarray(a, np.float32), params)
    d, v = cfg.d_model, cfg.vocab_size
    out = {"wte.weight": p["embed"]["embedding"][:v], "wpe.weight": p["pos_embed"]}  # the padded rows stripped
    out.update({"ln_f.weight": p["norm_final"]["scale"], "ln_f.bias": p["norm_final"]["bias"]})
    for i in range(cfg.n_layers):
        b = _tree_map(lambda a, i=i: a[i], p["blocks"]) if cfg.scan_layers else p[f"block_{i}"]
        a, m = b["attention"], b["mlp"]
        out[f"h.{i}.attn.c_attn.weight"] = np.concatenate(
            [a[k].reshape(d, d) for k in ("query", "key", "value_down")], 1
        )
        out[f"h.{i}.attn.c_attn.bias"] = np.concatenate(
            [a[k].reshape(d) for k in ("query_bias", "key_bias", "value_down_bias")]
        )
        out[f"h.{i}.attn.c_proj.weight"] = a["value_up"].reshape(d, d)
        out[f"h.{i}.attn.c_proj.bias"] = a["value_up_bias"]
        out[f"h.{i}.mlp.c_fc.weight"], out[f"h.{i}.mlp.c_fc.bias"] = m["fc_in"], m["fc_in_bias"]
        out[f"h.{i}.mlp.c_proj.weight"], out[f"h.{i}.mlp.c_proj.bias"] = m["fc_out"], m["fc_out_bias"]
        for ours, theirs in (("norm_attention", "ln_1"), ("norm_mlp", "ln_2")):
            out[f"h.{i}.{theirs}.weight"], out[f"h.{i}.{theirs}.bias"] = b[ours]["scale"], b[ours]["bias"]
    expected = _expected(cfg)
    for name, t in out.items():
        if tuple(t.shape) != expected[name]:
            raise HFFormatError(f"tensor {name}: shape {tuple(t.shape)} from our params, expected {expected[name]}")
    out = {f"transformer.{n}": np.ascontiguousarray(t) for n, t in out.items()}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(p["unembed"][:, :v].T)
    return out


def _tree_map(fn, *trees):
    if isinstance(trees[0], dict):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def _natural(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


# ---------------------------------------------------------------------------- the API
def load(path: str | Path, **overrides) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a GPT-2-family checkpoint directory (or a named model, when online).

    ``overrides`` are ModelConfig fields that do not change the tensors (``scan_layers=False``,
    ``dtype='bfloat16'``, ``dropout=0.0`` ...). Parameters come back as float32 NumPy arrays.
    """
    directory = resolve(path)
    cfg = config_from_hf(read_config(directory))
    if overrides:
        cfg = cfg.replace(**overrides)
    return cfg, params_from_tensors(cfg, read_tensors(directory))


def save(cfg: ModelConfig, params, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (float32) that ``GPT2LMHeadModel.from_pretrained`` loads."""
    from safetensors.numpy import save_file

    hf_config = config_to_hf(cfg)
    tensors = tensors_from_params(cfg, params)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


# ---------------------------------------------------------------------------- command line
def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}" if prefix else k)
    else:
        yield prefix, tree


def inspect(path: str | Path, out=None) -> None:
    out = out or sys.stdout
    cfg, params = load(path)
    print(f"checkpoint {path}", file=out)
    for k, v in cfg.to_dict().items():
        print(f"  {k:18s} {v}", file=out)
    rows = list(_flatten(params))
    width = max(len(n) for n, _ in rows)
    print(f"\n{'parameter':{width}s}  {'shape':>20s}  {'count':>13s}", file=out)
    for name, a in rows:
        print(f"{name:{width}s}  {str(tuple(a.shape)):>20s}  {math.prod(a.shape):13,d}", file=out)
    print(f"{'total':{width}s}  {'':>20s}  {sum(math.prod(a.shape) for _, a in rows):13,d}", file=out)


def _export(run_dir: str, out_dir: str, step: int | None) -> int:
    """``python -m train.hf_export`` in a child process (restoring a checkpoint is train's job); its exit code.

    The child runs the train/ beside this model/ (the package root first on its PYTHONPATH), so a checkout
    and its installed copy are never mixed; its one-line errors and its output are the command's own.
    """
    import os
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "train.hf_export", run_dir, out_dir, *([] if step is None else ["--step", str(step)])]
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.call(cmd, env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.hf", description="Hugging Face GPT-2 checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("inspect", help="print a checkpoint's config and parameter table").add_argument("path")
    ex = sub.add_parser("export", help="a run of ours as a GPT-2 directory (done by python -m train.hf_export)")
    ex.add_argument("run_dir")
    ex.add_argument("out_dir")
    ex.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)
    if args.command == "export":
        return _export(args.run_dir, args.out_dir, args.step)
    try:
        inspect(args.path)
    except (HFFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
