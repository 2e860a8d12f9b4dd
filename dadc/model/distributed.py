"""Data-parallel training with torchrun, PyTorch's own launcher (nothing home-made):

    torchrun --standalone --nproc-per-node K -m dadc train ...

torchrun starts K processes and tells each its RANK, WORLD_SIZE and LOCAL_RANK (and where rank 0
listens). Each process joins the group (gloo on CPU, NCCL on GPU: GPU LOCAL_RANK), wraps the net in
DistributedDataParallel (gradients averaged across processes at each step, so the weights stay
equal), and trains on its shard of each epoch, as torch.utils.data.DistributedSampler deals it
(shuffled with the run's seed and the epoch, equal shards: every process runs the same number of
steps). `--batch-size` is per process: the global batch is K times it. Rank 0 alone reads MNIST
first (it may download and cache it), measures and writes the checkpoint; the others wait at a
barrier where they would read what rank 0 wrote. Without torchrun nothing here runs.
"""
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .. import config


def launched():
    """Started by torchrun with more than one process."""
    return config.torchrun()[0] > 1


def active():
    """In a process group of more than one process (start() ran)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if active() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def start(device):
    """Join torchrun's process group; returns the device this process trains on ("cuda:LOCAL_RANK"
    for "cuda", else as given)."""
    if str(device).startswith("cuda"):
        local = config.torchrun()[1]
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def wrap(net, device):
    return DistributedDataParallel(net, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)


def order(n, epoch, seed):
    """This process's shard of an epoch over n examples: indices, shuffled by (seed, epoch) as every
    process shuffles them, equal shards (the remainder dropped, as DistributedSampler does)."""
    sampler = DistributedSampler(range(n), shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def shard(n):
    """Examples in one process's shard of an epoch."""
    return n // dist.get_world_size()


def same_weights(model):
    """True if every process ends with the same weights, as DDP keeps them (checked once, at the end)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return torch.equal(low, high)


def barrier():
    if active():
        dist.barrier()


def stop():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
