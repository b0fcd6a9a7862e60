"""tools/analysis_tools/compare.py end to end on the thin face demo (2 seeds, 2 iterations),
its resumption, the statistics it reports, and the baselines it derives."""
import json
import os.path as osp
import subprocess

import pytest
from scipy import stats

from drconv import DRConv2d
from drconv_mm.analysis import models
from drconv_mm.analysis.seed_statistics import mean_std, paired_difference

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FACE_CONFIG = osp.join(REPO, 'configs', 'face', 'demo',
                       'arcface_mobilefacenet-thin-drconv_demo-synth.py')
DRCONV_ARM = 'arcface_mobilefacenet-thin-drconv_demo-synth'


@pytest.fixture(scope='module')
def faces(tmp_path_factory, tool) -> str:
    """A synthetic face data set: 20 identities x 4 images, 20 verification pairs."""
    out = str(tmp_path_factory.mktemp('faces'))
    tool('face/make_demo_data').main([out, '--train-ids', '20', '--per-id', '4',
                                      '--val-ids', '10', '--pairs', '20'])
    return out + '/'


def tiny_options(data_root: str) -> list:
    """--cfg-options: the face demo config on ``data_root``, 2 iterations of 8 images."""
    return ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
            'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=8',
            'model.head.num_classes=20', f'train_dataloader.dataset.data_root={data_root}',
            f'val_dataloader.dataset.data_root={data_root}', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False']


def test_drconv_against_its_baseline_over_two_seeds_resumes(faces, tool, tmp_path, capsys):
    compare = tool('analysis_tools/compare')
    work = str(tmp_path / 'ab')
    args = [FACE_CONFIG, '--work-dir', work, '--cfg-options', *tiny_options(faces)]

    # an interrupted comparison: seed 0 only, then both seeds
    compare.main(args[:1] + ['--seeds', '0'] + args[1:])
    seed0 = {arm: osp.getmtime(osp.join(work, arm, 'seed0', 'iter_2.pth'))
             for arm in (DRCONV_ARM, 'baseline')}
    capsys.readouterr()
    json_path = str(tmp_path / 'ab.json')
    report = compare.main(args[:1] + ['--seeds', '0', '1', '--json', json_path] + args[1:])
    printed = capsys.readouterr().out

    for arm, mtime in seed0.items():  # seed 0 was not trained again
        assert f'{arm} seed 0: finished before' in printed
        assert osp.getmtime(osp.join(work, arm, 'seed0', 'iter_2.pth')) == mtime
    assert f'{DRCONV_ARM} seed 1: training' in printed

    assert report['metric'] == 'synth/accuracy' and report['seeds'] == [0, 1]
    drconv, baseline = report['arms']
    assert (drconv['name'], baseline['name']) == (DRCONV_ARM, 'baseline')
    for row in report['arms']:
        for seed in (0, 1):  # each seed's value is what its run's evaluator reported
            with open(osp.join(work, row['name'], f'seed{seed}', 'run_summary.json')) as f:
                summary = json.load(f)
            assert row['values'][seed] == summary['metrics']['synth/accuracy']
            assert summary['iters_timed'] == 2 and summary['iter_seconds_median'] > 0
        assert row['mean'] == pytest.approx(sum(row['values'].values()) / 2)
        assert row['iter_seconds'] > 0
    # the baseline is the same model without its DRConv layers
    net = models.build_model(models.load_config(FACE_CONFIG))
    assert drconv['drconv_layers'] == sum(isinstance(m, DRConv2d) for m in net.modules()) > 0
    assert baseline['drconv_layers'] == 0
    assert drconv['params'] > baseline['params'] and drconv['flops'] > baseline['flops']
    assert 'difference' not in drconv
    assert baseline['difference']['values'] == pytest.approx(
        [baseline['values'][s] - drconv['values'][s] for s in (0, 1)])
    with open(osp.join(work, 'baseline', 'baseline.py')) as f:
        assert "type='DRConv'" not in f.read()

    table = printed[printed.index('| arm |'):]
    assert f'| {DRCONV_ARM} | ' in table and f'| {DRCONV_ARM} without DRConv | ' in table
    assert f"{drconv['values'][0]:.4f} / {drconv['values'][1]:.4f}" in table
    with open(json_path) as f:
        assert json.load(f)['arms'][1]['difference']['ci'] == baseline['difference']['ci']

    # the same work dir with another config is refused, naming the arm config at fault
    with pytest.raises(SystemExit) as info:
        compare.main(args + ['train_cfg.max_iters=3'])
    assert osp.join(work, DRCONV_ARM, f'{DRCONV_ARM}.py') in str(info.value)


def test_arm_without_drconv_has_no_baseline(tool, tmp_path):
    config = tmp_path / 'plain.py'
    config.write_text("_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\n")
    with pytest.raises(SystemExit) as info:
        tool('analysis_tools/compare').main([str(config)])
    assert str(config) in str(info.value) and "type='DRConv'" in str(info.value)


def test_paired_difference_is_the_paired_t_interval():
    first = {0: 0.50, 1: 0.55, 2: 0.60, 3: 0.58}
    other = {0: 0.52, 1: 0.54, 2: 0.66, 3: 0.61, 4: 0.9}  # seed 4 has no pair: left out
    diff = paired_difference(first, other, confidence=0.9)
    assert diff['seeds'] == [0, 1, 2, 3]
    seeds = diff['seeds']
    expected = stats.ttest_rel([other[s] for s in seeds], [first[s] for s in seeds])
    low, high = expected.confidence_interval(0.9)
    assert diff['ci'] == pytest.approx([low, high])
    assert diff['mean'] == pytest.approx(0.025)
    assert paired_difference(first, {0: 0.6})['ci'] is None
    assert paired_difference(first, {7: 0.6}) is None
    assert mean_std([0.5]) == dict(mean=0.5, std=None)


def test_face_baseline_turns_its_drconv_stages_off():
    cfg = models.load_config(FACE_CONFIG)
    model_cfg, removed = models.without_drconv(cfg.model.to_dict())
    assert removed == 1 and model_cfg['backbone']['drconv'] is None
    assert model_cfg['backbone']['stage_with_drconv'] == (False, ) * 4
    assert any(isinstance(m, DRConv2d) for m in models.build_model(cfg).modules())
    assert not any(isinstance(m, DRConv2d)
                   for m in models.build_model(cfg, baseline=True).modules())


def test_make_compare_names_its_tasks_for_an_unknown_one():
    result = subprocess.run(['bash', 'tools/demo/compare.sh', 'detection'], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ('make compare: no comparison for TASK=detection; use det, '
                                     'seg, face, det-ablation, det-hard or face-hard')
