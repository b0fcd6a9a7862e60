"""ArcFace logits, face backbones with and without DRConv, the recognizer and the label check."""
import math

import pytest
import torch

import drconv_mm  # noqa: F401
import drconv_mm.face  # noqa: F401
from drconv import DRConv2d
from drconv_mm.face import check_label_range, combined_margin_logits
from drconv_mm.registry import MODELS

THIN_MBF = dict(type='MobileFaceNet', num_features=64, blocks=(1, 1, 1, 1), scale=1,
                inner_channels=(32, 32, 64, 64), down_channels=(32, 64, 128), sep_channels=128)
DRCONV = dict(type='DRConv', region_num=4, filter_generator='bases', num_bases=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Small convs on shared cores run far faster on one thread; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_arcface_logits_match_the_formula():
    torch.manual_seed(0)
    cosine = torch.empty(6, 5).uniform_(-0.95, 0.95)
    cosine[5, 2] = -0.99  # theta + m > pi: arcface_torch's fallback cos - m * sin(m)
    labels = torch.tensor([0, 1, 4, -1, 3, 2])
    s, m = 64.0, 0.5
    got = combined_margin_logits(cosine, labels, s=s, m2=m)
    expected = cosine.clone()
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        c = cosine[i, y].item()
        theta = math.acos(c)
        expected[i, y] = math.cos(theta + m) if theta + m <= math.pi else c - math.sin(m) * m
    torch.testing.assert_close(got, expected * s, atol=1e-4, rtol=0)
    # CosFace (m3) and combined margins
    got = combined_margin_logits(cosine, labels, s=s, m2=0.0, m3=0.35)
    expected = cosine.clone()
    keep = labels >= 0
    expected[keep.nonzero()[:, 0], labels[keep]] -= 0.35
    torch.testing.assert_close(got, expected * s)


def test_arcface_head_is_safe_at_cos_pm1():
    head = MODELS.build(dict(type='ArcFaceHead', num_classes=3, in_channels=4))
    with torch.no_grad():
        head.weight.copy_(torch.eye(4)[:3])
    emb = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 2.0]], requires_grad=True)
    losses = head.loss(emb, torch.tensor([0, 0, 2]))
    losses['loss_arcface'].backward()
    assert torch.isfinite(losses['loss_arcface'])
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    with pytest.raises(ValueError, match='label 3'):
        head.loss(emb, torch.tensor([0, 3, 1]))


@pytest.mark.parametrize('cfg', [
    THIN_MBF,
    dict(THIN_MBF, drconv=DRCONV, stage_with_drconv=(False, False, True, True)),
    dict(THIN_MBF, blocks=(2, 1, 1, 1), conv_cfg=DRCONV),
    dict(type='IResNet', depth=18, base_channels=8, num_features=32),
    dict(type='IResNet', depth=18, base_channels=8, num_features=32, drconv=DRCONV,
         stage_with_drconv=(False, False, False, True)),
])
def test_backbones_build_and_run_at_112(cfg):
    model = MODELS.build(cfg)
    x = torch.randn(2, 3, 112, 112)
    out = model(x)
    assert out.shape == (2, cfg['num_features'])
    out.sum().backward()
    drconvs = [m for m in model.modules() if isinstance(m, DRConv2d)]
    if 'drconv' in cfg or 'conv_cfg' in cfg:
        assert drconvs and all(m.groups == 1 for m in drconvs)
        assert all(m.weight.grad is not None for m in drconvs)
    else:
        assert not drconvs


def test_which_convs_take_drconv():
    mbf = MODELS.build(dict(THIN_MBF, drconv=DRCONV, stage_with_drconv=(False, False, False,
                                                                        True)))
    names = {n for n, m in mbf.named_modules() if isinstance(m, DRConv2d)}
    assert names == {'stage3.0.expand.0', 'stage3.0.project.0', 'stage3.1.expand.0',
                     'stage3.1.project.0', 'conv_sep.0'}
    r18 = MODELS.build(dict(type='IResNet', depth=18, base_channels=8, drconv=DRCONV,
                            stage_with_drconv=(False, True, False, False)))
    names = {n for n, m in r18.named_modules() if isinstance(m, DRConv2d)}
    assert names == {f'layer2.{b}.conv{c}' for b in (0, 1) for c in (1, 2)}
    for depth, blocks in ((18, 8), (34, 16), (50, 24), (100, 49)):
        layers = MODELS.get('IResNet')(depth=depth, base_channels=4, num_features=8)
        assert sum(len(getattr(layers, f'layer{i}')) for i in range(1, 5)) == blocks


def test_recognizer_modes():
    model = MODELS.build(dict(type='FaceRecognizer', backbone=dict(THIN_MBF, input_size=32),
                              head=dict(type='ArcFaceHead', num_classes=5, in_channels=64)))
    from mmengine.structures import BaseDataElement
    inputs = [torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8) for _ in range(2)]
    samples = [BaseDataElement(gt_label=torch.tensor(i)) for i in (1, 4)]
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    # arcface_torch's input: RGB, (x / 255 - 0.5) / 0.5
    expected = (inputs[0].flip(0).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(data['inputs'][0], expected)
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_arcface', 'accuracy'}
    model.eval()
    preds = model(**data, mode='predict')
    assert preds[0].pred_embedding.shape == (64, ) and 'pred_embedding_flip' in preds[0]
    assert model(data['inputs'], mode='tensor').shape == (2, 64)


def test_label_range_check_names_the_largest_label():
    class Data:
        data_root = 'data/x'

        def max_label(self):
            return 41

    assert check_label_range(Data(), 42) == 41
    with pytest.raises(ValueError, match=r'labels go up to 41 \(in data/x\).*num_classes=10'):
        check_label_range(Data(), 10)
