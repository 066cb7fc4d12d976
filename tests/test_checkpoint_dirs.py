"""A Hugging Face GPT-2 directory wherever a run directory is accepted: train.sample, experiments.show_attention,
model.params; and sampling the GPT-2 fixture with the cache gives the full forward pass's logits (to 1e-4).

The checkpoint is tests/fixtures/gpt2-tiny (vocabulary 1000, 64 positions, no tokenizer files): prompts
use GPT-2 tokens below 1000 and the tokenizer comes from ../shared/data/gpt2 (--bpe-dir).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import hf
from model.transformer import Transformer
from train.sample import SamplingConfig, make_generate

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "gpt2-tiny"
PROMPT = "I am in the world of it"  # GPT-2 ids [40, 716, 287, 262, 995, 286, 340]: all < 1000


def _shared(*parts: str) -> Path | None:
    for base in ROOT.parents:
        if (p := base.joinpath("shared", "data", *parts)).exists():
            return p
    return None


GPT2_DIR = _shared("gpt2")
needs_gpt2 = pytest.mark.skipif(GPT2_DIR is None, reason="../shared/data/gpt2 not found")


def test_cached_sampling_of_the_gpt2_fixture_equals_full_forward():
    from tests.test_sample import reference_logits

    cfg, params = hf.load(FIXTURE)
    model = Transformer(cfg)
    prompt = np.array([[40, 716, 287, 262, 995, 286, 340]], np.int32)
    max_new, shift = 70, 16  # 7 + 70 tokens through the 64-position cache: decode steps, then a refill
    generate = make_generate(
        model, 7, max_new, SamplingConfig(temperature=1.0), context_shift=shift, return_logits=True
    )
    new, logits = generate(params, jnp.asarray(prompt), jax.random.key(0))
    tokens = np.concatenate([prompt, np.asarray(new)], axis=1)
    expected = reference_logits(model, params, tokens, 7, shift)
    assert np.abs(np.asarray(logits) - expected).max() < 1e-4


@needs_gpt2
def test_sample_command_on_a_hf_directory(capsys):
    from train.sample import main

    argv = [str(FIXTURE), "--prompt", PROMPT, "--max-new-tokens", "8", "--greedy", "--bpe-dir", str(GPT2_DIR)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert out.out.startswith(PROMPT) and "tokens/s" in out.err
    assert main([str(FIXTURE), "--prompt", "ROMEO:", "--bpe-dir", str(GPT2_DIR)]) == 2  # 'ROMEO' is id 49, 'OME' not
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "but the model's vocabulary is 1000 ids" in err


@needs_gpt2
def test_show_attention_on_a_hf_directory_labels_bpe_tokens(tmp_path):
    from experiments.show_attention import main, patterns_for_prompt

    pat, labels, cfg = patterns_for_prompt(FIXTURE, PROMPT, bpe_dir=str(GPT2_DIR))
    assert pat.shape == (3, 4, 7, 7) and labels == ["I", " am", " in", " the", " world", " of", " it"]
    np.testing.assert_allclose(pat.sum(-1), 1.0, atol=1e-5)
    out = tmp_path / "att.png"
    assert main([str(FIXTURE), "--prompt", PROMPT, "--bpe-dir", str(GPT2_DIR), "--out", str(out)]) == 0
    assert out.stat().st_size > 0


@needs_gpt2
def test_hf_directory_with_its_own_tokenizer_files(tmp_path):
    """A checkpoint saved with vocab.json + merges.txt (as transformers writes them) needs no --bpe-dir."""
    import shutil

    from train.data.bpe import bytes_to_unicode
    from train.sample import load_codec

    d = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, d)
    shutil.copy(GPT2_DIR / "encoder.json", d / "vocab.json")
    shutil.copy(GPT2_DIR / "vocab.bpe", d / "merges.txt")
    cfg, ds = load_codec(d)
    assert cfg.data.bpe_dir == str(d) and ds.encode(PROMPT).tolist() == [40, 716, 287, 262, 995, 286, 340]
    assert len(bytes_to_unicode()) == 256


def test_params_counts_a_checkpoint(capsys, tmp_path):
    from model.params import main

    assert main(["--checkpoint", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "tensors in the checkpoint's files: 218,176 (agrees)" in out
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["--checkpoint", str(tmp_path)]) == 2
    assert "model_type='llama'" in capsys.readouterr().err
