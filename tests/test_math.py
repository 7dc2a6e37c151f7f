"""The RL math against independent references: log-probs (torch Normal, diffusers' own scheduler steps, off-policy),
PPO's clipped surrogate, the Bradley-Terry loss, and the trainer's accumulated gradient (a full-batch hand-written
loss, with ratios far from 1 and the clip and KL terms active)."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from reward_model.head import bt_loss
from rlcm.arch import lcm_pipeline, sd15_pipeline
from rlcm.lora import add_lora
from rlcm.policy import Trajectory, gaussian_kl, gaussian_log_prob, make_policy
from rlcm.stats import PerPromptStatTracker
from rlcm.trainer import RLCMConfig, RLCMTrainer, ppo_loss

PROMPTS = ["a red circle on a blue background", "a large green star"]


def normal_log_prob(x, mean, std):
    """Per-sample log-density under N(mean, std^2 I), averaged over C*H*W (the policy's convention), in float64."""
    lp = Normal(mean.double(), std.double()).log_prob(x.double())
    return lp.mean(dim=tuple(range(1, lp.ndim)))


def set_lora_b(unet, seed: int, std: float = 0.05) -> None:
    """Move the LoRA away from zero (its B starts at zero): a different policy for each seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------ log-probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gaussian_log_prob_is_the_normal_density_averaged_over_dims(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g).to(dtype)
    mean = torch.randn(3, 4, 8, 8, generator=g).to(dtype)
    for std in (torch.tensor([0.37]), torch.tensor([0.05, 0.5, 2.0]).view(3, 1, 1, 1)):
        got = gaussian_log_prob(x, mean, std)
        assert got.dtype == torch.float32 and got.shape == (3,)
        assert torch.allclose(got.double(), normal_log_prob(x, mean, std), atol=1e-4, rtol=1e-5)


def test_gaussian_kl_is_the_normal_kl_averaged_over_dims():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    std = torch.tensor([0.3])
    ref = torch.distributions.kl_divergence(Normal(m1.double(), 0.3), Normal(m2.double(), 0.3)).mean(dim=(1, 2, 3))
    assert torch.allclose(gaussian_kl(m1, m2, std).double(), ref, rtol=1e-5)


def lcm_reference(pipe, traj, j):
    """Log-prob of traj's step-j action from diffusers' own LCMScheduler.step (denoised, incl. its clip/threshold
    step) and alphas, with the UNet called directly: mean = sqrt(a') denoised, std = sqrt(1 - a')."""
    s = type(pipe.scheduler).from_config(pipe.scheduler.config)
    s.set_timesteps(traj.timesteps.numel() + 1)
    t = s.timesteps[j]
    x = traj.states[:, j]
    w = torch.full((x.shape[0],), 8.0 - 1)
    cond = pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim)
    out = pipe.unet(x, t, encoder_hidden_states=traj.embeds, timestep_cond=cond).sample
    denoised = s.step(out, t, x).denoised
    a_prev = s.alphas_cumprod[s.timesteps[j + 1]].double()
    return normal_log_prob(traj.actions[:, j], a_prev.sqrt() * denoised.double(), (1 - a_prev).sqrt())


@pytest.mark.parametrize("step5", [{}, {"clip_sample": True, "clip_sample_range": 0.8}])
def test_lcm_log_probs_off_policy_match_the_scheduler(step5):
    """Sample under one LoRA, score under another: the policy's log-probs equal the scheduler-derived density
    (also with the x0 clip on), and they are truly off-policy (ratios far from 1)."""
    pipe = lcm_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **step5)
    add_lora(pipe.unet, 4, 4)
    set_lora_b(pipe.unet, 1, 0.5)
    policy = make_policy(pipe, 4, 8.0)
    traj = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(3), decode=False)
    set_lora_b(pipe.unet, 2, 0.5)
    with torch.no_grad():
        for j in range(traj.actions.shape[1]):
            mine = policy.log_prob(pipe.unet, traj, j)
            ref = lcm_reference(pipe, traj, j)
            assert torch.allclose(mine.double(), ref, atol=1e-5), (j, mine, ref)
            # another policy: log-ratios 100x the tolerance away from 0
            assert (mine - traj.log_probs[:, j]).abs().min() > 1e-3


def test_ddim_log_probs_off_policy_match_the_scheduler():
    """DDPO's policy: the mean is DDIMScheduler.step with eta=1 and zero variance noise, std its own sigma_t."""
    pipe = sd15_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    add_lora(pipe.unet, 4, 4)
    set_lora_b(pipe.unet, 1, 0.5)
    policy = make_policy(pipe, 5, 5.0)
    traj = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(4), decode=False)
    set_lora_b(pipe.unet, 2, 0.5)
    s = type(pipe.scheduler).from_config(pipe.scheduler.config)
    s.set_timesteps(5)
    with torch.no_grad():
        for j, t in enumerate(s.timesteps):
            x = traj.states[:, j]
            uncond, text = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=traj.embeds).sample.chunk(2)
            out = uncond + 5.0 * (text - uncond)
            mean = s.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
            prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
            std = s._get_variance(t, prev_t).sqrt()
            ref = normal_log_prob(traj.actions[:, j], mean, std)
            mine = policy.log_prob(pipe.unet, traj, j)
            assert torch.allclose(mine.double(), ref, atol=1e-5), (j, mine, ref)
            assert (mine - traj.log_probs[:, j]).abs().min() > 1e-3


