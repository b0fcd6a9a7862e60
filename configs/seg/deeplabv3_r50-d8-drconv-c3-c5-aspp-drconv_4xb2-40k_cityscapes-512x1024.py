# DRConv also in the ASPP head's convs (through ConvModule's conv_cfg).
_base_ = './deeplabv3_r50-d8-drconv-c3-c5_4xb2-40k_cityscapes-512x1024.py'
model = dict(decode_head=dict(conv_cfg=dict(type='DRConv', region_num=8)))
