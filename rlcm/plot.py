"""Reward-curve PNGs from a trainer's log rows."""

from __future__ import annotations

from pathlib import Path


def reward_curve(rows: list[dict], path: str | Path, title: str = "RLCM") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    tr = [r for r in rows if "reward_mean" in r]
    ev = [r for r in rows if "eval_reward_mean" in r]
    if tr:
        ax.plot([r["epoch"] for r in tr], [r["reward_mean"] for r in tr], label="train reward", alpha=0.6)
    if ev:
        ax.plot([r["epoch"] for r in ev], [r["eval_reward_mean"] for r in ev], "o-", label="held-out reward")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
