# The CPU detection demo with the official code's filter generator (region filters mixed from
# learned bases), an arm of `make compare TASK=det-ablation`.
_base_ = './faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py'
model = dict(backbone=dict(dcn=dict(filter_generator='bases')))
