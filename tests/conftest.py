"""Test-wide setup and fixtures.

Without a GPU, Triton kernels run in Triton's CPU interpreter. ``tool`` imports a script of
``tools/`` (not a package) as a module, e.g. ``tool('train')``, ``tool('analysis_tools/get_flops')``.
``malicious_checkpoint`` is a checkpoint that runs code when unpickled without weights_only.
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


class _CreatesFile:
    """Unpickles by calling ``exec``: creates ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return exec, (f'open({self.path!r}, "w").close()', )


@pytest.fixture
def malicious_checkpoint(tmp_path, monkeypatch):
    """(checkpoint path, marker path): loading the checkpoint unsafely creates the marker.

    Shown live: a ``weights_only=False`` load here does create the marker (removed again).
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is unset meanwhile, as on a user's machine.
    """
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    marker = tmp_path / 'code_ran'
    path = str(tmp_path / 'malicious.pth')
    torch.save(dict(state_dict={}, meta=dict(note=_CreatesFile(str(marker)))), path)
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker
