"""Training data: text corpora (character or byte level, memory-mapped) and synthetic recall tasks.

    ds = build_dataset(DataConfig(task="text"), seq_len=256)        # tiny Shakespeare, characters
    b = ds.batch("train", step=0, batch_size=64, seq_len=256)
    b["inputs"], b["targets"]      # [B, T] int32, targets = inputs shifted left by one token
    b["loss_mask"]                 # [B, T] float32, 1 where the loss counts

Every batch is a pure function of ``(cfg.seed, split, step)`` (plus the batch shape), so a run
resumed at step ``s`` sees exactly the batches it would have seen without the interruption.

The package, one job per module:

    base.py        DataConfig, the Dataset interface, seeded generators, atomic writes
    tokenizers.py  text <-> ids: the Tokenizer interface and its kinds (char, byte) in TOKENIZERS
    text.py        text corpora: tiny Shakespeare or any file, encoded once, cached, memory-mapped; download
    synthetic.py   synthetic tasks (induction, mqar, copy) in the table TASKS
    build.py       build_dataset(cfg, seq_len) and load_dataset_for_run(run_dir, cfg)
    __main__.py    ``python -m train.data download`` (tiny Shakespeare) and ``python -m train.data bench``
"""

from train.data.base import LEVELS, SPLITS, TASK_NAMES, VOCAB_FILE, DataConfig, Dataset, _rng
from train.data.build import build_dataset, load_dataset_for_run
from train.data.synthetic import (
    MQAR_POWER_A,
    TASKS,
    SyntheticDataset,
    copy_sequences,
    induction_sequences,
    mqar_sequences,
)
from train.data.text import (
    CACHE_ENV,
    DEFAULT_DOWNLOAD_PATH,
    DEFAULT_TEXT_CANDIDATES,
    PROJECT_ROOT,
    TINY_SHAKESPEARE_URL,
    DownloadError,
    TextDataset,
    cache_dir,
    download,
    resolve_text_path,
)
from train.data.tokenizers import TOKENIZERS, ByteTokenizer, CharTokenizer, Tokenizer

__all__ = [
    "CACHE_ENV",
    "DEFAULT_DOWNLOAD_PATH",
    "DEFAULT_TEXT_CANDIDATES",
    "LEVELS",
    "MQAR_POWER_A",
    "PROJECT_ROOT",
    "SPLITS",
    "TASKS",
    "TASK_NAMES",
    "TINY_SHAKESPEARE_URL",
    "TOKENIZERS",
    "VOCAB_FILE",
    "ByteTokenizer",
    "CharTokenizer",
    "DataConfig",
    "Dataset",
    "DownloadError",
    "SyntheticDataset",
    "TextDataset",
    "Tokenizer",
    "build_dataset",
    "cache_dir",
    "copy_sequences",
    "download",
    "induction_sequences",
    "load_dataset_for_run",
    "mqar_sequences",
    "resolve_text_path",
    "_rng",
]
