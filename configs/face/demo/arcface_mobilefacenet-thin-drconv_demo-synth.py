# The CPU demo (`make demo TASK=face`): the DRConv MobileFaceNet config, shrunk. A thin
# MobileFaceNet (32 base channels, blocks (1, 1, 2, 1), 128-d embedding) with DRConv (4 regions)
# in stages 2-3 and conv_sep, trained from scratch at insightface's 112x112 (so that the exported
# model loads in insightface) on synthetic identities written in insightface's formats by
# tools/face/make_demo_data.py (train.rec/idx + a held-out synth.bin).
_base_ = '../arcface_mobilefacenet-drconv_ms1mv3.py'

data_root = 'data/face_demo/'
num_classes = 300
image_size = 112
max_iters = 160

model = dict(
    backbone=dict(
        num_features=128, blocks=(1, 1, 2, 1), scale=0.5, inner_channels=(32, 64, 128, 128),
        down_channels=(32, 128, 256), sep_channels=256, input_size=image_size,
        drconv=dict(region_num=4)),
    head=dict(num_classes=num_classes, in_channels=128, s=32.0, m2=0.3))

train_pipeline = [
    dict(type='FaceResize', size=image_size),
    dict(type='FaceRandomFlip', prob=0.5),
    dict(type='PackFaceInputs')
]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    pin_memory=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=100,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, bin_names=['synth'], image_size=image_size))
test_dataloader = dict(
    batch_size=100,
    num_workers=0,
    dataset=dict(data_root=data_root, bin_names=['synth'], image_size=image_size))

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=0.1, weight_decay=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=2.0, eta_min=0.0, by_epoch=False, begin=20, end=max_iters)
]
default_hooks = dict(
    logger=dict(interval=20),
    # every 40 iterations, so that an interrupted run resumes (--resume); the last 2 kept
    checkpoint=dict(by_epoch=False, interval=40, max_keep_ckpts=2,
                    save_best=['synth/accuracy']))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
# the same figure on every run (mmengine seeds python, numpy, torch and the dataloader workers)
randomness = dict(seed=0)
