# MS1MV3 (insightface's ms1m-retinaface-t1) in insightface's layout:
#   data/ms1mv3/train.rec, train.idx, property, and the verification sets lfw.bin, cfp_fp.bin,
#   agedb_30.bin next to them (validation skips the .bin files that are missing).
data_root = 'data/ms1mv3/'
num_classes = 93431
val_sets = ['lfw', 'cfp_fp', 'agedb_30']

train_pipeline = [dict(type='FaceRandomFlip', prob=0.5), dict(type='PackFaceInputs')]
train_dataloader = dict(
    batch_size=128,
    num_workers=2,
    persistent_workers=True,
    pin_memory=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='MXFaceDataset', data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=128,
    num_workers=2,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='VerificationBinDataset', data_root=data_root, bin_names=val_sets,
                 image_size=112, skip_missing=True))
test_dataloader = dict(
    batch_size=128,
    num_workers=2,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='VerificationBinDataset', data_root=data_root, bin_names=val_sets,
                 image_size=112, skip_missing=False))
val_evaluator = dict(type='VerificationMetric')
test_evaluator = val_evaluator
