# arcface_torch's ms1mv3_r50 recipe: SGD lr 0.1 (total batch 1024 = 8 GPUs x 128), momentum
# 0.9, weight decay 5e-4, polynomial decay (power 2) over 20 epochs; gradients clipped at 5.
# Scale lr linearly with the total batch size (auto_scale_lr, --auto-scale-lr style).
max_epochs = 20
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4),
    clip_grad=dict(max_norm=5, norm_type=2))
param_scheduler = [
    dict(type='PolyLR', power=2.0, eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True)
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
# ValLoop that skips validation when none of the .bin files exists
val_cfg = dict(type='VerificationValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=1024)
