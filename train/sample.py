"""Text from a trained run, with a key/value cache: ``python -m train.sample RUN_DIR --prompt "..." --max-new-tokens N``.

    python -m train.sample runs/x --prompt "ROMEO:" --max-new-tokens 500              # temperature 1
    python -m train.sample runs/x --prompt "ROMEO:" --max-new-tokens 500 --greedy     # argmax
    python -m train.sample runs/x --prompt "ROMEO:" --temperature 0.8 --top-k 40 --top-p 0.95 --seed 1

The whole generation is one jitted function (one dispatch): a prefill of the prompt fills the cache,
then a ``lax.scan`` over the new tokens samples one token and feeds it back (``decode=True``), so each
step costs one token's forward pass. The logits of every step equal those of a full forward pass over
the same context (tests/test_sample.py checks it to 1e-5).

Sliding context: the cache holds ``max_len`` tokens. When it is full, the last ``max_len - shift``
tokens are prefilled again at positions 0.. (``--context-shift``, default max_len // 4), so every token
is predicted from between ``max_len - shift`` and ``max_len`` previous tokens, as a model with absolute
positions must be (nanoGPT crops to the last max_len tokens and recomputes everything per token; this
recomputes once per ``shift`` tokens). A prompt longer than max_len is cropped to its last max_len tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from model.transformer import Transformer, init_cache, unroll_layers


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is drawn from the logits."""

    temperature: float = 1.0  # logits / temperature; 0 means greedy (argmax)
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p (nucleus)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: must be >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")


def filter_logits(logits: jax.Array, sc: SamplingConfig) -> jax.Array:
    """``logits`` ``[B, V]`` / temperature, with the tokens outside top-k / top-p set to -inf (float32)."""
    logits = logits.astype(jnp.float32) / sc.temperature
    if sc.top_k is not None and sc.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sc.top_k)[0][:, -1:]  # [B, 1] the k-th largest logit
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sc.top_p is not None and sc.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of the strictly more likely tokens
        keep = before < sc.top_p  # the first token is always kept
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def pick(logits: jax.Array, gumbel: jax.Array | None, sc: SamplingConfig) -> jax.Array:
    """One token per row of ``logits`` ``[B, V]`` -> ``[B]`` int32: argmax (greedy), else the Gumbel-max draw.

    argmax(filtered logits + Gumbel noise ``[B, V]``) is a draw from softmax(filtered logits) (the
    Gumbel-max trick, what jax.random.categorical does); taking the noise as an argument lets
    generation draw all of it with one call before the loop instead of one call per token.
    """
    if sc.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jnp.argmax(filter_logits(logits, sc) + gumbel, axis=-1).astype(jnp.int32)


def next_token(logits: jax.Array, key: jax.Array, sc: SamplingConfig) -> jax.Array:
    """Draw one token per row of ``logits`` ``[B, V]`` (float32) -> ``[B]`` int32, by ``sc``."""
    return pick(logits, jax.random.gumbel(key, logits.shape, jnp.float32), sc)


