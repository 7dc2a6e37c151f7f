"""The RLCM trainer: the update follows the advantages, LoRA round-trips, resume, and 2-rank sync."""

import json
import os

import numpy as np
import pytest
import torch

from rlcm.arch import lcm_pipeline
from rlcm.trainer import RLCMConfig, RLCMTrainer

from .conftest import brightness, rlcm_config

pytestmark = pytest.mark.heavy


def tiny_config(tmp_path, **kw):
    return rlcm_config(tmp_path, dict(epochs=1, prompts_per_epoch=2, images_per_prompt=4, sample_batch_size=8,
                                      train_batch_size=8, lora_rank=4, lora_alpha=8, train_prompts=4), **kw)


def make_trainer(tmp_path, seed=0, **kw):
    pipe = lcm_pipeline("tiny", seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return RLCMTrainer(tiny_config(tmp_path, **kw), pipe=pipe, reward_fn=brightness)


def lora_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.pipe.unet.named_parameters() if "lora" in n}


def test_update_follows_the_advantages(tmp_path):
    """After one optimiser step, actions with positive advantage became more likely, negative less."""
    tr = make_trainer(tmp_path)
    before = lora_params(tr)
    base_before = {n: p.clone() for n, p in tr.pipe.unet.named_parameters() if "lora" not in n}
    trajs, rewards, prompts = tr._sample_epoch()
    adv, _ = tr._advantages(rewards, prompts)
    tr._train_epoch(trajs, adv)
    after = lora_params(tr)
    assert any(not torch.equal(before[n], after[n]) for n in before), "LoRA weights did not move"
    assert all(torch.equal(p, base_before[n]) for n, p in tr.pipe.unet.named_parameters() if "lora" not in n)
    with torch.no_grad():
        delta = torch.cat([torch.stack([tr.policy.log_prob(tr.unet, t, j) for j in range(t.actions.shape[1])], 1)
                           - t.log_probs for t in trajs])  # (N, T)
    surrogate_gain = (torch.tensor(adv, dtype=torch.float32)[:, None] * delta).sum()
    assert surrogate_gain > 0


def test_saved_lora_reproduces_trainer_images(tmp_path):
    """alpha != rank: the adapter metadata must keep the scale when diffusers loads the file."""
    tr = make_trainer(tmp_path, lora_alpha=16, lora_rank=4)
    tr.train()
    prompts, seeds = ["a red circle", "a blue star"], [1, 2]
    mine = tr.sample_images(prompts, seeds)
    fresh = lcm_pipeline("tiny")
    fresh.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    base = fresh(prompts, num_inference_steps=2, guidance_scale=8.0, generator=gens()).images
    fresh.load_lora_weights(str(tmp_path / "run" / "lora"), adapter_name="rl")
    theirs = fresh(prompts, num_inference_steps=2, guidance_scale=8.0, generator=gens()).images
    for a, b, c in zip(mine, theirs, base):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(c)) for a, c in zip(mine, base))


def test_checkpoint_resume(tmp_path):
    tr = make_trainer(tmp_path, epochs=1)
    tr.train()
    done = lora_params(tr)
    tr2 = make_trainer(tmp_path, epochs=2)
    assert tr2.resume() and tr2.epoch == 1
    assert all(torch.equal(done[n], p) for n, p in lora_params(tr2).items())
    hist = tr2.train()
    assert [r["epoch"] for r in hist] == [1, 2]
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_two_cpu_processes_synchronise_gradients(tmp_path):
    """Two gloo ranks via accelerate.debug_launcher, started from a fresh interpreter: forking the test process
    (which holds server and worker threads from other tests) can deadlock the children."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "tests.two_ranks", str(tmp_path)], cwd=root, check=True, timeout=600,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = json.loads((tmp_path / "ranks.json").read_text())
    assert len(rows) == 2 and rows[0]["world"] == 2
    assert rows[0]["rewards"] != rows[1]["rewards"]  # each rank sampled its own data
    assert rows[0]["before"] == rows[1]["before"]
    d0, d1 = np.array(rows[0]["delta"]), np.array(rows[1]["delta"])
    assert np.abs(d0).max() > 0 and np.allclose(d0, d1, atol=1e-7)  # all-reduced gradients: same update


@pytest.mark.parametrize("units", ["action", "x0"])
def test_kl_anchor_pulls_the_policy_back_to_the_base(tmp_path, units):
    """With a constant reward (zero advantages) only the KL term acts: it must shrink the distance to the base."""
    pipe = lcm_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    const = lambda images, prompts: np.zeros(len(images), np.float32)  # noqa: E731
    tr = RLCMTrainer(tiny_config(tmp_path, kl_coef=1.0, lr=5e-3, kl_units=units, images_per_prompt=2,
                                 sample_batch_size=4, train_batch_size=4), pipe=pipe, reward_fn=const)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the base (LoRA B starts at zero)
        for n, p in tr.pipe.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    kls = []
    for _ in range(4):
        trajs, rewards, prompts = tr._sample_epoch()
        assert all(t.ref_means is not None and t.ref_means.shape == t.actions.shape for t in trajs)
        adv, _ = tr._advantages(rewards, prompts)
        assert np.all(adv == 0)
        kls.append(tr._train_epoch(trajs, adv)["kl_to_base"])
    assert kls[0] > 0
    assert kls[-1] < 0.7 * kls[0], kls
    # the base means really are the LoRA-free model's: equal to a fresh pipeline's policy
    fresh = lcm_pipeline("tiny", seed=0)
    t = trajs[0]
    with torch.no_grad():
        ref = tr.policy.action_dist(fresh.unet, t, 0)[0]
    assert torch.allclose(ref, t.ref_means[:, 0], atol=1e-5)


def test_reward_rises_on_the_toy_lcm(tmp_path, toy_lcm_path):
    """A few epochs on an easy reward (brightness) move the held-out reward (fixed prompts and seeds) up."""
    from rlcm.pipelines import load_pipeline

    pipe = load_pipeline(str(toy_lcm_path), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    cfg = RLCMConfig(model=str(toy_lcm_path), epochs=5, prompts_per_epoch=4, images_per_prompt=8, sample_batch_size=32,
                     train_batch_size=32, num_steps=3, lr=1e-2, eval_every=5, eval_prompts=8, train_prompts=8,
                     output_dir=str(tmp_path / "run"), checkpoint_every=10**6)
    hist = RLCMTrainer(cfg, pipe=pipe, reward_fn=brightness).train()
    before, after = hist[0]["eval_reward_mean"], hist[-1]["eval_reward_mean"]
    assert after > before + 0.1, (before, after)


def test_accumulation_must_divide_the_backward_passes(tmp_path):
    """3 optimiser steps cannot share 2 backward passes (1 minibatch x 2 actions): refused, the pipeline untouched."""
    pipe = lcm_pipeline("tiny", seed=0)
    with pytest.raises(ValueError, match="does not divide the 2 backward passes"):
        RLCMTrainer(tiny_config(tmp_path, optimizer_steps_per_epoch=3, num_steps=3), pipe=pipe, reward_fn=brightness)
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())
    with pytest.raises(ValueError, match="at least 1"):
        tiny_config(tmp_path, inner_epochs=0)


def test_lr_warmup_scales_the_first_steps_and_a_resumed_run_continues_the_ramp(tmp_path):
    """Adam's first step moves each weight by about lr whatever its gradient, so a warm-up of W epochs makes the
    first step exactly 1/W of the unwarmed one (same samples); the ramp follows the epoch count across a resume."""
    steps = {}
    for w in (0, 4):
        tr = make_trainer(tmp_path / f"w{w}", lr_warmup_epochs=w)
        before = lora_params(tr)
        trajs, rewards, prompts = tr._sample_epoch()
        adv, _ = tr._advantages(rewards, prompts)
        assert tr._train_epoch(trajs, adv)["lr"] == pytest.approx(tr.cfg.lr * (0.25 if w else 1.0))
        steps[w] = torch.cat([(p - before[n]).flatten() for n, p in lora_params(tr).items()])
    assert steps[0].abs().sum() > 0
    torch.testing.assert_close(steps[4], steps[0] / 4, rtol=1e-3, atol=1e-7)  # float32 rounding of p - before
    make_trainer(tmp_path / "ramp", lr_warmup_epochs=4, epochs=1).train()
    resumed = make_trainer(tmp_path / "ramp", lr_warmup_epochs=4, epochs=3)
    hist = resumed.train()
    assert [r["lr"] for r in hist] == pytest.approx([resumed.cfg.lr * f for f in (0.25, 0.5, 0.75)])
    with pytest.raises(ValueError, match="lr_warmup_epochs"):
        tiny_config(tmp_path, lr_warmup_epochs=-1)


def test_a_new_reward_fn_scores_the_next_epoch_and_restarts_the_per_prompt_statistics(tmp_path):
    """A studio round refits its reward model mid-round (`set_reward_fn`): the next epoch is scored by the new
    function, and its advantages compare its rewards with each other, not with the old function's scale."""
    tr = make_trainer(tmp_path, epochs=1, stat_min_count=4, train_prompts=1)  # one prompt: its buffer fills at once
    tr.train()
    assert len(tr.stats.buffers) == 1
    tr.set_reward_fn(lambda images, prompts: brightness(images, prompts) + 1000.0)
    trajs, rewards, prompts = tr._sample_epoch()
    assert rewards.min() > 999.0
    adv, _ = tr._advantages(rewards, prompts)
    # against the old buffer too, every reward would sit ~1 std above the mixed mean
    assert abs(adv.mean()) < 1e-3 and adv.std() > 0.5, adv
