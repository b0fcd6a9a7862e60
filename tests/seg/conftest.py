"""Fixtures of the segmentation tests: the tools as modules, a tiny synthetic Cityscapes."""
import importlib.util
import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_tool(name: str):
    """Imports ``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}',
                                                  osp.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def tool():
    """``tool(name)`` imports ``tools/<name>.py``."""
    return load_tool


@pytest.fixture(scope='session')
def demo_cityscapes(tmp_path_factory) -> str:
    """A synthetic Cityscapes of 4 train and 2 val 64x128 images; returns its data_root."""
    out = tmp_path_factory.mktemp('data')
    load_tool('make_demo_data').main(['--task', 'seg', '--out', str(out), '--num-train', '4',
                                      '--num-val', '2', '--size', '64'])
    return osp.join(str(out), 'demo_cityscapes') + '/'
