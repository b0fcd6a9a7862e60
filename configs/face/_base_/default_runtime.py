# Runtime shared by the face configs (mmengine's defaults, the toolkit's scope).
default_scope = 'drconv_mm'
custom_imports = dict(imports=['drconv_mm'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # also the best checkpoint of each validation set (best_lfw_accuracy_epoch_N.pth, ...);
    # VerificationCheckpointHook: a CheckpointHook whose save_best may name missing sets
    checkpoint=dict(type='VerificationCheckpointHook', interval=1, max_keep_ckpts=3,
                    save_best=['lfw/accuracy', 'cfp_fp/accuracy', 'agedb_30/accuracy'],
                    rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
# refuse to train when a label of the data is >= model.head.num_classes
custom_hooks = [dict(type='FaceLabelRangeHook')]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
