"""OpenMMLab glue for the detection and segmentation tasks (mmdet, mmseg)."""
from .data_check import check_data_paths

__all__ = ['check_data_paths']
