"""An example rater loadable by path: `python -m feedback simulate --rater feedback/example_rater.py:prefer`.

Copy this file to write your own taste: return "a", "b" or "tie" for two PIL images and their prompt.
"""

import numpy as np


def prefer(image_a, image_b, prompt):
    """Likes bright images (mean luminance), with a small dead zone for ties."""
    def luma(im):
        return float(np.asarray(im.convert("L"), dtype=np.float32).mean() / 255.0)

    la, lb = luma(image_a), luma(image_b)
    if abs(la - lb) < 0.01:
        return "tie"
    return "a" if la > lb else "b"
