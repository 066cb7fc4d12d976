"""A run's success criterion: '<metric> <= x' or '<metric> >= x', judged on the final evaluation."""

import re

from train.errors import ConfigError

GOAL_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


def parse_goal(goal: str) -> tuple[str, str, float]:
    """'val_accuracy >= 0.9' -> ('val_accuracy', '>=', 0.9); anything else raises ConfigError."""
    m = GOAL_RE.match(goal) if isinstance(goal, str) else None
    if m is None:
        raise ConfigError(f"goal={goal!r}: write it as '<metric> <= <number>' or '<metric> >= <number>'")
    try:
        return m.group(1), m.group(2), float(m.group(3))
    except ValueError:
        raise ConfigError(f"goal={goal!r}: {m.group(3)!r} is not a number") from None


def goal_met(goal: str | None, metrics: dict[str, float]) -> bool | None:
    """Whether the final evaluation's ``metrics`` satisfy ``goal`` (None without a goal); a missing metric raises."""
    if goal is None:
        return None
    name, op, threshold = parse_goal(goal)
    if name not in metrics:
        raise ConfigError(f"goal={goal!r}: the evaluation has no metric {name!r}; known: {', '.join(sorted(metrics))}")
    return metrics[name] <= threshold if op == "<=" else metrics[name] >= threshold
