"""Synthetic recall tasks (the table :data:`TASKS`): ``induction`` (repeated random tokens, Olsson et al.
2022), ``shifted_induction`` (the repeat at a random place, with a random period: the main job), ``mqar`` (multi-query associative recall, Arora et al. 2023, "Zoology") and ``copy``; each has a
loss mask on the positions whose target is predictable from the context.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from train.data.base import DataConfig, Dataset
from train.data.tokenizers import as_ids

# Zoology's power law for the gap between a key-value pair and its query (power_a = 0.01 there):
# p(slot i) ∝ i^(a - 1), i = 1..slots, so most queries come soon after the key-value pairs.
MQAR_POWER_A = 0.01


def induction_sequences(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int):
    """Repeated random tokens (Olsson et al. 2022, "In-context learning and induction heads").

    Sequence [T+1] = BOS, r_0 .. r_{L-1}, r_0 .. r_{L-1} (, r_0 when T is odd) with L = T // 2,
    r uniform over the vocab_size ordinary tokens (with replacement), BOS = vocab_size.
    Loss at input positions t >= L + 1: the input is in the repeat, so its next token is the one that
    followed the input's previous occurrence L positions earlier (the induction position).
    Returns (tokens [B, T+1] int64, loss_mask [B, T]).
    """
    half = seq_len // 2
    r = rng.integers(0, vocab_size, size=(batch_size, half))  # [B, L]
    reps = -(-seq_len // half)  # ceil(T / L)
    body = np.tile(r, (1, reps))[:, :seq_len]  # [B, T]
    seqs = np.concatenate([np.full((batch_size, 1), vocab_size), body], axis=1)  # [B, T+1]
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[:, half + 1 :] = 1.0
    return seqs, mask


def shifted_induction_sequences(
    rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int, min_period: int | None = None
):
    """BOS, noise of length T - 2L, then r_0..r_{L-1} twice, with L uniform in [min_period, T // 2] per row.

    Returns (tokens [B, T+1] int64, loss_mask [B, T] float32, period [B] int64). The mask is 1 on the
    input positions of the second copy whose target is in it too (r_0 .. r_{L-2} as inputs): exactly
    the positions predictable by induction. BOS = vocab_size. ``min_period`` defaults to max(2, T // 4).

    Because the repeat starts at a different place in every row, no head can find the earlier copy by
    position: only the two-layer induction circuit (a previous-token head, then a head matching the
    current token against the keys' previous tokens) predicts it (experiments/induction.py).
    """
    t = seq_len
    min_period = max(2, t // 4) if min_period is None else min_period
    period = rng.integers(min_period, t // 2 + 1, size=batch_size)  # [B] L
    start2 = 1 + (t - 2 * period) + period  # [B] position of the second copy's first token
    seqs = rng.integers(0, vocab_size, size=(batch_size, t + 1))  # [B, T+1] noise and first copy
    seqs[:, 0] = vocab_size
    pos = np.arange(t + 1)[None, :]  # [1, T+1]
    second = pos >= start2[:, None]
    src = np.where(second, pos - period[:, None], pos)  # the second copy reads the first
    seqs = np.take_along_axis(seqs, src, axis=1)
    mask = (np.arange(t)[None, :] >= start2[:, None]).astype(np.float32)  # inputs t in [start2, T-1]
    return seqs, mask, period


def _shifted_induction_task(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int):
    return shifted_induction_sequences(rng, batch_size, seq_len, vocab_size)[:2]


def copy_sequences(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int):
    """Copy a random sequence after a separator.

    Sequence [T+1] = r_0 .. r_{L-1}, SEP, r_0 .. r_{L-1} (, SEP when T is odd) with L = T // 2,
    r uniform over the ordinary tokens, SEP = vocab_size. Loss on the copy: input positions L .. 2L-1
    (from the separator, which predicts r_0, to r_{L-2}, which predicts r_{L-1}).
    Returns (tokens [B, T+1] int64, loss_mask [B, T]).
    """
    half = seq_len // 2
    r = rng.integers(0, vocab_size, size=(batch_size, half))  # [B, L]
    sep = np.full((batch_size, 1), vocab_size)
    parts = [r, sep, r] + ([sep] if seq_len % 2 else [])
    seqs = np.concatenate(parts, axis=1)  # [B, T+1]
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[:, half : 2 * half] = 1.0
    return seqs, mask


def mqar_sequences(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int, n_pairs: int):
    """Multi-query associative recall (Arora et al. 2023, "Zoology", arXiv:2312.04927, Sec. 3).

    Sequence [T+1] = k_1 v_1 .. k_n v_n, then a query region where each key k_j appears once more,
    followed by its value v_j, at one of the (T+1-2n)//2 two-token slots (slot chosen with Zoology's
    power law, MQAR_POWER_A); the other positions are filler. Keys are distinct draws from the lower
    half of the vocabulary [0, V/2), values distinct draws from the upper half [V/2, V).
    Loss only where the input is a query key and the target its value.

    Two departures from Zoology's generator, both so that inputs and targets are one sequence
    shifted by a token and every occurrence of a key after the pairs is a real query: the value
    follows its query in the input stream (Zoology puts filler there), and filler is uniform over
    the vocabulary minus this sequence's keys (Zoology's filler may repeat a key, unlabelled).
    Returns (tokens [B, T+1] int64, loss_mask [B, T]).
    """
    n, half = n_pairs, vocab_size // 2
    context = 2 * n
    slots = (seq_len + 1 - context) // 2
    # distinct keys / values per row: the first n entries of a random permutation of each half
    keys = np.argsort(rng.random((batch_size, half)), axis=1)[:, :n]  # [B, n] in [0, V/2)
    values = half + np.argsort(rng.random((batch_size, vocab_size - half)), axis=1)[:, :n]  # [B, n] in [V/2, V)
    # query slots without replacement, p ∝ i^(a-1): Gumbel top-k (equal in law to successive sampling)
    logp = (MQAR_POWER_A - 1.0) * np.log(np.arange(1, slots + 1))
    scores = logp + rng.gumbel(size=(batch_size, slots))  # [B, slots]
    slot = np.argsort(-scores, axis=1)[:, :n]  # [B, n]: key j is queried at slot[:, j]

    # filler: uniform over the V - n tokens that are not this row's keys (shift past each sorted key)
    seqs = rng.integers(0, vocab_size - n, size=(batch_size, seq_len + 1))  # [B, T+1]
    for k in np.sort(keys, axis=1).T:  # ascending keys: r -> r-th non-key token
        seqs += seqs >= k[:, None]
    rows = np.arange(batch_size)[:, None]
    seqs[:, 0:context:2] = keys
    seqs[:, 1:context:2] = values
    qpos = context + 2 * slot  # [B, n] positions of the query keys
    seqs[rows, qpos] = keys
    seqs[rows, qpos + 1] = values
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[rows, qpos] = 1.0
    return seqs, mask


# The synthetic tasks as a table: generator, names of its special tokens (ids vocab_size, vocab_size+1, ...)
# and the shortest seq_len it supports.
TASKS: dict[str, dict[str, Any]] = {
    "induction": {"fn": induction_sequences, "specials": ("bos",), "min_len": lambda cfg: 3},
    "shifted_induction": {"fn": _shifted_induction_task, "specials": ("bos",), "min_len": lambda cfg: 4},
    "copy": {"fn": copy_sequences, "specials": ("sep",), "min_len": lambda cfg: 2},
    "mqar": {"fn": mqar_sequences, "specials": (), "min_len": lambda cfg: 4 * cfg.n_pairs},
}


class SyntheticDataset(Dataset):
    """A synthetic task from :data:`TASKS`: fresh random sequences for every (seed, split, step)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.task = TASKS[cfg.task]
        self.specials = {name: cfg.vocab_size + i for i, name in enumerate(self.task["specials"])}
        self.vocab_size = cfg.vocab_size + len(self.specials)

    def check_seq_len(self, seq_len: int) -> None:
        need = self.task["min_len"](self.cfg)
        if seq_len < need:
            extra = f" (4 * n_pairs={self.cfg.n_pairs})" if self.cfg.task == "mqar" else ""
            raise ValueError(
                f"seq_len={seq_len} is too short for the {self.cfg.task} task: it needs seq_len >= {need}{extra}"
            )

    def _sequences(self, rng, split, batch_size, seq_len):
        self.check_seq_len(seq_len)
        kw = {"n_pairs": self.cfg.n_pairs} if self.cfg.task == "mqar" else {}
        return self.task["fn"](rng, batch_size, seq_len, self.cfg.vocab_size, **kw)

    def encode(self, text: str) -> np.ndarray:
        """Space-separated ids -> ids [N] int32 (the inverse of decode)."""
        try:
            ids = np.array([int(t) for t in text.split()], dtype=np.int64)
        except ValueError:
            raise ValueError(
                f"a {self.cfg.task} prompt is space-separated integer token ids, got {text[:40]!r}"
            ) from None
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"prompt ids must be in [0, {self.vocab_size}) for the {self.cfg.task} task")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return " ".join(str(i) for i in as_ids(ids).tolist())

    def vocab_info(self) -> dict[str, Any]:
        return {
            "task": self.cfg.task,
            "level": None,
            "vocab_size": self.vocab_size,
            "chars": None,
            "specials": self.specials,
            "source": None,
            "sha256": None,
        }
