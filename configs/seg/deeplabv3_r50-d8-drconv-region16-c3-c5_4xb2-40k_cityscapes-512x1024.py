# DRConv with 16 regions instead of 8.
_base_ = './deeplabv3_r50-d8-drconv-c3-c5_4xb2-40k_cityscapes-512x1024.py'
model = dict(backbone=dict(dcn=dict(region_num=16)))