def make_generate(
    model: Transformer,
    prompt_len: int,
    max_new_tokens: int,
    sc: SamplingConfig = SamplingConfig(),
    *,
    context_shift: int | None = None,
    vocab_limit: int | None = None,
    return_logits: bool = False,
) -> Callable:
    """A jitted ``generate(params, prompt [B, P] int32, key) -> new tokens [B, N]`` (and logits ``[B, N, V]``).

    Logits ``[:, i]`` are the ones token ``i`` was drawn from. ``P`` must be <= max_len (crop first).
    ``vocab_limit``: only ids below it are drawn (a model vocabulary padded beyond the data's).
    The cache holds ``max_len`` tokens; when feeding a token would overflow it, the newest
    ``max_len - context_shift`` tokens (the fed one included) are prefilled afresh at positions 0...
    """
    cfg = model.config
    scanned = cfg.scan_layers
    if scanned:  # one token per step: L unrolled blocks run faster than a loop over layers
        model = Transformer(cfg.replace(scan_layers=False))
    t_max = cfg.max_len
    shift = max(1, t_max // 4) if context_shift is None else context_shift
    if not 1 <= shift <= t_max - 1 and t_max > 1:
        raise ValueError(f"context_shift={shift}: must be in [1, max_len - 1 = {t_max - 1}]")
    keep = t_max - shift  # tokens kept in context after a refill
    if not 1 <= prompt_len <= t_max:
        raise ValueError(f"prompt length {prompt_len}: must be in [1, max_len={t_max}] (crop longer prompts)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    total = prompt_len + max_new_tokens

    def draw(logits, noise):
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
        return pick(logits, noise, sc)

    def prefill(params, tokens):
        """A fresh cache holding ``tokens`` [B, n] at positions 0..n-1, and the logits of the last one [B, V]."""
        cache = init_cache(model, tokens.shape[0])
        logits, variables = model.apply({"params": params, "cache": cache}, tokens, decode=True, mutable=["cache"])
        return variables["cache"], logits[:, -1]

    n_feeds = max_new_tokens - 1  # drawn tokens that are fed back (the last one is not)
    n_plain = min(n_feeds, t_max - prompt_len)  # feeds before the cache is first full
    n_windows, remainder = divmod(n_feeds - n_plain, shift + 1)  # then: refill + `shift` feeds, repeated

    def generate(params, prompt, key):
        if scanned:
            params = unroll_layers(params, cfg.n_layers)
        b = prompt.shape[0]
        buf = jnp.zeros((b, total), jnp.int32).at[:, :prompt_len].set(prompt)  # every token so far
        cache, logits = prefill(params, prompt)
        # the Gumbel noise of every draw [N, B, V] from one call (one per draw if that would pass 256 MB)
        v = logits.shape[-1]
        at_once = max_new_tokens * b * v <= 1 << 26
        gumbel = jax.random.gumbel(key, (max_new_tokens, b, v), jnp.float32) if at_once and sc.temperature else None

        def noise(i):
            if sc.temperature == 0.0:
                return None  # greedy
            return gumbel[i] if at_once else jax.random.gumbel(jax.random.fold_in(key, i), (b, v), jnp.float32)

        # Each step draws token i from `logits`, writes it at buf[:, prompt_len + i] and feeds it to the
        # model, either into the cache (feed) or as the newest of `keep` tokens prefilled afresh (refill).
        # The phases are static (they depend on prompt_len, max_new_tokens, max_len and shift only),
        # so the loops hold no branches.
        def draw_and_write(carry, i):
            cache, logits, buf = carry
            tok = draw(logits, noise(i))
            buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, prompt_len + i))
            return tok, buf, (tok, logits) if return_logits else tok

        def feed(carry, i):
            tok, buf, out = draw_and_write(carry, i)
            new_logits, variables = model.apply(
                {"params": params, "cache": carry[0]}, tok[:, None], decode=True, mutable=["cache"]
            )
            return (variables["cache"], new_logits[:, -1], buf), out

        def refill(carry, i):
            tok, buf, out = draw_and_write(carry, i)
            context = jax.lax.dynamic_slice(buf, (0, prompt_len + i + 1 - keep), (b, keep))  # newest `keep`
            new_cache, new_logits = prefill(params, context)
            return (new_cache, new_logits, buf), out

        def window(carry, i0):  # a refill at step i0, then `shift` feeds
            carry, first = refill(carry, i0)
            carry, rest = jax.lax.scan(feed, carry, i0 + 1 + jnp.arange(shift))
            return carry, jax.tree.map(lambda f, r: jnp.concatenate([f[None], r]), first, rest)

        carry, outs = (cache, logits, buf), []
        carry, out = jax.lax.scan(feed, carry, jnp.arange(n_plain))
        outs.append(out)
        if n_windows:
            starts = n_plain + (shift + 1) * jnp.arange(n_windows)
            carry, out = jax.lax.scan(window, carry, starts)
            outs.append(jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out))  # [W, shift+1, ...] -> steps
        if remainder:
            i0 = n_plain + (shift + 1) * n_windows
            carry, first = refill(carry, i0)
            carry, out = jax.lax.scan(feed, carry, i0 + 1 + jnp.arange(remainder - 1))
            outs.append(jax.tree.map(lambda f, r: jnp.concatenate([f[None], r]), first, out))
        _, logits, _ = carry
        last = draw(logits, noise(n_feeds))
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)  # [N-1, B, ...] in step order
        toks = out[0] if return_logits else out
        tokens = jnp.concatenate([toks.T, last[:, None]], axis=1)  # [B, N]
        if return_logits:
            return tokens, jnp.concatenate([jnp.swapaxes(out[1], 0, 1), logits[:, None]], axis=1)  # [B, N, V]
        return tokens

    return jax.jit(generate)


