"""tools/analysis_tools/benchmark_drconv.py runs and reports what it promises (not how fast)."""
import json
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'det', 'demo',
                       'faster-rcnn_r50-thin-drconv-c3-c5_fpn_300i_demo-coco.py')


def test_op_and_layer_modes_json(tmp_path, capsys, tool):
    bench = tool('analysis_tools/benchmark_drconv')
    path = tmp_path / 'bench.json'
    bench.main(['--shapes', '2,4,6,7,9,3,3', '--shapes', '1,3,5,8,8,1,2,2', '--layers',
                '--repeat', '2', '--warmup', '0', '--threads', '1', '--json', str(path)])
    printed = capsys.readouterr().out
    assert '| 2,4,6,7,9,3,3 |' in printed and 'Peak extra memory' in printed
    assert 'DRConv2d paper fwd ms' in printed
    report = json.loads(path.read_text())
    assert report['environment']['threads'] == 1
    assert [r['label'] for r in report['layers']] == ['2,4,6,7,9,3,3', '1,3,5,8,8,1,2,2']
    for r in report['layers']:
        assert set(r['median_s']) == {f'{v}/{m}' for v in ('conv', 'region_conv', 'dense')
                                      for m in ('forward', 'forward_backward')}
        assert all(t > 0 for t in r['median_s'].values())
        assert set(r['ratio_to_conv']) == set(r['median_s']) - {'conv/forward',
                                                                'conv/forward_backward'}
        assert all(v > 0 for v in r['ratio_to_conv'].values()) and r['dense_over_op_forward'] > 0
        assert set(r['memory']) == {'conv', 'region_conv', 'dense'}
        assert all(v > 0 for v in r['memory'].values())
        layer = r['layer']
        assert set(layer['median_s']) == {f'{v}/{m}' for v in ('conv', 'drconv_paper',
                                                               'drconv_bases')
                                          for m in ('forward', 'forward_backward')}
        assert all(t > 0 for t in layer['median_s'].values())
        assert set(layer['memory']) == {'conv', 'drconv_paper', 'drconv_bases'}
        assert r['targets'] == {}  # not a target shape


def test_channels_last_runs_in_that_layout_and_checks_no_target(capsys, tool):
    bench = tool('analysis_tools/benchmark_drconv')
    import pytest
    import torch
    report = bench.main(['--shapes', '1,3,4,6,5,3,2', '--layers', '--channels-last',
                         '--repeat', '1', '--warmup', '0', '--no-memory'])
    assert report['environment']['channels_last'] is True
    assert 'float32, channels_last, torch' in capsys.readouterr().out
    assert report['layers'][0]['layer']['median_s']['drconv_bases/forward_backward'] > 0
    s = bench.parse_shape('1,3,4,6,5,3,2')
    t = bench.make_tensors(s, torch.device('cpu'), torch.float32, 0, torch.channels_last)
    for name in ('x', 'conv_weight', 'guide', 'grad_out'):
        assert t[name].is_contiguous(memory_format=torch.channels_last), name
    plain = bench.make_tensors(s, torch.device('cpu'), torch.float32, 0)
    assert all(torch.equal(t[k], plain[k]) for k in t)  # the same values
    # a target shape under the targets' conditions, but channels_last: nothing checked
    target = dict(shape=bench.parse_shape(bench.TARGET_SHAPES[0])._asdict(),
                  ratio_to_conv={'region_conv/forward': 1.0})
    args = bench.parse_args(['--channels-last'])
    assert bench.check_targets(target, args) == {}
    assert bench.check_targets(target, bench.parse_args([])) != {}
    with pytest.raises(SystemExit):
        bench.parse_args(['--channels-last', '--model', DEMO_CONFIG])


def test_peak_extra_bytes_counts_what_a_run_allocates(tool):
    bench = tool('analysis_tools/benchmark_drconv')
    import torch
    kept = []
    peak = bench.peak_extra_bytes(lambda: kept.append(torch.ones(1000, 1000)),
                                 torch.device('cpu'))
    assert peak == 4 * 10 ** 6


