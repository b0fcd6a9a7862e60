"""OpenMMLab glue of the DRConv toolkit, installed as ``drconv_mm`` (``pip install -e .``).

Configs load it with ``custom_imports = dict(imports=['drconv_mm'], allow_failed_imports=False)``.
"""
from . import checkpoint_safety  # noqa: F401  mmengine checkpoints load weights-only
from . import drconv_layer  # noqa: F401  registers 'DRConv'
from . import analysis  # noqa: F401  DRConv2d counted at its real cost by mmengine.analysis
from . import face  # noqa: F401  the face recognizer, its data sets and metric (scope 'drconv_mm')
