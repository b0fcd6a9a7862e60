# arcface_torch's IResNet-50 with the ArcFace margin.
model = dict(
    type='FaceRecognizer',
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3,
                           bgr_to_rgb=True),
    backbone=dict(type='IResNet', depth=50, num_features=512, input_size=112, dropout=0.0),
    head=dict(type='ArcFaceHead', num_classes=93431, in_channels=512, s=64.0, m2=0.5),
    test_cfg=dict(flip=True))