def test_peak_extra_bytes_ignores_frees_of_earlier_blocks(tool):
    # A block allocated while an earlier run was profiled and freed in this one (as the
    # gradients of the previous repetition are) neither lowers nor offsets this run's peak.
    bench = tool('analysis_tools/benchmark_drconv')
    import torch
    kept = []
    bench.peak_extra_bytes(lambda: kept.append(torch.ones(1000, 1000)), torch.device('cpu'))

    def replace() -> None:
        kept.clear()
        kept.append(torch.ones(100, 100))

    assert bench.peak_extra_bytes(replace, torch.device('cpu')) == 4 * 10 ** 4


def test_json_to_stdout_and_top2(capsys, tool):
    bench = tool('analysis_tools/benchmark_drconv')
    bench.main(['--shapes', '1,4,4,6,6,3,2', '--repeat', '1', '--warmup', '0', '--no-memory',
                '--top2', '--json', '-'])
    report = json.loads(capsys.readouterr().out)
    (layer,) = report['layers']
    assert layer['median_s']['region_conv_top2/forward_backward'] > 0 and 'memory' not in layer


def test_config_layers_and_model_mode(capsys, tool):
    bench = tool('analysis_tools/benchmark_drconv')
    shapes = bench.config_layer_shapes(DEMO_CONFIG, (3, 64, 64), 1)
    assert sum(len(names) for _, names in shapes) == 13
    assert all(s.k == 3 and s.m == 8 and s.b == 1 for s, _ in shapes)
    report = bench.main(['--shapes', 'none', '--model', DEMO_CONFIG, '--input-shape', '3',
                         '64', '64', '--batch', '1', '--infer-shape', '3', '64', '64',
                         '--model-repeat', '1', '--json', '-'])
    model = report['model']
    assert model['drconv_layers'] == 13 and model['train_shape'] == [1, 3, 64, 64]
    assert all(t > 0 for t in model['median_s'].values())
    assert set(model['median_s']) == {f'{n}/{m}' for n in ('drconv', 'baseline')
                                      for m in ('train_step', 'inference')}
    assert model['params']['drconv'] > model['params']['baseline']
    assert all(v > 0 for v in model['train_memory_bytes'].values())
    assert model['targets'] == {}  # not the detection target's config and sizes


def test_rpn_proposals_hand_the_roi_head_copies_of_the_given_ones(tool):
    import types

    import torch
    from mmengine.structures import InstanceData
    bench = tool('analysis_tools/benchmark_drconv')
    calls = []

    class RPN:
        def predict(self, *args, **kwargs):
            calls.append('predict')
            return ['own']

        def loss_and_predict(self, *args, **kwargs):
            calls.append('loss_and_predict')
            return {'loss': 1.0}, ['own']

    model = types.SimpleNamespace(rpn_head=RPN())
    given = {'predict': [InstanceData(bboxes=torch.ones(2, 4))],
             'loss_and_predict': [InstanceData(bboxes=torch.zeros(3, 4))]}
    with bench.rpn_proposals(model, 'predict', given):
        (got,) = model.rpn_head.predict()
    assert torch.equal(got.bboxes, given['predict'][0].bboxes) and got is not given['predict'][0]
    with bench.rpn_proposals(model, 'loss_and_predict', given):
        losses, (got,) = model.rpn_head.loss_and_predict()
    assert losses == {'loss': 1.0} and torch.equal(got.bboxes, torch.zeros(3, 4))
    assert calls == ['predict', 'loss_and_predict']  # the RPN itself still ran
    assert model.rpn_head.predict() == ['own']  # restored after the block
    with bench.rpn_proposals(model, 'predict', None):  # not a two-stage detector: as is
        assert model.rpn_head.predict() == ['own']