# ------------------------------------------------------------------ PPO and Bradley-Terry


def hand_ppo(logp: list[float], old: list[float], adv: list[float], eps: float) -> tuple[float, list[float]]:
    """PPO-clip (Schulman et al. 2017), element by element: loss = -mean min(r A, clip(r) A) and d loss / d logp."""
    n, loss, grad = len(logp), 0.0, []
    for lp, o, a in zip(logp, old, adv):
        r = math.exp(lp - o)
        clipped_r = min(max(r, 1 - eps), 1 + eps)
        loss -= min(r * a, clipped_r * a) / n
        # the unclipped term is the minimum (and carries the gradient) unless r is past the clip in A's direction
        unclipped_active = (a > 0 and r < 1 + eps) or (a < 0 and r > 1 - eps)
        grad.append(-a * r / n if unclipped_active else 0.0)
    return loss, grad


def test_ppo_loss_and_gradient_match_the_clipped_objective():
    ratios = [0.3, 0.7, 0.95, 1.05, 1.4, 3.0]
    old = [-0.5, 0.2, -1.0, 0.4, 0.0, -0.3]
    logp = [o + math.log(r) for o, r in zip(old, ratios)]
    for adv in ([1.5] * 6, [-0.7] * 6, [1.5, -0.7, 2.0, -2.0, -1.0, 0.5]):
        for eps in (0.1, 0.5):
            lp = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
            loss, ratio = ppo_loss(lp, torch.tensor(old, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64),
                                   eps)
            loss.backward()
            want_loss, want_grad = hand_ppo(logp, old, adv, eps)
            assert math.isclose(loss.item(), want_loss, rel_tol=1e-9), (adv, eps)
            assert torch.allclose(lp.grad, torch.tensor(want_grad, dtype=torch.float64)), (adv, eps, lp.grad)
            assert torch.allclose(ratio, torch.tensor(ratios, dtype=torch.float64))
    assert any(g == 0 for g in want_grad) and any(g != 0 for g in want_grad)  # both branches exercised


def test_bradley_terry_loss_is_the_preference_log_likelihood():
    r_a = torch.tensor([[2.0, -1.0, 0.3, 0.0]])
    r_b = torch.tensor([[0.5, 1.0, 0.3, 4.0]])
    y = torch.tensor([1.0, 0.0, 0.5, 1.0])
    got = bt_loss(r_a, r_b, y)
    p_a = [1 / (1 + math.exp(-(a - b))) for a, b in zip(r_a[0].tolist(), r_b[0].tolist())]
    want = [-(yi * math.log(p) + (1 - yi) * math.log(1 - p)) for yi, p in zip(y.tolist(), p_a)]
    assert got.shape == (1, 4) and torch.allclose(got[0], torch.tensor(want), atol=1e-6)
    assert got[0, 0] < math.log(2) and got[0, 3] > math.log(2)  # agreeing with the label is cheap, disagreeing not


def test_linear_bt_fit_is_the_minimum_of_each_models_weighted_mean_loss_plus_l2():
    """`fit_bt` (the linear reward heads' fit, many models in one run) returns for each model the minimiser of its
    own objective: autograd of that objective, written here from the definition, is zero there, and a small step
    either way only raises it."""
    from reward_model.linear import fit_bt

    g = torch.Generator().manual_seed(0)
    d = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = (torch.sigmoid(d @ torch.randn(6, generator=g, dtype=torch.float64)) > 0.5).double()
    y[::5] = 0.5  # ties
    weights = torch.randint(0, 3, (4, 30), generator=g).double()  # bootstrap counts, one row per model
    l2 = torch.tensor([0.01, 0.1, 1.0, 0.03], dtype=torch.float64)
    w = fit_bt(d, y, weights, l2).double().requires_grad_(True)

    def objective(w):  # per model: sum_p c_p * BCE(w . d_p, y_p) / sum_p c_p  +  l2 |w|^2
        p = torch.sigmoid(w @ d.T)
        nll = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
        return (weights * nll).sum(1) / weights.sum(1) + l2 * (w * w).sum(1)

    objective(w).sum().backward()
    assert w.grad.abs().max() < 1e-4, w.grad
    for k in range(4):  # models are independent: perturbing one changes only its own objective, upwards
        step = torch.zeros_like(w)
        step[k] = 1e-2 * torch.randn(6, generator=g, dtype=torch.float64)
        with torch.no_grad():
            assert objective(w + step)[k] > objective(w)[k] and objective(w - step)[k] > objective(w)[k]
    assert w[0].norm() > w[2].norm()  # a stronger penalty, smaller weights


# ------------------------------------------------------------------ the trainer's update


def brightness(images, prompts):
    return np.array([np.asarray(im, np.float32).mean() / 255 for im in images], np.float32)


