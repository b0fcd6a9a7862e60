"""Fixtures of the detection tests: the tools as modules, a tiny synthetic COCO data set."""
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
def demo_coco(tmp_path_factory) -> str:
    """A synthetic COCO data set of 8 train and 4 val images; returns its data_root."""
    out = tmp_path_factory.mktemp('data')
    load_tool('make_demo_data').main(
        ['--task', 'det', '--out', str(out), '--num-train', '8', '--num-val', '4'])
    return osp.join(str(out), 'demo_coco') + '/'
