"""The embedded toy models load offline and generate deterministically; the toy CLIP embeds and ranks captions."""

import numpy as np
import torch
from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

from rlcm.__main__ import main as cli
from rlcm.toy import world


def test_toy_lcm_loads_offline_and_is_deterministic(toy_lcm_path):
    pipe = LatentConsistencyModelPipeline.from_pretrained(toy_lcm_path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.time_cond_proj_dim is not None and type(pipe.scheduler).__name__ == "LCMScheduler"
    run = lambda seed: pipe("a large red circle on a blue background", num_inference_steps=4,  # noqa: E731
                            generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_toy_teacher_loads_offline(toy_teacher_path):
    pipe = StableDiffusionPipeline.from_pretrained(toy_teacher_path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    img = pipe("a green star", num_inference_steps=5, generator=torch.Generator().manual_seed(0),
               output_type="np").images[0]
    assert img.shape == (64, 64, 3)


def test_toy_clip_embeds_and_prefers_the_true_caption(toy_clip_path):
    from rlcm.clip import load_clip

    clip = load_clip(toy_clip_path)
    sc = world.sample_scene(5, "heldout", two_object_prob=0.0)
    img = world.render(sc)
    true = world.caption(sc, drop=False)
    o = sc.objects[0]
    wrong_bg = next(c for c in world.COLORS if c not in (o.color, sc.bg_color))
    false = true.replace(f"{sc.bg_color} background", f"{wrong_bg} background")
    emb = clip.embed_images([img])
    assert emb.shape[0] == 1 and torch.allclose(emb.norm(dim=-1), torch.ones(1), atol=1e-5)
    s = clip.score([img, img], [true, false])
    assert s[0] > s[1]


def test_sample_cli_same_seed_same_image(toy_lcm_path, tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        cli(["sample", "--model", str(toy_lcm_path), "--prompt", "a small yellow star on a plain purple background",
             "--steps", "4", "--seed", "0", "--out", str(out)])
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
