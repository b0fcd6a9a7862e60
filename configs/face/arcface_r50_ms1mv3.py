# Baseline: IResNet-50 + ArcFace on MS1MV3, arcface_torch's ms1mv3_r50 recipe (20 epochs).
_base_ = [
    './_base_/models/arcface_iresnet50.py', './_base_/datasets/ms1mv3.py',
    './_base_/schedules/sgd_poly_20e.py', './_base_/default_runtime.py'
]
