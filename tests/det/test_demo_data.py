"""tools/make_demo_data.py's harder detection variant: mmdet's CocoDataset loads it under the
det-hard demo config, whose model takes a training step on it."""
import json
import os.path as osp

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DATASETS, MODELS, init_default_scope

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
HARD_CONFIG = osp.join(REPO_ROOT, 'configs/det/demo/'
                       'faster-rcnn_r50-thin-drconv-c3-c5_fpn_600i_demo-coco-hard.py')


def test_hard_variant_loads_and_trains(tool, tmp_path):
    make_demo_data = tool('make_demo_data')
    make_demo_data.main(['--task', 'det-hard', '--out', str(tmp_path), '--num-train', '2',
                         '--num-val', '6'])
    assert not osp.exists(tmp_path / 'demo_coco')  # only the variant asked for
    root = str(tmp_path / 'demo_coco_hard') + '/'
    cfg = Config.fromfile(HARD_CONFIG)
    assert cfg.classes == make_demo_data.HARD_DET_CLASSES
    with open(root + 'annotations/instances_val2017.json') as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(cfg.classes)

    init_default_scope('mmdet')
    dataset_cfg = cfg.val_dataloader.dataset
    dataset_cfg.update(data_root=root)
    dataset = DATASETS.build(dataset_cfg)
    assert len(dataset) == 6 and dataset.metainfo['classes'] == cfg.classes
    labels = []
    for i in range(len(dataset)):
        instances = dataset.get_data_info(i)['instances']
        assert 1 <= len(instances) <= 8
        boxes = np.array([inst['bbox'] for inst in instances])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 128 // 10 - 1).all()  # the smallest size
        labels += [inst['bbox_label'] for inst in instances]
    assert len(set(labels)) > 3 and max(labels) < len(cfg.classes)

    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    batch = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), True)
    loss, _ = model.parse_losses(model(**batch, mode='loss'))
    loss.backward()
    assert torch.isfinite(loss)


def test_a_mostly_hidden_shape_is_not_labelled(tool):
    hard_det_image = tool('make_demo_data').hard_det_image
    rng = np.random.default_rng(3)
    for _ in range(20):
        image, objects = hard_det_image(rng, 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        # every labelled shape shows at least 60% of its area over the labelled shapes drawn
        # after it (the generator also counts the unlabelled ones)
        masks = [cv2.fillPoly(np.zeros((128, 128), np.uint8), [polygon], 1).astype(bool)
                 for _, polygon in objects]
        for i, mask in enumerate(masks):
            hidden = np.zeros_like(mask)
            for later in masks[i + 1:]:
                hidden |= later
            assert (mask & ~hidden).sum() >= 0.6 * mask.sum()

