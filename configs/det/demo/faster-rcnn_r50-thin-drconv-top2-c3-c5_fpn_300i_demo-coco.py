# The CPU detection demo with guide_grad='top2' (the guide's gradient through the two best
# regions of each pixel only), an arm of `make compare TASK=det-ablation`.
_base_ = './faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py'
model = dict(backbone=dict(dcn=dict(guide_grad='top2')))
