"""Distributed training through mmengine on GPUs (NCCL) and on machines without CUDA (Gloo).

With CUDA nothing changes: mmengine's ``init_dist`` and its DDP wrapper run as configured.
Without CUDA, mmengine 0.10.7 cannot start: ``init_dist`` calls ``torch.cuda.set_device``
whatever the backend, and the Runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]``,
which DDP refuses for CPU modules. :func:`prepare_distributed` covers those two steps and
leaves the rest (samplers, seeds, rank-0 logging and checkpoints) to mmengine.
"""
import datetime

import mmengine.model  # noqa: F401  registers mmengine's model wrappers
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel


def prepare_distributed(cfg: Config, launcher: str) -> None:
    """Readies ``cfg`` for a distributed run started by ``launcher`` on this machine.

    Without CUDA (launcher ``'pytorch'``, i.e. torchrun): an ``'nccl'`` backend in
    ``env_cfg.dist_cfg`` becomes ``'gloo'``; the process group is initialised here from
    torchrun's environment, so the Runner skips ``init_dist``; the DDP wrapper gets
    ``device_ids=None``. With CUDA, or ``launcher='none'``: nothing to do.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f'--launcher {launcher} needs CUDA (mmengine sets a CUDA device); on '
                         'machines without GPUs start the processes with torchrun '
                         '(tools/dist_train.sh, --launcher pytorch) on each node')
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
        print_log("no CUDA: distributed backend 'gloo' instead of 'nccl'", logger='current')
    if not dist.is_initialized():
        timeout = dist_cfg.get('timeout')
        extra = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend=dist_cfg['backend'], **extra)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if issubclass(MODEL_WRAPPERS.get(wrapper.get('type', 'MMDistributedDataParallel')),
                  DistributedDataParallel):
        wrapper.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper
