"""Checks every ``type=`` of a config against the registries before anything is built.

A misspelt type otherwise surfaces deep in the build: mmcv's ``build_conv_layer`` reports
``Cannot find None in registry``, and mmengine's registry imports a module of that name when no
class has it (``type='drconv'`` gives ``'module' object is not callable``).
:func:`check_registered_types` names the key and the closest registered names instead.
"""
import contextlib
import difflib
import importlib
import inspect
from typing import Dict, Iterator, List, Set, Tuple

from mmengine import registry as mmengine_registry
from mmengine.config import Config
from mmengine.registry import Registry

# dict keys whose ``type`` names an op of mmcv.ops, not a registered class: mmdet's RoI
# extractors take ``getattr(mmcv.ops, roi_layer.type)``, mmcv's batched_nms ``nms.type``
MMCV_OP_KEYS = ('roi_layer', 'nms')


def scope_registries(scope: str) -> List[Registry]:
    """Each kind's registry of ``scope`` (mmengine's root one where the scope has none).

    The registries a build under ``default_scope=scope`` starts from, as mmengine's
    ``switch_scope_and_registry`` finds them (without its warnings for the kinds a scope
    does not define).
    """
    with contextlib.suppress(ImportError):
        importlib.import_module(f'{scope}.registry')
    found = []
    for root in vars(mmengine_registry.root).values():
        if not isinstance(root, Registry):
            continue
        stack, registry = [root], root
        while stack:
            node = stack.pop()
            if node.scope == scope:
                registry = node
                break
            stack.extend(node.children.values())
        found.append(registry)
    return found


def registered_names(scope: str) -> Set[str]:
    """Every name the registries of ``scope`` (and their parents) can build."""
    names = set()
    for registry in scope_registries(scope):
        registry.import_from_location()
        while registry is not None:
            names.update(registry.module_dict)
            registry = registry.parent
    return names


def _buildable_by_path(name: str, scope: str) -> bool:
    """A dotted ``type`` (``'mmdet.PackDetInputs'``, ``'torch.optim.SGD'``) that resolves."""
    for registry in scope_registries(scope):
        try:
            found = registry.get(name)
        except Exception:  # mmengine raises what the import of a wrong path raises
            found = None
        if found is not None and not inspect.ismodule(found):
            return True
    return False


def _type_entries(node, path: Tuple[str, ...],
                  scope: str) -> Iterator[Tuple[Tuple[str, ...], str, str]]:
    """(path of the dict, type name, scope) of every string ``type`` under ``node``."""
    if isinstance(node, dict):
        scope = node.get('_scope_', scope)
        if isinstance(node.get('type'), str):
            yield path, node['type'], scope
        for key, value in node.items():
            yield from _type_entries(value, path + (str(key), ), scope)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _type_entries(value, path + (str(i), ), scope)


def _did_you_mean(name: str, candidates: Set[str]) -> str:
    by_lower: Dict[str, List[str]] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), []).append(candidate)
    if name.lower() in by_lower:  # a matter of case: that name only
        close = [name.lower()]
    else:
        close = difflib.get_close_matches(name.lower(), by_lower, n=3, cutoff=0.6)
    matches = [m for lower in close for m in sorted(by_lower[lower])][:3]
    if not matches:
        return 'no registered name is close; is the module that registers it in custom_imports?'
    quoted = [repr(m) for m in matches]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f'did you mean {listed}?'


def check_registered_types(cfg: Config) -> None:
    """Raises ValueError listing each ``type`` of ``cfg`` that nothing in scope can build.

    Looks in the registries of the config's ``default_scope`` (or a dict's ``_scope_``) and
    their parents, as mmengine's build does; ``roi_layer``/``nms`` types in mmcv.ops. Each line
    reads ``model.backbone.dcn.type: 'DRconv' is not registered; did you mean 'DRConv'?``.
    """
    names: Dict[str, Set[str]] = {}
    errors = []
    default_scope = cfg.get('default_scope') or 'mmengine'
    for dict_path, name, scope in _type_entries(cfg.to_dict(), (), default_scope):
        path = '.'.join(dict_path + ('type', ))
        if dict_path and dict_path[-1] in MMCV_OP_KEYS:
            import mmcv.ops
            candidates = {n for n in dir(mmcv.ops) if not n.startswith('_')}
            if name not in candidates:
                errors.append(f'{path}: {name!r} is not an op of mmcv.ops; '
                              f'{_did_you_mean(name, candidates)}')
            continue
        if scope not in names:
            names[scope] = registered_names(scope)
        if name in names[scope] or ('.' in name and _buildable_by_path(name, scope)):
            continue
        errors.append(f'{path}: {name!r} is not registered (scope {scope!r}); '
                      f'{_did_you_mean(name.rsplit(".", 1)[-1], names[scope])}')
    if errors:
        raise ValueError('\n'.join(errors))
