# IResNet-50 with DRConv (8 regions) on both 3x3 convs of every block of stages 3 and 4.
# The 'bases' filter generator keeps the extra weights at num_bases x the static ones; the
# paper's generator ('paper') would add region_num^2/9 x (about 7x) on these wide layers.
_base_ = './arcface_r50_ms1mv3.py'
model = dict(
    backbone=dict(
        drconv=dict(type='DRConv', region_num=8, filter_generator='bases', num_bases=4),
        stage_with_drconv=(False, False, True, True)))
