# The detection demo on the harder synthetic variant (tools/make_demo_data.py --task det-hard):
# eight shape classes in random colours, 2-8 overlapping objects per image over a wider range of
# sizes, on cluttered backgrounds; trained twice as long (600 iterations: at 300, both arms stayed
# below 0.08 bbox_mAP). `make compare TASK=det-hard` trains it against its baseline.
_base_ = './faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py'

data_root = 'data/demo_coco_hard/'
classes = ('rectangle', 'ellipse', 'triangle', 'diamond', 'hexagon', 'cross', 'star', 'chevron')
max_iters = 600

model = dict(roi_head=dict(bbox_head=dict(num_classes=len(classes))))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=50, end=max_iters, eta_min=1e-4)
]
