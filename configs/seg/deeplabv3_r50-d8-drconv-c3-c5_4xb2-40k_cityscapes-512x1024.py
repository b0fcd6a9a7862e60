# DeepLabV3 R50-D8 40k on Cityscapes with DRConv in the 3x3 convs of stages c3-c5 (13 layers).
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'
custom_imports = dict(imports=['drconv_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        dcn=dict(type='DRConv', region_num=8),
        stage_with_dcn=(False, True, True, True)))
