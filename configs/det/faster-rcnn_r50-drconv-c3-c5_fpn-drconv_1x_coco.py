# DRConv also in the FPN's lateral and output convs (through ConvModule's conv_cfg).
_base_ = './faster-rcnn_r50-drconv-c3-c5_fpn_1x_coco.py'
model = dict(neck=dict(conv_cfg=dict(type='DRConv', region_num=8)))
