"""Test-wide setup and fixtures.

Without a GPU, Triton kernels run in Triton's CPU interpreter. ``tool`` imports a script of
``tools/`` (not a package) as a module, e.g. ``tool('train')``, ``tool('analysis_tools/get_flops')``.
"""
import importlib.util
import os
import os.path as osp

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name: str):
    """Imports ``tools/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"tool_{name.replace('/', '_')}",
                                                  osp.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def tool():
    """``tool(name)`` imports ``tools/<name>.py``."""
    return load_tool
