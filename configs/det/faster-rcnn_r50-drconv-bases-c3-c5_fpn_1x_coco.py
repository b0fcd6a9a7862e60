# DRConv with the official code's filter generator (region filters mixed from learned bases).
_base_ = './faster-rcnn_r50-drconv-c3-c5_fpn_1x_coco.py'
model = dict(backbone=dict(dcn=dict(filter_generator='bases')))
