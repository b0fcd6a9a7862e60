"""The toolkit's own registry scope, ``drconv``.

Each registry is a child of mmengine's root registry of the same kind, so a config with
``default_scope = 'drconv'`` finds the toolkit's models, datasets and metrics first and everything
mmengine provides (optimizers, hooks, loops, visualizers) through the parent.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='drconv', locations=['plugins'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='drconv', locations=['plugins'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='drconv', locations=['plugins'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='drconv', locations=['plugins'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='drconv', locations=['plugins'])
