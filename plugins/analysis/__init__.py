"""Analysis glue: DRConv2d priced by its real cost in mmengine's complexity counter
(importing this package installs it), and config models/batches for the analysis tools."""
from . import complexity  # noqa: F401  installs the DRConv2d pricing in mmengine.analysis
