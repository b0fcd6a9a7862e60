# The face demo on the harder synthetic variant (tools/face/make_demo_data.py --hard: a background
# per view, wider pose, occluders, stronger colour casts, noise and blur), where the demo's own
# data leaves every arm at the ceiling; trained 3 times as long (480 iterations, about 2 epochs).
# `make compare TASK=face-hard` trains it against its baseline.
_base_ = './arcface_mobilefacenet-thin-drconv_demo-synth.py'

data_root = 'data/face_demo_hard/'
max_iters = 480

train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', power=2.0, eta_min=0.0, by_epoch=False, begin=20, end=max_iters)
]
default_hooks = dict(checkpoint=dict(interval=80))
