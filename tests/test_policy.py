"""Our samplers reproduce the diffusers pipelines, and recomputed log-probs equal the sampled ones."""

import pytest
import torch

from rlcm.arch import lcm_pipeline, random_lcm_lora, sd15_pipeline
from rlcm.pipelines import load_pipeline
from rlcm.policy import DDIMPolicy, LCMPolicy, anchor_penalty, make_policy

PROMPTS = ["a red circle on a blue background", "a large green star"]


def policy_images(policy, seed):
    tr = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(seed), decode=False)
    vae = policy.pipe.vae
    img = vae.decode(tr.latents / vae.config.scaling_factor).sample
    return tr, policy.pipe.image_processor.postprocess(img, output_type="pt")


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_lcm_policy_matches_pipeline(tiny_lcm, steps):
    ref = tiny_lcm(PROMPTS, num_inference_steps=steps, guidance_scale=8.0,
                   generator=torch.Generator().manual_seed(5), output_type="pt").images
    tr, mine = policy_images(make_policy(tiny_lcm, steps, 8.0), 5)
    assert torch.equal(ref, mine)
    assert tr.log_probs.shape == (2, steps - 1)  # the last LCM step adds no noise: not an action


def test_log_probs_recompute_exactly(tiny_lcm):
    policy = LCMPolicy(tiny_lcm, 4, 8.0)
    tr = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(1))
    assert tr.log_probs.dtype == torch.float32
    with torch.no_grad():
        for j in range(tr.actions.shape[1]):
            ratio = torch.exp(policy.log_prob(tiny_lcm.unet, tr, j) - tr.log_probs[:, j])
            assert torch.equal(ratio, torch.ones(2))
            one = policy.log_prob(tiny_lcm.unet, tr, j, torch.tensor([1]))
            assert torch.allclose(one, tr.log_probs[1:, j], atol=1e-6)


def test_ddim_policy_matches_pipeline_with_eta_one():
    pipe = sd15_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPTS, num_inference_steps=10, guidance_scale=5.0, eta=1.0,
               generator=torch.Generator().manual_seed(2), output_type="pt").images
    policy = make_policy(pipe, 10, 5.0)
    assert isinstance(policy, DDIMPolicy) and policy.uses_cfg
    tr, mine = policy_images(policy, 2)
    assert torch.equal(ref, mine)
    assert tr.log_probs.shape == (2, 10)
    with torch.no_grad():
        assert torch.equal(policy.log_prob(pipe.unet, tr, 9), tr.log_probs[:, 9])


def test_sd15_with_lcm_lora_variant(tmp_path):
    """SD-1.5 + an LCM-LoRA fused in, sampled with LCMScheduler and CFG (no w-embedding)."""
    base = sd15_pipeline("tiny")
    base.save_pretrained(tmp_path / "sd15")
    random_lcm_lora(sd15_pipeline("tiny"), tmp_path / "lcm_lora")
    pipe = load_pipeline(str(tmp_path / "sd15"), lcm_lora=str(tmp_path / "lcm_lora"), device="cpu")
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())  # fused, adapter removed
    assert not torch.equal(pipe.unet.state_dict()["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
                           base.unet.state_dict()["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=1.5, generator=torch.Generator().manual_seed(3),
               output_type="pt").images
    policy = make_policy(pipe, 4, 1.5)
    assert isinstance(policy, LCMPolicy) and policy.uses_cfg and not policy.uses_w_embedding
    _, mine = policy_images(policy, 3)
    assert torch.equal(ref, mine)


def test_one_step_policy_is_refused(tiny_lcm):
    with pytest.raises(ValueError, match="at least 2"):
        make_policy(tiny_lcm, 1, 8.0)


def test_shipped_toy_lcm_matches_pipeline(toy_lcm_path):
    pipe = load_pipeline(str(toy_lcm_path), device="cpu")
    ref = pipe(PROMPTS, num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    _, mine = policy_images(make_policy(pipe, 4, 8.0), 0)
    assert ref.shape == (2, 3, 64, 64) and torch.equal(ref, mine)


def test_x0_anchor_is_the_clean_latent_change_at_every_step(tiny_lcm):
    """kl_units="x0": the penalty is half the mean squared change of the predicted clean latent (denoised),
    whereas the action KL of the same change shrinks with the step's noise level (first steps barely count)."""
    policy = LCMPolicy(tiny_lcm, 4, 8.0)
    tr = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(1), decode=False)
    embeds = policy._batch_embeds(tr.embeds, slice(None))
    action_kls = []
    for j in range(tr.actions.shape[1]):
        mean, std, denoised = policy._step(tiny_lcm.unet, tr.states[:, j], j, embeds)
        other = denoised + 0.1 * torch.randn_like(denoised)  # a model predicting a different clean latent
        a_prev = 1 - std.float() ** 2
        other_mean = a_prev.sqrt() * other
        x0 = anchor_penalty(other_mean, mean, std, "x0")
        assert torch.allclose(x0, 0.5 * (other - denoised).pow(2).mean(dim=(1, 2, 3)), rtol=1e-4)
        action_kls.append(anchor_penalty(other_mean, mean, std, "action").mean().item())
    assert action_kls[0] < action_kls[-1] / 10  # same 0.1 change: the layout step is barely anchored in KL
    with pytest.raises(ValueError, match="valid: action, x0"):
        anchor_penalty(mean, mean, std, "pixels")


@pytest.mark.parametrize("step5", [{"clip_sample": True, "clip_sample_range": 0.8},
                                   {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}])
def test_x0_clip_and_threshold_follow_the_scheduler(step5):
    """With the scheduler's clip / dynamic threshold on x0 turned on, LCM and DDIM samples still equal the pipelines'
    (and differ from the unclipped ones, so the option really acted), and log-probs still recompute exactly."""
    cases = ((lcm_pipeline("tiny"), 3, 8.0, {}), (sd15_pipeline("tiny"), 3, 5.0, {"eta": 1.0}))
    for pipe, steps, guidance, kw in cases:
        pipe.set_progress_bar_config(disable=True)
        plain = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                     generator=torch.Generator().manual_seed(5), **kw).images
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **step5)
        ref = pipe(PROMPTS, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                   generator=torch.Generator().manual_seed(5), **kw).images
        policy = make_policy(pipe, steps, guidance)
        tr, mine = policy_images(policy, 5)
        assert torch.equal(ref, mine) and (ref - plain).abs().max() > 0.01
        with torch.no_grad():
            for j in range(tr.actions.shape[1]):
                assert torch.equal(policy.log_prob(pipe.unet, tr, j), tr.log_probs[:, j])


def test_trajectories_join_in_order(tiny_lcm):
    """`Trajectory.cat` keeps each sample's rows together, also the [uncond; cond] halves of CFG embeddings."""
    from rlcm.policy import Trajectory

    for pipe, guidance in ((tiny_lcm, 8.0), (sd15_pipeline("tiny"), 5.0)):
        policy = make_policy(pipe, 2, guidance)
        parts = [policy.sample([p], generator=torch.Generator().manual_seed(i), decode=False)
                 for i, p in enumerate(PROMPTS)]
        both = Trajectory.cat(parts)
        assert both.prompts == PROMPTS and both.uses_cfg == policy.uses_cfg
        with torch.no_grad():
            for k, part in enumerate(parts):
                for j in range(both.actions.shape[1]):
                    assert torch.equal(policy.log_prob(pipe.unet, both, j, torch.tensor([k])), part.log_probs[:, j])
    with pytest.raises(ValueError, match="no trajectories"):
        Trajectory.cat([])
