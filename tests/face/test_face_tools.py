"""Face tools end to end: synthetic data -> tools/train.py -> tools/test.py; ONNX export; the
data tools' checks, errors and help."""
import os
import os.path as osp
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from mmengine.config import Config

from drconv import DRConv2d
from drconv.face import BinFormatError, load_bin, save_bin

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = 'configs/face/demo/arcface_mobilefacenet-thin-drconv_demo-synth.py'


def run(args, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


@pytest.fixture(scope='module')
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('face_synth')
    proc = run(['tools/face/make_demo_data.py', str(root), '--train-ids', '6', '--per-id', '4',
                '--val-ids', '4', '--val-per-id', '3', '--pairs', '10'])
    assert proc.returncode == 0, proc.stderr
    return root


def options(root, work_dir, num_classes=6, iters=3, val_sets='synth',
            save_best='synth/accuracy', val_interval=None):
    """The demo config shrunk for a test: 32 px, batch 8, ``iters`` iterations."""
    return ['--work-dir', str(work_dir), '--cfg-options', f'data_root={root}',
            f'train_dataloader.dataset.data_root={root}', 'train_dataloader.batch_size=8',
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            f'val_dataloader.dataset.data_root={root}', f'test_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.bin_names=[{val_sets}]',
            f'default_hooks.checkpoint.save_best=[{save_best}]',
            f'model.head.num_classes={num_classes}', 'model.backbone.input_size=32',
            'val_dataloader.dataset.image_size=32', 'test_dataloader.dataset.image_size=32',
            'train_dataloader.dataset.pipeline.0.size=32', f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={val_interval or iters}',
            f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
            'param_scheduler.0.end=1', 'param_scheduler.1.begin=1',
            f'param_scheduler.1.end={iters}']


def test_train_logs_like_arcface_torch_and_keeps_the_best_per_set(synth_data, tmp_path):
    # validation at iterations 2 and 4 on synth and on lfw, whose .bin is missing
    proc = run(['tools/train.py', DEMO_CONFIG] + options(
        synth_data, tmp_path, iters=4, val_interval=2, val_sets='synth,lfw',
        save_best='synth/accuracy,lfw/accuracy'))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'Iter(train) [4/4]' in log and 'loss_arcface' in log
    warnings_ = [line for line in log.splitlines() if 'WARNING' in line and 'lfw.bin' in line]
    assert len(warnings_) == 1 and 'validating on synth' in warnings_[0]
    flips = {int(s): float(a) for s, a in
             re.findall(r'\[synth\]\[(\d+)\]Accuracy-Flip: ([\d.]+)\+-[\d.]+', log)}
    highest = {int(s): float(a) for s, a in
               re.findall(r'\[synth\]\[(\d+)\]Accuracy-Highest: ([\d.]+)', log)}
    assert sorted(flips) == sorted(highest) == [2, 4]
    assert highest == {2: flips[2], 4: max(flips.values())}
    assert re.search(r'\[synth\]\[4\]XNorm: [\d.]+', log)
    best = [f for f in os.listdir(tmp_path) if f.startswith('best_')]
    assert len(best) == 1 and re.fullmatch(r'best_synth_accuracy_iter_[24]\.pth', best[0])
    proc = run(['tools/test.py', DEMO_CONFIG, str(tmp_path / 'iter_4.pth')] +
               options(synth_data, tmp_path / 't'))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r'synth/tar@far1e-3: [\d.]+ +synth/far: [\d.]+', log)
    assert re.search(r'\[synth\]Accuracy-Flip: [\d.]+\+-[\d.]+', log)


def test_missing_validation_sets_skip_validation_and_seeded_runs_repeat(synth_data, tmp_path):
    states = []
    for work_dir in (tmp_path / 'a', tmp_path / 'b'):
        proc = run(['tools/train.py', DEMO_CONFIG] + options(
            synth_data, work_dir, iters=2, val_sets='lfw', save_best='lfw/accuracy'))
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert 'Iter(train) [2/2]' in log and 'Traceback' not in log
        warnings_ = [line for line in log.splitlines() if 'WARNING' in line and 'lfw' in line]
        assert len(warnings_) == 1 and f'{synth_data}/lfw.bin not found' in warnings_[0]
        assert 'validation is skipped' in log and 'Accuracy-Flip' not in log
        checkpoint = torch.load(work_dir / 'iter_2.pth', map_location='cpu', weights_only=False)
        states.append(checkpoint['state_dict'])
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0, msg=key)


