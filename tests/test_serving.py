"""The served generator: LoRA hot swap under the generation lock, back to base, and again."""

import threading

import numpy as np

from rlcm.arch import lcm_pipeline, random_lcm_lora
from studio.serving import ServedGenerator
from studio.settings import StudioSettings


def test_activate_hotswap_and_back_to_base(tmp_path):
    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    loras = [random_lcm_lora(lcm_pipeline("tiny"), tmp_path / f"lora{i}", rank=4, seed=i) for i in (1, 2)]
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=3, data_dir=tmp_path / "d"))
    shot = lambda: np.asarray(gen.generate(["a red circle"], [7])[0][0])  # noqa: E731
    base = shot()
    gen.activate("round-1", loras[0])
    one = shot()
    gen.activate("round-2", loras[1])  # hot swap in place
    two = shot()
    gen.activate("base", None)
    assert np.array_equal(shot(), base)
    gen.activate("round-1", loras[0])
    assert np.array_equal(shot(), one) and gen.version == "round-1"
    assert not np.array_equal(one, base) and not np.array_equal(two, one)


def test_swaps_never_land_mid_generation(tmp_path):
    lcm_pipeline("tiny").save_pretrained(tmp_path / "model")
    loras = [random_lcm_lora(lcm_pipeline("tiny"), tmp_path / f"lora{i}", rank=4, seed=i) for i in (1, 2)]
    gen = ServedGenerator(StudioSettings(model=str(tmp_path / "model"), steps=3, data_dir=tmp_path / "d"))
    expected = {}
    for v, lora in (("round-1", loras[0]), ("round-2", loras[1])):
        gen.activate(v, lora)
        expected[v] = np.asarray(gen.generate(["a blue star"], [3])[0][0])
    errors, seen = [], []

    def swapper():
        for i in range(10):
            v = ("round-1", "round-2")[i % 2]
            gen.activate(v, loras[i % 2])

    def sampler():
        for _ in range(10):
            images, version = gen.generate(["a blue star"], [3])
            seen.append(version)
            if not np.array_equal(np.asarray(images[0]), expected[version]):
                errors.append(version)

    threads = [threading.Thread(target=swapper), threading.Thread(target=sampler)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(seen) == 10  # every image is exactly the version it claims