def tiny_trainer(tmp_path, **kw):
    base = dict(model="tiny", epochs=1, prompts_per_epoch=2, images_per_prompt=4, sample_batch_size=4,
                train_batch_size=4, num_steps=3, eval_every=0, lr=1e-2, lora_rank=4, lora_alpha=4,
                output_dir=str(tmp_path / "run"), train_prompts=4, checkpoint_every=10**6, max_grad_norm=1e9)
    base.update(kw)
    pipe = lcm_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return RLCMTrainer(RLCMConfig(**base), pipe=pipe, reward_fn=brightness)


def capture_steps(trainer) -> list[list[torch.Tensor]]:
    """The gradients each optimiser step sees (after clipping), in order."""
    seen = []
    trainer.optimizer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.detach().clone() for p in trainer.params]))
    return seen


def test_accumulated_gradient_is_the_full_batch_clipped_loss(tmp_path):
    """Minibatches x actions accumulate into one step whose gradient is that of the whole round's loss,
    mean over samples and actions of PPO-clip (ratios far from 1, clip 0.02) plus the KL term, written by hand;
    a gradient left over from before the epoch is dropped."""
    clip, kl_coef = 0.02, 0.5
    tr = tiny_trainer(tmp_path, clip_range=clip, kl_coef=kl_coef, images_per_prompt=2, sample_batch_size=2,
                      train_batch_size=2)
    set_lora_b(tr.pipe.unet, 1, 0.2)
    trajs, _, _ = tr._sample_epoch()
    set_lora_b(tr.pipe.unet, 2, 0.2)  # train another policy than the one sampled: ratios far from 1
    adv = np.array([-2.0, 1.0, -0.5, 1.5])
    traj = Trajectory.cat(trajs)
    a = torch.tensor(adv, dtype=torch.float64)
    total, clipped = 0.0, []
    for j in range(tr.actions):
        mean, std = tr.policy.action_dist(tr.unet, traj, j)
        r = torch.exp(normal_log_prob(traj.actions[:, j], mean, std) - traj.log_probs[:, j].double())
        keep = ((a > 0) & (r < 1 + clip)) | ((a < 0) & (r > 1 - clip))  # where the unclipped term is the min
        ppo = torch.where(keep, -a * r, -a * r.clamp(1 - clip, 1 + clip).detach())
        clipped.append(~keep)
        kl = (0.5 * ((mean.double() - traj.ref_means[:, j].double()) / std.double()) ** 2).mean(dim=(1, 2, 3))
        total = total + (ppo.mean() + kl_coef * kl.mean()) / tr.actions
    total.backward()
    want = [p.grad.clone() for p in tr.params]
    clipped = torch.cat(clipped)
    assert 0 < clipped.sum() < len(clipped), clipped  # some ratios clipped, some not
    for p in tr.params:
        p.grad = torch.full_like(p, 3.0)  # a stale gradient that must not leak into the update
    seen = capture_steps(tr)
    info = tr._train_epoch(trajs, adv)
    assert len(seen) == 1
    got, want = torch.cat([g.flatten() for g in seen[0]]), torch.cat([w.flatten() for w in want])
    assert want.norm() > 0 and (got - want).norm() < 1e-4 * want.norm(), (got - want).norm() / want.norm()
    assert info["clipfrac"] > 0
    assert all(p.grad is None for p in tr.params)  # nothing carried into the next epoch


def test_optimiser_steps_per_epoch_and_equal_shares(tmp_path):
    """4 minibatches x 1 action x 2 inner epochs = 8 backward passes: 2 steps of 4 each, in every epoch."""
    tr = tiny_trainer(tmp_path, optimizer_steps_per_epoch=2, inner_epochs=2, images_per_prompt=2, num_steps=2,
                      sample_batch_size=4, train_batch_size=1)
    assert tr.accum == 4
    seen = capture_steps(tr)
    trajs, rewards, prompts = tr._sample_epoch()
    adv, _ = tr._advantages(rewards, prompts)
    for epoch in range(2):
        info = tr._train_epoch(trajs, adv)
        assert len(seen) == 2 * (epoch + 1) and "grad_norm" in info
    assert all(p.grad is None for p in tr.params)


def test_advantages_are_per_prompt_normalised_then_clipped(tmp_path):
    tr = tiny_trainer(tmp_path, adv_clip_max=0.9, stat_min_count=4)
    prompts = ["a"] * 4 + ["b"] * 4
    rewards = np.array([0.0, 1.0, 2.0, 9.0, 5.0, 5.1, 4.9, 5.0])
    adv, all_rewards = tr._advantages(rewards, prompts)
    raw = PerPromptStatTracker(32, 4).update(prompts, rewards)
    assert np.array_equal(all_rewards, rewards)
    assert np.abs(raw).max() > 0.9  # the clip has something to do
    assert np.allclose(adv, np.clip(raw, -0.9, 0.9)) and np.abs(adv).max() == pytest.approx(0.9)
    assert adv[3] > 0 > adv[0]  # the higher reward gets the positive advantage