def test_labels_beyond_num_classes_are_refused(synth_data, tmp_path):
    proc = run(['tools/train.py', DEMO_CONFIG] + options(synth_data, tmp_path, num_classes=4))
    assert proc.returncode != 0
    assert 'labels go up to 5' in proc.stderr and 'num_classes=4' in proc.stderr
    assert 'Iter(train)' not in proc.stdout + proc.stderr


def test_missing_face_data_root_shows_the_layout_and_the_face_command(tmp_path):
    from drconv_mm.det.data_check import check_data_paths
    cfg = Config.fromfile(osp.join(REPO, DEMO_CONFIG))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'ms1mv3')
    with pytest.raises(FileNotFoundError) as error:
        check_data_paths(cfg, ['train_dataloader'])
    message = str(error.value)
    assert f"'{tmp_path / 'ms1mv3'}' does not exist" in message
    assert '<data_root>/train.rec, train.idx, property' in message
    assert '`python tools/face/make_demo_data.py DATA_ROOT`' in message
    assert '`python tools/make_demo_data.py`' not in message


def test_eval_verification_reports_the_far_reached(synth_data, capsys):
    from tools.face import eval_verification
    eval_verification.main([DEMO_CONFIG, 'none', '--bins', str(synth_data / 'synth.bin'),
                            '--cfg-options', 'model.backbone.input_size=32'])
    out = capsys.readouterr().out
    assert re.search(r'TAR@FAR1e-3 +\(FAR\) +XNorm', out)
    assert re.search(r'synth +20 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+', out)
    assert ('note: TAR@FAR1e-3 needs at least 1000 impostor pairs in the folds that pick each '
            'threshold (synth: 9)') in out


def test_tools_name_the_missing_or_wrong_input(tmp_path, capsys):
    from tools.face import eval_verification, pack_recordio
    with pytest.raises(SystemExit):
        pack_recordio.main([str(tmp_path / 'faces'), str(tmp_path / 'out')])
    assert f'{tmp_path / "faces"} is not a folder (expected one folder per identity' in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_verification.main([DEMO_CONFIG, 'none', '--bins', str(tmp_path)])
    assert f'--bins {tmp_path} is a directory; give the .bin files in it' in \
        capsys.readouterr().err


def test_a_corrupt_image_in_a_bin_names_file_index_and_check_command(tmp_path, capsys):
    from drconv_mm.face import VerificationBinDataset
    from tools.face import make_pairs_bin
    grey = np.full((112, 112, 3), 128, np.uint8)
    path = tmp_path / 'lfw.bin'
    save_bin(str(path), [grey, grey, b'\x89PNG broken' * 50, grey], [True, False])
    dataset = VerificationBinDataset(str(tmp_path), ['lfw'])
    assert dataset[1]['inputs'].shape == (3, 112, 112)
    with pytest.raises(BinFormatError) as error:
        dataset[2]
    assert str(error.value) == (
        f'{path}: image 2 (pair 1): an image of 550 bytes could not be decoded. Check every '
        f'image with: python tools/face/make_pairs_bin.py --check {path}')
    with pytest.raises(SystemExit) as error:
        make_pairs_bin.main(['--check', str(path)])
    assert str(error.value) == ('error: images that do not decode:\n  '
                                f'{path}: image 2 (pair 1): an image of 550 bytes could not '
                                'be decoded')


