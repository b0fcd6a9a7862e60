"""Fixtures of the detection tests: a tiny synthetic COCO data set."""
import os.path as osp

import pytest


@pytest.fixture(scope='session')
def demo_coco(tmp_path_factory, tool) -> str:
    """A synthetic COCO data set of 8 train and 4 val images; returns its data_root."""
    out = tmp_path_factory.mktemp('data')
    tool('make_demo_data').main(
        ['--task', 'det', '--out', str(out), '--num-train', '8', '--num-val', '4'])
    return osp.join(str(out), 'demo_coco') + '/'
