"""Fine-tuning (train/init_from.py): ``--init-from`` a Hugging Face GPT-2 directory or a run of ours.

The checkpoint is tests/fixtures/gpt2-tiny (a random 3-layer GPT-2 with a 1000-token vocabulary). Its
vocabulary is smaller than GPT-2's 50257, so GPT-2 ids of tiny Shakespeare do not fit it: the data here
is those ids renumbered by frequency (the 999 most frequent keep distinct ids 0..998, the rest share 999),
saved as a .npy token corpus. The full-vocabulary case is the one-line refusal tested below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from train import cli
from train.config import RunDirError
from train.loop import train

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tiny"


def _shared(*parts: str) -> Path | None:
    for base in ROOT.parents:
        if (p := base.joinpath("shared", "data", *parts)).exists():
            return p
    return None


GPT2_DIR = _shared("gpt2")
SHAKESPEARE = _shared("tinyshakespeare.txt")
pytestmark = pytest.mark.skipif(GPT2_DIR is None or SHAKESPEARE is None, reason="../shared/data/gpt2 not found")
TIMING = ("ms_per_step", "tokens_per_s")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_vocab_tokens(tmp_path_factory) -> Path:
    """GPT-2 ids of tiny Shakespeare renumbered into the fixture's 1000 ids (by frequency), as a .npy."""
    from train.data.bpe import load_gpt2_bpe

    ids = np.asarray(load_gpt2_bpe(GPT2_DIR).encode(SHAKESPEARE.read_text(), allow_special=False))
    counts = np.bincount(ids, minlength=50257)
    rank = np.empty(50257, np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(50257)
    path = tmp_path_factory.mktemp("tokens") / "shakespeare-1000.npy"
    np.save(path, np.minimum(rank[ids], 999).astype(np.uint16))
    return path


def _args(run_dir: Path, tokens: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "finetune-shakespeare",
        "--init-from",
        str(FIXTURE),
        f"data.path={tokens}",
        f"data.bpe_dir={GPT2_DIR}",
        "train.seq_len=32",
        "train.batch_size=8",
        "train.grad_accum=2",
        "train.steps=8",
        "train.lr=3e-3",
        "train.min_lr=3e-3",
        "train.eval_every=4",
        "train.eval_batches=4",
        "train.checkpoint_every=100",
        f"run_dir={run_dir}",
        *extra,
    ]


def _resolve(argv):
    return cli.resolve(cli.build_parser().parse_args(argv))


def _curve(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def test_finetune_from_hf_checkpoint_lowers_the_loss_and_resumes_exactly(tmp_path, small_vocab_tokens):
    from model import hf
    from train.init_from import init_state
    from train.step import build_steps

    cfg = _resolve(_args(tmp_path / "a", small_vocab_tokens))
    hf_cfg, hf_params = hf.load(FIXTURE)
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.vocab_size) == (3, 64, 1000)  # from the checkpoint
    assert cfg.model.dropout == 0.0 and cfg.init_from == str(FIXTURE.resolve())  # the preset's dropout, nanoGPT's
    assert cfg.train.seq_len == 32 and cfg.train.schedule == "constant" and cfg.train.micro_batch_size == 4
    # the state starts from the checkpoint's parameters exactly, at step 0
    state = init_state(build_steps(cfg.model, cfg.train, cfg.seq_len).init(), cfg)
    assert int(state.step) == 0
    np.testing.assert_array_equal(np.asarray(state.params["embed"]["embedding"]), hf_params["embed"]["embedding"])

    a = train(cfg, progress=False, plots=False, log=lambda m: None)
    evals = [r for r in _curve(tmp_path / "a") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, evals  # random 1000-token GPT-2: ~6.9 at step 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["init_from"] == str(FIXTURE.resolve())

    # interrupted after step 3, resumed from its own checkpoint (init_from is not read again): bit for bit
    b_cfg = _resolve(_args(tmp_path / "b", small_vocab_tokens))
    b1 = train(b_cfg, progress=False, plots=False, log=lambda m: None, stop_after=3)
    assert b1.interrupted == "stop_after"
    messages: list[str] = []
    resumed = cli.resolve(cli.build_parser().parse_args(["--resume", str(tmp_path / "b")]))
    b2 = train(resumed, resume=True, progress=False, plots=False, log=messages.append)
    assert any("resuming" in m for m in messages) and not any("initialising" in m for m in messages)
    assert _curve(tmp_path / "b") == _curve(tmp_path / "a") and b2.final == a.final
    print(f"fine-tune val_loss {evals[0]['val_loss']:.3f} -> {evals[-1]['val_loss']:.3f}")


def test_finetune_from_a_run_of_ours(tmp_path, small_vocab_tokens):
    first = _resolve(_args(tmp_path / "first", small_vocab_tokens, "train.steps=2"))
    train(first, progress=False, plots=False, log=lambda m: None)
    argv = _args(tmp_path / "second", small_vocab_tokens, "train.steps=2", "model.dropout=0.1")
    argv[argv.index("--init-from") + 1] = str(tmp_path / "first")
    cfg = _resolve(argv)
    assert cfg.model.dropout == 0.1 and cfg.model.n_layers == 3
    messages: list[str] = []
    train(cfg, progress=False, plots=False, log=messages.append)
    assert any("initialising from" in m for m in messages)
    first_end = _curve(tmp_path / "first")[-1]["val_loss"]
    second_start = _curve(tmp_path / "second")[0]["val_loss"]
    assert second_start == pytest.approx(first_end, abs=1e-4)  # it starts where the first run ended


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.n_layers=4"], "model.n_layers=4 would change the parameter shapes of the checkpoint"),
        (["model.d_mlp=128"], None),  # GPT-2's n_inner null is 4 * n_embd = 256: 128 changes fc shapes
        (["train.seq_len=128"], "train.seq_len=128 exceeds model.max_len=64"),
    ],
)
def test_refusals_are_one_line_exit_2(tmp_path, small_vocab_tokens, capsys, extra, message):
    code = cli.main(_args(tmp_path / "x", small_vocab_tokens, *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert message is None or message in err, err
    if message is None:
        assert "model.d_mlp=128" in err


def test_shape_neutral_overrides_are_allowed(tmp_path, small_vocab_tokens):
    cfg = _resolve(_args(tmp_path / "x", small_vocab_tokens, "model.dropout=0.2", "model.attention_impl=reference"))
    assert cfg.model.dropout == 0.2 and cfg.model.attention_impl == "reference"


def test_other_refusals(tmp_path, small_vocab_tokens, capsys):
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    cases = {
        "non-gpt2": (_args(tmp_path / "a", small_vocab_tokens), ["--init-from", str(llama)], "model_type='llama'"),
        "no init": (["--config", "finetune-shakespeare"], [], "pass --init-from PATH"),
        # GPT-2 text of tiny Shakespeare needs 50257 ids; the fixture has 1000
        "vocab": (
            _args(tmp_path / "b", small_vocab_tokens, f"data.path={SHAKESPEARE}"),
            [],
            "the data has 50257 token ids (data.level=gpt2) but the checkpoint",
        ),
    }
    for name, (argv, swap, message) in cases.items():
        argv = list(argv)
        if swap:
            argv[argv.index("--init-from") + 1] = swap[1]
        code = cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and message in err, (name, err)
    with pytest.raises(RunDirError, match="only one of them"):
        _resolve(["--resume", str(tmp_path / "a"), "--init-from", str(FIXTURE)])