def test_export_has_a_dynamic_batch_and_loads_in_insightface(tmp_path):
    import onnx
    import onnxruntime as ort
    from tools.export_onnx import build_backbone, check_insightface, export
    torch.manual_seed(0)
    backbone = build_backbone(osp.join(REPO, DEMO_CONFIG))  # the demo's own size: 112
    assert backbone.input_size == 112
    # give DRConv a non-zero dynamic part and BN real statistics, so regions differ
    for m in backbone.modules():
        if hasattr(m, 'bases'):
            torch.nn.init.normal_(m.bases, 0, 0.05)
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.momentum = None
            m.reset_running_stats()
    backbone.train()
    with torch.no_grad():
        backbone(torch.rand(4, 3, 112, 112) * 2 - 1)
    backbone.eval()
    out = str(tmp_path / 'face.onnx')
    assert export(backbone, out, 112) < 1e-4  # batches of 1 and 3
    graph = onnx.load(out).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    assert {'Conv', 'ArgMax', 'MatMul'} <= {n.op_type for n in graph.node}
    x = torch.rand(5, 3, 112, 112) * 2 - 1
    got = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(
        None, {'input.1': x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), backbone(x), rtol=1e-4, atol=1e-4)
    result = check_insightface(backbone, out)  # a real face, batch 1 and batch 2
    assert result['error'] < 1e-4 and result['dim'] == 128 and result['norm'] > 0.1
    assert -1 < result['mirror_cosine'] < 1


def test_batch_free_drconv_matches_the_layer_at_any_batch(tmp_path):
    import onnxruntime as ort
    from tools.export_onnx import BatchFreeDRConv
    torch.manual_seed(0)
    layer = DRConv2d(8, 6, 3, stride=2, padding=1, bias=True, region_num=3,
                     filter_generator='paper').eval()
    torch.nn.init.normal_(layer.filter_generator.projection, 0, 0.1)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(BatchFreeDRConv(layer)(x), layer(x))
        out = str(tmp_path / 'layer.onnx')
        torch.onnx.export(BatchFreeDRConv(layer), (x, ), out, input_names=['x'],
                          dynamic_axes={'x': {0: 'batch'}}, opset_version=17, dynamo=False)
        x = torch.randn(4, 8, 9, 11)
        got = ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(
            None, {'x': x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), layer(x), rtol=1e-4, atol=1e-5)


def test_embedding_errors_are_relative_to_the_norm():
    from tools.export_onnx import embedding_errors
    rng = np.random.default_rng(0)
    expected = rng.normal(size=(2, 128)) * 1e-5  # an untrained model's embeddings
    got = rng.normal(size=(2, 128)) * 1e-5  # unrelated ones
    assert np.abs(got - expected).max() < 1e-4  # what an absolute tolerance let through
    assert embedding_errors(got, expected).min() > 1
    assert embedding_errors(expected * (1 + 1e-7), expected).max() < 1e-6
    assert embedding_errors(expected, np.zeros_like(expected)).min() == np.inf


def test_export_refuses_sizes_it_cannot_serve_before_exporting(tmp_path, capsys):
    from tools.export_onnx import main
    out = tmp_path / 'face.onnx'
    with pytest.raises(SystemExit):
        main([DEMO_CONFIG, 'none', str(out), '--input-size', '128'])
    assert 'this backbone takes 112x112 inputs' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([DEMO_CONFIG, 'none', str(out), '--check-insightface', '--cfg-options',
              'model.backbone.input_size=64'])
    assert ('insightface loads ArcFace models with square inputs >= 112 that are multiples of '
            '16, and this backbone takes 64x64') in capsys.readouterr().err
    assert not out.exists()


def test_align_faces_matches_norm_crop_without_deprecated_calls():
    from insightface.data import get_image
    from insightface.utils.face_align import norm_crop
    from tools.face.align_faces import align
    img = get_image('t1')  # a group photo shipped with insightface
    landmarks = np.array([[500, 300], [561, 306], [531, 342], [504, 379], [556, 383]], np.float32)
    for size in (112, 256):
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            ours = align(img, landmarks, size)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # scikit-image's `estimate`
            reference = norm_crop(img, landmarks, image_size=size)
        np.testing.assert_array_equal(ours, reference)
        assert ours.std() > 10  # a crop of the photo, not the black border


