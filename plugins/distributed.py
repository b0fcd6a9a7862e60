"""Distributed training through mmengine on GPUs (NCCL) and on machines without CUDA (Gloo).

With CUDA nothing changes: mmengine's ``init_dist`` and its DDP wrapper run as configured.
Without CUDA, mmengine 0.10.7 cannot start: ``init_dist`` calls ``torch.cuda.set_device``
whatever the backend, the Runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]``, which
DDP refuses for CPU modules, and SyncBN (mmseg's configs) runs on GPUs only.
:func:`prepare_distributed` covers those steps and leaves the rest (samplers, seeds, rank-0
logging and checkpoints) to mmengine.
"""
import datetime
import logging

import mmengine.model  # noqa: F401  registers mmengine's model wrappers
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel


def _sync_bn_to_bn(node) -> int:
    """Turns every SyncBN norm (torch's or mmcv's) under ``node`` into ``'BN'``; how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        node = list(node.values())
    if isinstance(node, (list, tuple)):
        count += sum(_sync_bn_to_bn(value) for value in node)
    return count


def adapt_to_cpu(cfg: Config) -> None:
    """The config changes a distributed run without CUDA needs (see the module's docstring).

    An ``'nccl'`` backend in ``env_cfg.dist_cfg`` becomes ``'gloo'``; SyncBN norms of the
    model become BN (each process then normalises over its own batch) and ``sync_bn`` is
    dropped; the DDP wrapper gets ``device_ids=None``.
    """
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
        print_log("no CUDA: distributed backend 'gloo' instead of 'nccl'", logger='current')
    if _sync_bn_to_bn(cfg.model) + (cfg.pop('sync_bn', None) is not None):
        print_log('no CUDA: SyncBN runs on GPUs only; BN instead, over each process\'s batch',
                  logger='current', level=logging.WARNING)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if issubclass(MODEL_WRAPPERS.get(wrapper.get('type', 'MMDistributedDataParallel')),
                  DistributedDataParallel):
        wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper


def prepare_distributed(cfg: Config, launcher: str) -> None:
    """Readies ``cfg`` and the process for a distributed run started by ``launcher``.

    Without CUDA (launcher ``'pytorch'``, i.e. torchrun): :func:`adapt_to_cpu`, and the process
    group is initialised here from torchrun's environment, so the Runner skips ``init_dist``.
    With CUDA, or ``launcher='none'``: nothing to do.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f'--launcher {launcher} needs CUDA (mmengine sets a CUDA device); on '
                         'machines without GPUs start the processes with torchrun '
                         '(tools/dist_train.sh, --launcher pytorch) on each node')
    adapt_to_cpu(cfg)
    if not dist.is_initialized():
        dist_cfg = cfg['env_cfg']['dist_cfg']
        timeout = dist_cfg.get('timeout')
        extra = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend=dist_cfg['backend'], **extra)


def end_distributed() -> None:
    """Destroys the process group, if one was initialised: PyTorch asks programs to do so before
    they exit, rather than leave the group's threads to the interpreter's teardown."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
