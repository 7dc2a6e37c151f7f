"""Worker of the 2-rank gradient-sync test: `python -m tests.two_ranks OUT_DIR` (two gloo CPU ranks)."""

import json
import os
import sys

import numpy as np
import torch

from rlcm.arch import lcm_pipeline
from rlcm.trainer import RLCMConfig, RLCMTrainer


def brightness(images, prompts):
    return np.array([np.asarray(im, np.float32).mean() / 255 for im in images], np.float32)


def worker():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import gather_object

    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a process that had a 1-rank state
    acc = Accelerator(cpu=True)
    out = os.environ["RLCM_TEST_OUT"]
    pipe = lcm_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    cfg = RLCMConfig(model="tiny", epochs=1, prompts_per_epoch=2, images_per_prompt=2, sample_batch_size=4,
                     train_batch_size=4, num_steps=3, eval_every=0, lr=1e-2, lora_rank=4, lora_alpha=4,
                     output_dir=out, train_prompts=4)
    torch.manual_seed(0)  # identical LoRA init on both ranks
    tr = RLCMTrainer(cfg, pipe=pipe, reward_fn=brightness, accelerator=acc)
    before = torch.cat([p.detach().flatten().clone() for p in tr.params])
    trajs, rewards, prompts = tr._sample_epoch()
    adv, _ = tr._advantages(rewards, prompts)
    tr._train_epoch(trajs, adv)
    after = torch.cat([p.detach().flatten() for p in tr.params])
    rows = gather_object([{"rank": acc.process_index, "world": acc.num_processes,
                           "rewards": rewards.tolist(), "before": before.sum().item(),
                           "delta": (after - before).tolist()}])
    if acc.is_main_process:
        with open(os.path.join(out, "ranks.json"), "w") as f:
            json.dump(rows, f)



if __name__ == "__main__":
    from accelerate import debug_launcher

    os.environ["RLCM_TEST_OUT"] = sys.argv[1]
    torch.set_num_threads(1)
    debug_launcher(worker, num_processes=2)