def test_face_tools_help_describes_every_argument_and_its_default():
    from tools import export_onnx
    from tools.face import (align_faces, eval_verification, make_demo_data, make_pairs_bin,
                            pack_recordio)
    for tool in (export_onnx, align_faces, eval_verification, make_demo_data, make_pairs_bin,
                 pack_recordio):
        parser = tool.build_parser()
        for action in parser._actions:
            if action.dest == 'help':
                continue
            assert action.help, (tool.__name__, action.dest)
            if action.option_strings and not action.required:
                assert '(default: ' in action.help, (tool.__name__, action.dest)
        assert len(parser.format_help()) > 500
    text = ' '.join(eval_verification.build_parser().format_help().split())
    assert 'flip test-time augmentation' in text and 'it prints one row' in text


def test_pack_recordio_and_make_pairs_bin_from_folders(tmp_path, capsys):
    import cv2
    from drconv.face import load_bin
    from drconv_mm.face import ImageFolderFaceDataset, MXFaceDataset
    from tools.face import make_pairs_bin, pack_recordio
    rng = np.random.default_rng(0)
    for ident in ('alice', 'bob', 'carol'):
        (tmp_path / 'imgs' / ident).mkdir(parents=True)
        for k in range(3):
            img = rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / 'imgs' / ident / f'{k}.png'), img)
    pack_recordio.main([str(tmp_path / 'imgs'), str(tmp_path / 'rec')])
    make_pairs_bin.main([str(tmp_path / 'imgs'), str(tmp_path / 'p.bin'), '--same', '4',
                         '--diff', '5'])
    bins, issame = load_bin(str(tmp_path / 'p.bin'))
    assert len(bins) == 18 and sum(issame) == 4
    capsys.readouterr()
    pack_recordio.main(['--check', str(tmp_path / 'rec')])
    make_pairs_bin.main(['--check', str(tmp_path / 'p.bin')])
    assert capsys.readouterr().out.splitlines() == [
        f'{tmp_path / "rec" / "train.rec"}: all 12 records read, every image decodes',
        f'{tmp_path / "p.bin"}: every image decodes']
    pipeline = [dict(type='PackFaceInputs')]
    rec = MXFaceDataset(str(tmp_path / 'rec'), pipeline=pipeline)
    folders = ImageFolderFaceDataset(str(tmp_path / 'imgs'), pipeline=pipeline)
    assert len(rec) == len(folders) == 9 and rec.max_label() == folders.max_label() == 2
    item = rec[4]
    assert item['inputs'].shape == (3, 112, 112) and int(item['data_samples'].gt_label) == 1


def test_hard_variant_gives_each_view_its_own_background(tmp_path):
    from drconv.face import recordio
    corner_spread = {}
    for variant in ('demo', 'hard'):
        root = tmp_path / variant
        proc = run(['tools/face/make_demo_data.py', str(root), '--train-ids', '2', '--per-id', '6',
                    '--val-ids', '2', '--val-per-id', '3', '--pairs', '4']
                   + (['--hard'] if variant == 'hard' else []))
        assert proc.returncode == 0, proc.stderr
        assert len(load_bin(str(root / 'synth.bin'))[0]) == 16
        rec = recordio.MXIndexedRecordIO(str(root / 'train.idx'), str(root / 'train.rec'), 'r')
        # the first identity's 6 views (record 0 is the MS1M header): their top-left corners
        corners = np.stack([recordio.unpack_img(rec.read_idx(i))[1][:6, :6].mean((0, 1))
                            for i in range(1, 7)])
        corner_spread[variant] = corners.std(0).mean()
    # the demo's identity keeps its background under colour jitter; the hard views do not
    assert corner_spread['hard'] > 2 * corner_spread['demo']


def test_hard_config_reads_the_hard_data_everywhere():
    cfg = Config.fromfile(osp.join(REPO, 'configs/face/demo/'
                                         'arcface_mobilefacenet-thin-drconv_demo-synth-hard.py'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == 'data/face_demo_hard/'
