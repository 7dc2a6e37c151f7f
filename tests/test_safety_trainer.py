"""Crash-safe rounds: leftover checkpoint directories, a resumed run keeps its config, and an unduplicated log."""

from __future__ import annotations

import json
import shutil
import threading

import torch

from rlcm.arch import lcm_pipeline
from rlcm.trainer import RLCMTrainer, resume_config

from .conftest import brightness, rlcm_config


def config(tmp_path, **kw):
    return rlcm_config(tmp_path, dict(epochs=2, prompts_per_epoch=1, images_per_prompt=2, sample_batch_size=2,
                                      train_batch_size=2, lora_rank=2, lora_alpha=2, train_prompts=2), **kw)


def trainer(cfg, stop_at: int | None = None):
    pipe = lcm_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    stop = threading.Event()

    def on_event(e):  # a crash after epoch `stop_at` was logged (and, with checkpoint_every=1, checkpointed)
        if e["type"] == "epoch" and e["epoch"] == stop_at:
            stop.set()

    return RLCMTrainer(cfg, pipe=pipe, reward_fn=brightness, callbacks=[on_event]), stop


def lora(tr):
    return {n: p.detach().clone() for n, p in tr.pipe.unet.named_parameters() if "lora" in n}


def logged_epochs(tmp_path):
    return [json.loads(line)["epoch"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]


def test_a_kill_between_the_renames_resumes_from_the_previous_checkpoint(tmp_path):
    tr, _ = trainer(config(tmp_path, epochs=1))
    tr.train()
    done = lora(tr)
    run = tmp_path / "run"
    (run / "checkpoint").rename(run / "checkpoint.old")  # killed after the first rename ...
    (run / "checkpoint.tmp").mkdir()  # ... with a new checkpoint half written
    (run / "checkpoint.tmp" / "adapter.safetensors").write_bytes(b"half")
    tr2, _ = trainer(config(tmp_path, epochs=1))
    assert tr2.resume() and tr2.epoch == 1
    assert all(torch.equal(done[n], p) for n, p in lora(tr2).items())
    assert not (run / "checkpoint.old").exists() and not (run / "checkpoint.tmp").exists()


def test_a_resumed_run_keeps_its_config_and_an_unduplicated_log(tmp_path):
    cfg = config(tmp_path, epochs=4, lr=3e-3, checkpoint_every=2)
    tr, stop = trainer(cfg, stop_at=3)
    tr.train(stop=stop)  # "killed" after epoch 3 was logged; the last checkpoint is epoch 2
    assert tr.epoch == 3 and logged_epochs(tmp_path) == [1, 2, 3]
    run = tmp_path / "run"
    for leftover in ("checkpoint.old", "checkpoint.tmp"):  # a kill during an earlier swap left these
        (run / leftover).mkdir()
        (run / leftover / "trainer_state.pt").write_bytes(b"stale")
    # the restarted studio builds its config from today's settings (say, a lost edit: 1 epoch, another lr)
    today = config(tmp_path, epochs=1, lr=1e-2, checkpoint_every=2, device="cpu")
    again = resume_config(today)
    assert (again.epochs, again.lr, again.checkpoint_every) == (4, 3e-3, 2)
    assert again.device == "cpu" and again.output_dir == today.output_dir  # where it runs is today's
    tr2, _ = trainer(again)
    hist = tr2.train()  # checkpoints at epoch 4 over the leftovers (Errno 39 before)
    assert tr2.epoch == 4 and [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert logged_epochs(tmp_path) == [1, 2, 3, 4]  # epoch 3 ran twice, is logged once
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


def test_resume_config_without_a_checkpoint_is_the_callers(tmp_path):
    cfg = config(tmp_path, epochs=7)
    assert resume_config(cfg) is cfg
    (tmp_path / "run" / "checkpoint.old").mkdir(parents=True)  # only junk: still a fresh run
    assert resume_config(cfg) is cfg and not (tmp_path / "run" / "checkpoint.old").exists()
    shutil.rmtree(tmp_path / "run")
