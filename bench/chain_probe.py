"""One chained round outside the live loop: from an earlier round's served LoRA, with a fixed reward model, with
and without a learning-rate warm-up; prompt fidelity and reward on the round's held-out prompts after every epoch.

    python bench/chain_probe.py DATA_DIR INIT_ADAPTER RM_VERSION WARMUP EPOCHS OUT [LR]

DATA_DIR is a studio's data directory (its rated pairs scale the alignment guard, as in a round), INIT_ADAPTER a
round's served-adapter.safetensors, RM_VERSION one of DATA_DIR/reward_models. The round is the studio's recipe
(`studio.rounds.round_config`, seed 2) evaluated every epoch on 96 held-out prompts; prints one JSON line per
epoch. A probe for choosing `round_lr_warmup`, not a studio benchmark.
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import reward_model  # noqa: E402
from rlcm.rewards import with_alignment_guard  # noqa: E402
from rlcm.trainer import RLCMTrainer  # noqa: E402
from studio.rounds import round_config  # noqa: E402
from studio.runtime import Studio  # noqa: E402
from studio.settings import StudioSettings  # noqa: E402

run, init, rm_ver, warm, epochs, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
lr = float(sys.argv[7]) if len(sys.argv) > 7 else 3e-3
s = StudioSettings(data_dir=Path(run), snapshot_every_s=0)
st = Studio(s, start_workers=False)
rm = reward_model.load(Path(run) / "reward_models" / rm_ver)
scorer = with_alignment_guard(lambda im, p: rm.score(im, list(p)).cpu().numpy().astype(np.float32), rm.clip,
                              s.alignment_guard, pairs=st.rounds._recent_pairs())
cfg = round_config(s, Path(out), 2, init)
cfg = replace(cfg, epochs=epochs, eval_every=1, eval_prompts=96, lr_warmup_epochs=warm, lr=lr, checkpoint_every=1000)
tr = RLCMTrainer(cfg, reward_fn=scorer)
tr.train()
for r in tr.history:
    print(json.dumps({k: round(r[k], 4) for k in ("epoch", "eval_fidelity", "eval_reward_mean", "lr") if k in r}))
