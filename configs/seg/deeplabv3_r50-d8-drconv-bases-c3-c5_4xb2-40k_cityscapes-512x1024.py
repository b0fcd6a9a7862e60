# DRConv with the official code's filter generator (region filters mixed from learned bases).
_base_ = './deeplabv3_r50-d8-drconv-c3-c5_4xb2-40k_cityscapes-512x1024.py'
model = dict(backbone=dict(dcn=dict(filter_generator='bases')))
