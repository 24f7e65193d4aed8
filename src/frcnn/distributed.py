"""Whether this process is one of several (DDP): what data, training and evaluation ask before
they split, gather or synchronise."""

import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