# ---------------------------------------------------------------------------- loading a run or a checkpoint
def is_hf_dir(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face checkpoint directory (its config.json has a model_type) rather than a run."""
    import json

    config = Path(path) / "config.json"
    try:
        d = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "model_type" in d and "train" not in d


def load_run(run_dir: str | Path, step: int | None = None, *, bpe_dir: str | None = None):
    """(RunConfig, Transformer, params, dataset codec) of a run directory's checkpoint (default: newest),
    or of a Hugging Face GPT-2 directory (see :func:`load_codec`)."""
    cfg, ds = load_codec(run_dir, bpe_dir=bpe_dir)
    model, params = load_params(run_dir, cfg, step)
    return cfg, model, params, ds


def load_codec(run_dir: str | Path, *, bpe_dir: str | None = None):
    """(RunConfig, dataset for encode/decode): JSON files only, no corpus and no arrays.

    A Hugging Face GPT-2 directory becomes a RunConfig of its model (data.level=gpt2) whose tokenizer is
    ``bpe_dir``, else the directory's own vocab.json + merges.txt, else tiktoken's gpt2 (online). For a run
    of ours, ``bpe_dir`` replaces a GPT-2 run's saved tokenizer directory (when it has moved).
    """
    from train.config import RunConfig, TrainConfig, load_run_config
    from train.data import DataConfig, load_dataset_for_run

    if is_hf_dir(run_dir):
        from model import hf
        from train.data import TextDataset
        from train.data.bpe import FILE_PAIRS
        from train.data.tokenizers import GPT2Tokenizer

        model_cfg = hf.config_from_hf(hf.read_config(Path(run_dir)))
        p = Path(run_dir)
        if bpe_dir is None and any((p / a).is_file() and (p / b).is_file() for a, b in FILE_PAIRS):
            bpe_dir = str(p)
        data = DataConfig(task="text", level="gpt2", bpe_dir=bpe_dir)
        cfg = RunConfig(name=p.resolve().name, model=model_cfg, data=data, train=TrainConfig())
        try:
            tok = GPT2Tokenizer.load(bpe_dir, str(p))
        except ValueError as e:
            raise ValueError(f"{e} (or pass --bpe-dir DIR)") from None
        ds = TextDataset(data, tokenizer=tok, tokens=None, source=str(p), sha256=None)
        ds.vocab_size = min(tok.vocab_size, model_cfg.vocab_size)
        return cfg, ds
    cfg = load_run_config(run_dir)
    if bpe_dir is not None and cfg.data.level == "gpt2":
        cfg = cfg.replace(data=cfg.data.replace(bpe_dir=bpe_dir))
    return cfg, load_dataset_for_run(run_dir, cfg.data)


def check_prompt_ids(ids: np.ndarray, cfg) -> None:
    """A prompt token the model has no embedding for (a GPT-2 id beyond a small checkpoint's vocabulary) is one line."""
    if ids.size and int(ids.max()) >= cfg.model.vocab_size:
        raise ValueError(
            f"the prompt has token id {int(ids.max())} but the model's vocabulary is {cfg.model.vocab_size} "
            f"ids: use a prompt whose tokens the model knows"
        )


def load_params(run_dir: str | Path, cfg, step: int | None = None):
    """(Transformer, params) restored from checkpoint ``step`` (default: newest) into an abstract target;
    a Hugging Face directory's parameters through model/hf.py (it has one 'step')."""
    from model.transformer import Transformer

    if is_hf_dir(run_dir):
        from model import hf

        if step is not None:
            raise ValueError(f"{run_dir} is a Hugging Face checkpoint: it has no --step")
        model_cfg, params = hf.load(run_dir, **{k: v for k, v in cfg.model.to_dict().items() if k == "scan_layers"})
        return Transformer(model_cfg), jax.tree.map(jnp.asarray, params)

    from train.checkpoint import Checkpointer
    from train.loop import CHECKPOINT_DIR
    from train.step import abstract_state, model_and_optimizer

    model, tx, _ = model_and_optimizer(cfg.model, cfg.train)
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir} not found: the run has no checkpoint yet")
    with Checkpointer(ckpt_dir, async_save=False) as ckpt:
        state, _ = ckpt.restore(abstract_state(model, tx, cfg.seq_len), step)
    return model, state.params


def sampling_notices(
    sc: SamplingConfig, vocab_size: int, prompt_len: int, max_new_tokens: int, max_len: int, context_shift: int | None
) -> list[str]:
    """One line per request that is valid but does not do what it may seem to: a top-k that keeps the whole
    vocabulary, a generation longer than the context window (the context slides)."""
    notes = []
    if sc.top_k is not None and sc.top_k >= vocab_size and sc.temperature:
        notes.append(
            f"--top-k {sc.top_k} is not below the vocabulary's {vocab_size} tokens: it keeps every token (no top-k filter)"
        )
    if prompt_len + max_new_tokens > max_len:
        shift = max(1, max_len // 4) if context_shift is None else context_shift
        notes.append(
            f"prompt ({prompt_len}) + --max-new-tokens ({max_new_tokens}) exceeds max_len={max_len}: the context "
            f"slides; when it is full the newest {max_len - shift} tokens are kept (--context-shift {shift}), so later "
            f"tokens never see the start"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    from model.host import tune_host

    tune_host()
    p = argparse.ArgumentParser(
        prog="python -m train.sample", description="Generate from a trained run or a Hugging Face GPT-2 directory."
    )
    p.add_argument("run_dir", help="a run directory written by `python -m train`, or a Hugging Face GPT-2 directory")
    p.add_argument("--bpe-dir", default=None, help="GPT-2 tokenizer files (encoder.json + vocab.bpe) if not found")
    p.add_argument("--prompt", default=None, help="start text (default: a newline for text runs)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--greedy", action="store_true", help="argmax at every step (same as --temperature 0)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="independent samples of the prompt (the batch)")
    p.add_argument("--context-shift", type=int, default=None, help="tokens dropped when the context is full")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)
    try:
        if args.max_new_tokens < 1 or args.num_samples < 1:
            raise ValueError("--max-new-tokens and --num-samples must be >= 1")
        sc = SamplingConfig(0.0 if args.greedy else args.temperature, args.top_k, args.top_p)
        cfg, ds = load_codec(args.run_dir, bpe_dir=args.bpe_dir)
        text = cfg.data.task == "text"
        prompt = args.prompt if args.prompt is not None else ("\n" if text else None)
        if prompt is None or (not prompt.strip() and not text):
            raise ValueError(f"a {cfg.data.task} run needs --prompt (space-separated token ids, e.g. --prompt '1 2 3')")
        if not prompt:
            raise ValueError("the prompt is empty: give at least one character (without --prompt it is a newline)")
        ids = np.asarray(ds.encode(prompt), np.int32)
        if ids.size == 0:
            raise ValueError("the prompt encodes to no tokens: give at least one character")
        check_prompt_ids(ids, cfg)
        cropped = ids.size > cfg.model.max_len
        ids = ids[-cfg.model.max_len :]
        model, params = load_params(args.run_dir, cfg, args.step)
        generate = make_generate(
            model, ids.size, args.max_new_tokens, sc, context_shift=args.context_shift, vocab_limit=ds.vocab_size
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in sampling_notices(
        sc, ds.vocab_size, ids.size, args.max_new_tokens, cfg.model.max_len, args.context_shift
    ):
        print(f"notice: {line}", file=sys.stderr)

    prompts = jnp.asarray(np.tile(ids[None, :], (args.num_samples, 1)))
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    compiled = generate.lower(params, prompts, key).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = np.asarray(compiled(params, prompts, key))  # the host copy waits for the result
    seconds = time.perf_counter() - t0
    for row in tokens:
        print(prompt + ds.decode(row) if cfg.data.task == "text" else prompt + " | " + ds.decode(row))
        if args.num_samples > 1:
            print("-" * 40)
    n = tokens.size
    print(
        f"[{n} new tokens in {seconds * 1e3:.1f} ms: {n / seconds:,.0f} tokens/s (batch {args.num_samples}; "
        f"compile {compile_s:.1f} s excluded){'; prompt cropped to max_len' if cropped else ''}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
