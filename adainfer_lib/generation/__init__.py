"""Early exit during generation: a greedy per-token early-exit loop with a KV cache and three strategies for
the skipped layers' keys and values (``loop``), self-speculative decoding whose output equals the full
model's greedy output (``speculative``), many prompts at once with batch size 1's decisions (``batched``), exit
rules on full-vocabulary features (``rules``), and the chapter 07 study: agreement, quality proxy, layers saved
and speed over many prompts (``study``), with its figures (``plots``, used as ``ai.plots_generation``)."""

from . import plots as plots_generation
from .batched import generate_batch
from .loop import (
                   CACHE_STRATEGIES,
                   PROPAGATE_MODEL_TYPES,
                   GenerationResult,
                   UnsupportedStrategyError,
                   generate_early_exit,
                   greedy_generate,
                   sequence_nll,
)
from .rules import GENERATION_FEATURES, TopProbRule
from .speculative import speculative_generate
from .study import (
                   GenerationConfig,
                   agreement_prefix,
                   full_model_runs,
                   repetition,
                   review_openings,
                   run_generation_study,
                   summarize_study,
                   token_settling,
)

__all__ = ["CACHE_STRATEGIES", "PROPAGATE_MODEL_TYPES", "GENERATION_FEATURES", "GenerationResult",
           "UnsupportedStrategyError", "TopProbRule", "greedy_generate", "generate_early_exit",
           "speculative_generate", "sequence_nll", "generate_batch", "full_model_runs", "GenerationConfig",
           "agreement_prefix", "repetition",
           "review_openings", "run_generation_study", "summarize_study", "token_settling", "plots_generation"]
