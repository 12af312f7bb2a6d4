"""The guarantee checked by replay: redraw many calibration/test splits of one traced pool, certify on each
calibration part with Learn-then-Test and measure the risk on the test part (``guarantee_check``), summarise
how often the guarantee was violated (``violation_summary``) and what it costs in layers saved for each
calibration size and risk level (``price_of_guarantee``). Beside Learn-then-Test, rules without a guarantee:
a threshold chosen elsewhere, or chapter 03's empirical rule (the most layers saved within a calibration risk).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..common.replay import layers_saved, most_saved_within
from .exit_replay import ExitReplay
from .ltt import NEVER_EXIT, learn_then_test


def guarantee_check(replay: ExitReplay, *, n_cal: int, n_draws: int = 200, delta: float = 0.02,
                    epsilon: float = 0.05, risk: str = "disagreement", method: str = "binomial",
                    procedure: str = "fixed_sequence", fixed: Mapping[str, float] | None = None,
                    empirical: Mapping[str, float] | None = None, seed: int = 0) -> pd.DataFrame:
    """Redraw ``n_draws`` random calibration/test splits of the replayed pool (``n_cal`` prompts calibrate, the
    other ``n - n_cal`` test); in each, certify with Learn-then-Test on calibration and measure the risk on test.
    Beside it, rules without a guarantee: ``fixed`` (name → a threshold chosen elsewhere, e.g. on the train
    split) and ``empirical`` (name → max risk: the candidate saving the most layers whose *calibration* risk is
    at most that, ``common.replay.most_saved_within`` — chapter 03's "≥ 99% consistency" is ``0.01``).

    One row per draw × rule: draw, rule, threshold (``NEVER_EXIT`` = inf: never exits early), certified
    (Learn-then-Test found one), cal_risk, test_risk, pool_risk (over all n prompts), violated (test_risk >
    delta), pool_violated, test_layers_saved, layers_saved (over the pool), n_cal, n_test, delta, epsilon, risk.
    With ``n_cal == n`` there is one draw and no test part (test columns NaN). ValueError for ``n_cal`` outside
    1..n and as in ``learn_then_test``."""
    n = replay.n
    if not 1 <= int(n_cal) <= n:
        raise ValueError(f"n_cal must lie between 1 and the pool size {n}, got {n_cal}")
    n_cal = int(n_cal)
    losses = replay.losses(risk)
    pool_risk, pool_saved = losses.mean(1), replay.layers_saved()
    rng = np.random.default_rng(seed)
    fixed_at = {name: replay.at(t) for name, t in (fixed or {}).items()}
    draws = 1 if n_cal == n else int(n_draws)
    rows = []
    for draw in range(draws):
        perm = rng.permutation(n)
        cal, test = perm[:n_cal], perm[n_cal:]
        cal_risks, cal_saved = losses[:, cal].mean(1), replay.layers_saved(cal)
        cert = learn_then_test(replay, cal, delta=delta, epsilon=epsilon, risk=risk, method=method,
                               procedure=procedure)
        chosen = {"Learn-then-Test": cert.index}
        for name, max_risk in (empirical or {}).items():
            chosen[name] = most_saved_within(cal_saved, cal_risks, max_risk, threshold=replay.thresholds)
        for name, j in chosen.items():
            if j is None:  # never exits early
                row = dict(threshold=NEVER_EXIT, cal_risk=0.0, test_risk=0.0 if len(test) else np.nan, pool_risk=0.0,
                           test_layers_saved=0.0 if len(test) else np.nan, layers_saved=0.0)
            else:
                row = dict(threshold=float(replay.thresholds[j]), cal_risk=float(cal_risks[j]),
                           test_risk=float(losses[j, test].mean()) if len(test) else np.nan,
                           pool_risk=float(pool_risk[j]),
                           test_layers_saved=layers_saved(replay.exits[j, test], replay.n_layers)
                           if len(test) else np.nan, layers_saved=float(pool_saved[j]))
            rows.append({"draw": draw, "rule": name, "certified": name == "Learn-then-Test" and j is not None, **row})
        for name, at in fixed_at.items():
            loss, exits, L = at[risk], at["exits"], replay.n_layers
            rows.append({"draw": draw, "rule": name, "certified": False, "threshold": float(fixed[name]),
                         "cal_risk": float(loss[cal].mean()),
                         "test_risk": float(loss[test].mean()) if len(test) else np.nan,
                         "pool_risk": float(loss.mean()),
                         "test_layers_saved": layers_saved(exits[test], L) if len(test) else np.nan,
                         "layers_saved": layers_saved(exits, L)})
    out = pd.DataFrame(rows)
    out["violated"] = np.where(out["test_risk"].notna(), out["test_risk"] > delta + 1e-12, np.nan)
    out["pool_violated"] = out["pool_risk"] > delta + 1e-12
    out = out.assign(n_cal=n_cal, n_test=n - n_cal, delta=delta, epsilon=epsilon, risk=risk)
    out.attrs.update(replay.meta | {"n_pool": n})
    return out


def violation_summary(draws: pd.DataFrame) -> pd.DataFrame:
    """Per rule (and n_cal, delta) of ``guarantee_check`` draws: n_draws, violation_rate (share of draws whose
    test risk exceeds δ), its standard error at ε, ``sqrt(ε(1−ε)/n_draws)``, ``within_guarantee``
    (violation_rate <= ε + se), pool_violation_rate, mean test and pool risk, mean layers saved (test and pool),
    share of draws with a certified threshold, and the median threshold."""
    keys = ["rule", "n_cal", "delta", "epsilon"]
    g = draws.groupby(keys, sort=False)
    out = g.agg(n_draws=("draw", "size"), violation_rate=("violated", "mean"),
                pool_violation_rate=("pool_violated", "mean"), mean_test_risk=("test_risk", "mean"),
                mean_pool_risk=("pool_risk", "mean"),
                test_layers_saved=("test_layers_saved", "mean"), layers_saved=("layers_saved", "mean"),
                share_certified=("certified", "mean"), median_threshold=("threshold", "median")).reset_index()
    out["se"] = np.sqrt(out["epsilon"] * (1 - out["epsilon"]) / out["n_draws"])
    out["within_guarantee"] = out["violation_rate"] <= out["epsilon"] + out["se"] + 1e-12
    return out


def price_of_guarantee(replay: ExitReplay, *, n_cals: Sequence[int], deltas: Sequence[float], epsilon: float = 0.05,
                       n_draws: int = 200, risk: str = "disagreement", method: str = "binomial", seed: int = 0
                       ) -> pd.DataFrame:
    """Layers saved under the guarantee for each calibration size × δ (``guarantee_check`` per cell, the same
    ``seed``): one ``violation_summary`` row per cell for Learn-then-Test, plus ``oracle_layers_saved`` (the
    ceiling on the pool). ``layers_saved`` is measured on the whole pool, so every n_cal (up to the pool size)
    is comparable."""
    parts = []
    for n_cal in n_cals:
        for delta in deltas:
            draws = guarantee_check(replay, n_cal=n_cal, n_draws=n_draws, delta=delta, epsilon=epsilon, risk=risk,
                                    method=method, seed=seed)
            parts.append(violation_summary(draws))
    out = pd.concat(parts, ignore_index=True)
    out["oracle_layers_saved"] = replay.oracle_layers_saved()
    return out
