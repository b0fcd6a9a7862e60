"""Analysis glue: DRConv2d priced by its real cost in mmengine's complexity counter
(importing this package installs it), config models/batches and model counting for the
analysis tools, and the hook that summarizes a training run for ``compare.py``."""
from . import complexity  # noqa: F401  installs the DRConv2d pricing in mmengine.analysis
from . import run_summary_hook  # noqa: F401  registers 'RunSummaryHook'
