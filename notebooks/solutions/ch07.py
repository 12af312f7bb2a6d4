"""Solutions to chapter 07's exercises. Each takes the objects the notebook has and returns the answer."""

from __future__ import annotations


def exercise_1(result, reference) -> int:
    """Tokens before the first divergence: walk both sequences and stop at the first difference."""
    n = 0
    for mine, full in zip(result.tokens.tolist(), reference.tokens.tolist()):
        if mine != full:
            break
        n += 1
    return n


def exercise_2(result) -> float:
    """New tokens per verification pass; the first new token comes from the prompt's own pass."""
    return (result.n_tokens - 1) / result.verify_passes
