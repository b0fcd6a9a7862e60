"""The toolkit's own registry scope, ``drconv_mm`` (named after this package, as OpenMMLab's
scopes are: mmengine imports ``<scope>.registry`` when a config sets ``default_scope``).

Each registry is a child of mmengine's root registry of the same kind, so a config with
``default_scope = 'drconv_mm'`` finds the toolkit's models, datasets, transforms, metrics and hooks
first and everything else (optimizers, loops, schedulers, visualizers) through the parent.
"""
from mmengine import registry as root
from mmengine.registry import Registry


def _child(name: str, parent: Registry) -> Registry:
    return Registry(name, parent=parent, scope='drconv_mm', locations=['drconv_mm'])


MODELS = _child('model', root.MODELS)
DATASETS = _child('dataset', root.DATASETS)
TRANSFORMS = _child('transform', root.TRANSFORMS)
METRICS = _child('metric', root.METRICS)
HOOKS = _child('hook', root.HOOKS)
# registries the toolkit adds nothing to, declared so that lookups in this scope do not warn
RUNNERS = _child('runner', root.RUNNERS)
RUNNER_CONSTRUCTORS = _child('runner constructor', root.RUNNER_CONSTRUCTORS)
LOOPS = _child('loop', root.LOOPS)
DATA_SAMPLERS = _child('data sampler', root.DATA_SAMPLERS)
MODEL_WRAPPERS = _child('model_wrapper', root.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child('weight initializer', root.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child('optimizer', root.OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim_wrapper', root.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    root.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child('parameter scheduler', root.PARAM_SCHEDULERS)
EVALUATOR = _child('evaluator', root.EVALUATOR)
TASK_UTILS = _child('task util', root.TASK_UTILS)
VISUALIZERS = _child('visualizer', root.VISUALIZERS)
VISBACKENDS = _child('vis_backend', root.VISBACKENDS)
LOG_PROCESSORS = _child('log_processor', root.LOG_PROCESSORS)
INFERENCERS = _child('inferencer', root.INFERENCERS)
FUNCTIONS = _child('function', root.FUNCTIONS)
