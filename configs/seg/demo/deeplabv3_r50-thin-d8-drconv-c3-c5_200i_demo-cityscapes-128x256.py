# The CPU demo: the real DRConv DeepLabV3 config, shrunk. A ResNetV1c-50 with 16 base channels
# (instead of 64), a 64-channel ASPP head, trained from scratch for 200 iterations on 128x256
# synthetic street scenes in the Cityscapes layout (tools/make_demo_data.py writes them).
_base_ = '../deeplabv3_r50-d8-drconv-c3-c5_4xb2-40k_cityscapes-512x1024.py'

data_root = 'data/demo_cityscapes/'
crop_size = (128, 256)
max_iters = 200

model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(stem_channels=16, base_channels=16),
    decode_head=dict(in_channels=512, channels=64),
    auxiliary_head=dict(in_channels=256, channels=32))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
default_hooks = dict(
    logger=dict(interval=20),
    # every 50 iterations, so that an interrupted run resumes (--resume); the last 2 kept
    checkpoint=dict(interval=50, max_keep_ckpts=2))
# the same figure on every run (mmengine seeds python, numpy, torch and the dataloader workers)
randomness = dict(seed=0)
