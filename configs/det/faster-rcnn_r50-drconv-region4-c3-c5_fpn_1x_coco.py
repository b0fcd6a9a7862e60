# DRConv with 4 regions instead of 8.
_base_ = './faster-rcnn_r50-drconv-c3-c5_fpn_1x_coco.py'
model = dict(backbone=dict(dcn=dict(region_num=4)))
