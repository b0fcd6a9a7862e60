"""DRConv: Dynamic Region-Aware Convolution (Chen et al., CVPR 2021) for PyTorch.

Needs only torch. The op is :func:`region_conv`, the layer :class:`DRConv2d`; the OpenMMLab
registration lives in the glue package ``drconv_mm`` (the ``plugins/`` folder).
"""
from .drconv2d import DRConv2d
from .factors import Factors
from .filter_generator import BasesFilterGenerator, PaperFilterGenerator
from .region_conv import region_conv, region_conv_dense
from .region_conv_factored import region_conv_factored

__all__ = ['DRConv2d', 'region_conv', 'region_conv_dense', 'region_conv_factored', 'Factors',
           'PaperFilterGenerator', 'BasesFilterGenerator']
__version__ = '0.1.0'
