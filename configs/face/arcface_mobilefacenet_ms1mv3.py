# Baseline: MobileFaceNet + ArcFace on MS1MV3, arcface_torch's ms1mv3_mbf recipe
# (SGD lr 0.1, weight decay 1e-4, 40 epochs, total batch 1024).
_base_ = [
    './_base_/models/arcface_mobilefacenet.py', './_base_/datasets/ms1mv3.py',
    './_base_/schedules/sgd_poly_20e.py', './_base_/default_runtime.py'
]
max_epochs = 40
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=2.0, eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs)
