"""The PyTorch twin of a data-parallel run, one rank per process (tests/test_data_parallel.py starts them):
torch.distributed with the gloo backend, DistributedDataParallel and ZeroRedundancyOptimizer(AdamW), on the
rows of the batch our rank r trains on.

    RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/ddp_twin.py DATA_DIR OUT.npz STEPS CONFIG_JSON

Built from torch's own blocks, independently of reference/programs/distributed.py: the batch is the
reference's `get_batch` from the train generator [seed, 1] (so both sides see the same rows), the shards
are even (DDP averages gradients 1/N, equal to the token-weighted sum only when every shard counts the
same targets), the model is oracle.bridge.twins.GPT with the reference's initial weights, the optimizer nanoGPT's
two AdamW groups behind ZeroRedundancyOptimizer, the learning rate nanoGPT's get_lr (TrainConfig.lr_at),
clipping torch.nn.utils.clip_grad_norm_. Rank 0 writes the per-step losses, the final weights and the
moments (consolidated from the ranks' shards) to OUT.npz.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle.bridge import twins  # noqa: E402
from reference.model import GPT  # noqa: E402
from reference.programs.data import get_batch, load_meta, load_split  # noqa: E402
from reference.programs.training.settings import TrainConfig  # noqa: E402


def main(data_dir: str, out: str, steps: int, config_json: str) -> None:
    dist.init_process_group("gloo")
    rank, n = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(json.loads(config_json))
    vocab = load_meta(data_dir)["vocab_size"]
    train = load_split(data_dir, "train")
    ref = GPT(cfg.model_config(vocab), seed=cfg.seed)
    model = twins.twin_of(ref.config)
    twins.load_reference_state(model, ref.state_dict(), torch.float64)
    ddp = DistributedDataParallel(model)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    rng = np.random.default_rng([cfg.seed, 1])
    rows = cfg.batch_size * cfg.gradient_accumulation_steps
    assert rows % n == 0, "even shards: DDP averages 1/N"
    a, b = rank * rows // n, (rank + 1) * rows // n
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        x, y = get_batch(train, rows, cfg.block_size, rng)
        opt.zero_grad(set_to_none=True)
        logits = ddp(torch.from_numpy(x[a:b]))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y[a:b]).reshape(-1))
        loss.backward()                                        # DDP: the gradients averaged over the ranks
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / n)
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        state = opt.state_dict()
        names = {id(p): name for name, p in model.named_parameters()}
        order = [p for g in groups for p in g["params"]]
        arrays = {"losses": np.array(losses)}
        for i, p in enumerate(order):
            arrays[f"w.{names[id(p)]}"] = p.detach().numpy()
            for key in ("exp_avg", "exp_avg_sq"):
                arrays[f"{key}.{names[id(p)]}"] = state["state"][i][key].numpy()
        np.savez(out, **arrays)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
