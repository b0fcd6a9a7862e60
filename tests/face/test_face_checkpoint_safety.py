"""tools/export_onnx.py and tools/face/eval_verification.py refuse a checkpoint that runs code."""
import pickle

import numpy as np
import pytest

from drconv.face import save_bin

DEMO_CONFIG = 'configs/face/demo/arcface_mobilefacenet-thin-drconv_demo-synth.py'


def test_export_onnx_refuses_code(tool, malicious_checkpoint, tmp_path, monkeypatch):
    path, marker = malicious_checkpoint
    monkeypatch.chdir(tool('export_onnx').REPO_ROOT)
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL (builtins\.)?exec\b'):
        tool('export_onnx').main([DEMO_CONFIG, path, str(tmp_path / 'model.onnx')])
    assert not marker.exists()


def test_eval_verification_refuses_code(tool, malicious_checkpoint, tmp_path, monkeypatch):
    path, marker = malicious_checkpoint
    bin_path = str(tmp_path / 'synth.bin')
    images = [np.zeros((64, 64, 3), np.uint8)] * 2
    save_bin(bin_path, images, [True], img_fmt='.png')
    monkeypatch.chdir(tool('face/eval_verification').REPO_ROOT)
    with pytest.raises(pickle.UnpicklingError, match=r'GLOBAL (builtins\.)?exec\b'):
        tool('face/eval_verification').main([DEMO_CONFIG, path, '--bins', bin_path])
    assert not marker.exists()
