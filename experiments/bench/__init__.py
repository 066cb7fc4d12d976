"""Benchmarks against peers, apart from the paper reproductions: attention kernels against torch SDPA
(``python -m experiments.bench.attention``), training speed against nanoGPT's PyTorch step
(``.train``, with the baseline in ``nanogpt_torch.py``), sampling speed (``.sample``); ``measure.py``
holds how they measure (timing, XLA scratch, peak RSS, devices), which experiments.context also uses."""
