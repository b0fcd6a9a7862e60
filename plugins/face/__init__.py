"""Face recognition on mmengine: registers the recognizer, backbones, head, datasets,
transforms, metric, hooks and validation loop of the ``drconv_mm`` scope
(``default_scope = 'drconv_mm'``)."""
from .arcface_head import ArcFaceHead, combined_margin_logits
from .datasets import ImageFolderFaceDataset, MXFaceDataset, VerificationBinDataset
from .hooks import FaceLabelRangeHook, check_label_range
from .iresnet import IResNet
from .mobilefacenet import MobileFaceNet
from .recognizer import FaceRecognizer
from .transforms import FaceRandomFlip, FaceResize, PackFaceInputs
from .validation import VerificationCheckpointHook, VerificationValLoop
from .verification_metric import VerificationMetric

__all__ = [
    'ArcFaceHead', 'combined_margin_logits', 'MXFaceDataset', 'ImageFolderFaceDataset',
    'VerificationBinDataset', 'FaceLabelRangeHook', 'check_label_range', 'IResNet',
    'MobileFaceNet', 'FaceRecognizer', 'FaceRandomFlip', 'FaceResize', 'PackFaceInputs',
    'VerificationMetric', 'VerificationValLoop', 'VerificationCheckpointHook'
]
