"""``FaceRecognizer``: backbone -> embedding -> margin head, as an mmengine BaseModel."""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from torch import Tensor

from ..registry import MODELS

# arcface_torch feeds RGB scaled as (x / 255 - 0.5) / 0.5; the datasets yield BGR (OpenCV).
ARCFACE_PREPROCESSOR = dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3,
                            bgr_to_rgb=True)


@MODELS.register_module()
class FaceRecognizer(BaseModel):
    """Face recognition model: ``backbone`` gives the embedding, ``head`` the training loss.

    Forward modes (mmengine's):

    - ``'loss'``: dict with the head's loss (``loss_arcface``) and batch ``accuracy``;
    - ``'predict'``: the data samples with ``pred_embedding`` (and ``pred_embedding_flip``, the
      embedding of the horizontally flipped image, when ``test_cfg['flip']``), what
      :class:`VerificationMetric` reads;
    - ``'tensor'``: the embeddings (B, D).

    Args:
        backbone (dict): Backbone config (``MobileFaceNet``, ``IResNet``).
        head (dict, optional): Head config (``ArcFaceHead``); needed for training only.
        data_preprocessor (dict, optional): Default: BGR -> RGB and ``(x - 127.5) / 127.5``.
        test_cfg (dict, optional): ``flip`` (bool, default True): flip test-time augmentation.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self, backbone: dict, head: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None, test_cfg: Optional[dict] = None,
                 init_cfg=None):
        if data_preprocessor is None:
            data_preprocessor = dict(ARCFACE_PREPROCESSOR)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.head = MODELS.build(head) if head is not None else None
        self.test_cfg = dict(flip=True) if test_cfg is None else dict(test_cfg)

    def extract_feat(self, inputs: Tensor) -> Tensor:
        """Preprocessed images (B, 3, H, W) -> embeddings (B, D)."""
        return self.backbone(inputs)

    def forward(self, inputs: Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor') -> Union[Dict[str, Tensor], List[BaseDataElement], Tensor]:
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.extract_feat(inputs)
        raise RuntimeError(f"Invalid mode {mode!r}; expected 'loss', 'predict' or 'tensor'")

    def loss(self, inputs: Tensor, data_samples: List[BaseDataElement]) -> Dict[str, Tensor]:
        if self.head is None:
            raise RuntimeError('FaceRecognizer without a head cannot compute a training loss')
        labels = torch.stack([torch.as_tensor(s.gt_label).view(()) for s in data_samples])
        return self.head.loss(self.extract_feat(inputs), labels.to(inputs.device))

    def predict(self, inputs: Tensor,
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        embeddings = self.extract_feat(inputs)
        flipped = self.extract_feat(inputs.flip(3)) if self.test_cfg.get('flip', True) else None
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(inputs.shape[0])]
        for i, sample in enumerate(data_samples):
            sample.pred_embedding = embeddings[i].detach()
            if flipped is not None:
                sample.pred_embedding_flip = flipped[i].detach()
        return data_samples
