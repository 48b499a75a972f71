"""The precision benchmark: :func:`run` measures variants in fresh processes (:mod:`.runner`, :mod:`.measure`,
:mod:`.worker`), :class:`Result` records them (:mod:`.result`), :func:`save` and :func:`load` keep them
(:mod:`.io`), :func:`format_table` and :func:`recommend` report them (:mod:`.report`), and :mod:`.cli` is
``python -m gemma_widgets bench``. :mod:`.compiled` times ``torch.compile`` recipes (notebook 05)."""

from gemma_widgets.bench.io import REFERENCE_RUN, load, reference_run, save
from gemma_widgets.bench.measure import Progress
from gemma_widgets.bench.report import (
    COLUMNS,
    MAX_PERPLEXITY_RATIO,
    compare_runs,
    describe_machine,
    format_table,
    recipes,
    recommend,
    table_rows,
    within_quality_bound,
)
from gemma_widgets.bench.result import Result, compare_with_reference, noise_floor, within_noise
from gemma_widgets.bench.runner import DEFAULT_PROMPT, default_reference, default_variants, run, variant_choices

__all__ = [
    "COLUMNS", "DEFAULT_PROMPT", "MAX_PERPLEXITY_RATIO", "REFERENCE_RUN", "Progress", "Result", "compare_runs",
    "compare_with_reference", "default_reference", "default_variants", "describe_machine", "format_table", "load",
    "noise_floor", "recipes", "recommend", "reference_run", "run", "save", "table_rows", "variant_choices",
    "within_noise", "within_quality_bound",
]
