"""Face tests build from the toolkit's scope, whatever scope an earlier test left current."""
import pytest
from mmengine.registry import init_default_scope


@pytest.fixture(autouse=True)
def drconv_mm_scope():
    init_default_scope('drconv_mm')
