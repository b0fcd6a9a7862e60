"""Fixtures of the segmentation tests: a tiny synthetic Cityscapes."""
import os.path as osp

import pytest


@pytest.fixture(scope='session')
def demo_cityscapes(tmp_path_factory, tool) -> str:
    """A synthetic Cityscapes of 4 train and 2 val 64x128 images; returns its data_root."""
    out = tmp_path_factory.mktemp('data')
    tool('make_demo_data').main(['--task', 'seg', '--out', str(out), '--num-train', '4',
                                      '--num-val', '2', '--size', '64'])
    return osp.join(str(out), 'demo_cityscapes') + '/'
