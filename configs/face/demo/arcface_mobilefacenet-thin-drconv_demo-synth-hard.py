# The face demo on the harder synthetic variant (tools/face/make_demo_data.py --hard: a background
# per view, wider pose, occluders, stronger colour casts, noise and blur), where the demo's own
# data leaves every arm at the ceiling. `make compare TASK=face-hard` trains it against its
# baseline.
_base_ = './arcface_mobilefacenet-thin-drconv_demo-synth.py'

data_root = 'data/face_demo_hard/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
