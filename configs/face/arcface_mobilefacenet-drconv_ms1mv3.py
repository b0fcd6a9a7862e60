# MobileFaceNet with DRConv (8 regions) on the 1x1 expand/project convs of the bottlenecks of
# stages 2 and 3 (14x14 and 7x7) and on conv_sep; depthwise and grouped convs stay plain
# (DRConv2d needs groups=1).
_base_ = './arcface_mobilefacenet_ms1mv3.py'
model = dict(
    backbone=dict(
        drconv=dict(type='DRConv', region_num=8, filter_generator='bases', num_bases=4),
        stage_with_drconv=(False, False, True, True)))
