# Faster R-CNN R50-FPN 1x on COCO with DRConv in the 3x3 convs of stages c3-c5 (13 layers).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['drconv_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        dcn=dict(type='DRConv', region_num=8),
        stage_with_dcn=(False, True, True, True)))
