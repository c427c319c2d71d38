"""The optimisation loop every stage shares: resume, schedule, gradient sync, progress, checkpoints.

A stage says what it trains, how to draw a batch, its loss and its validation; :class:`Trainer` does
the rest the same way for all of them, on one CPU or on several GPUs under torchrun (see
:mod:`.distributed`).
"""

from __future__ import annotations

import os
import time

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .distributed import runtime
from .precision import autocast, resolved
from .progress import Progress
from .schedule import lr_factor, set_lr


class Trainer:
    """Resume (or start) one stage.

    Args:
        name: the stage's name, for the progress bar and log.
        work_dir: the stage's checkpoint folder.
        trained: the modules the stage optimises and checkpoints (name → module).
        steps: total iterations; a resumed run goes on to this count.
        lr: peak learning rate (AdamW; warm-up then cosine decay, see :mod:`.schedule`).
        params: the parameters to optimise (default: all of ``trained``), or parameter groups (dicts with
            ``params`` and an optional ``lr_scale``, a multiplier of the schedule's learning rate).
        warmup: warm-up iterations.
        clip: gradient-norm clipping (None: none).
        save_every: iterations between validations and checkpoints.
    """

    def __init__(self, name: str, work_dir: str, trained: dict, steps: int, lr: float, params=None,
                 warmup: int = 50, clip: float | None = None, save_every: int = 200):
        self.rt = runtime()
        self.name, self.work_dir, self.trained = name, work_dir, trained
        self.steps, self.lr, self.warmup, self.clip, self.save_every = steps, lr, warmup, clip, save_every
        for module in trained.values():
            module.to(self.rt.device)
        groups = list(params) if params is not None else [p for m in trained.values() for p in m.parameters()]
        # Parameter groups (dicts with "params" and an optional "lr_scale") or plain parameters.
        self.params = [p for g in groups for p in g["params"]] if groups and isinstance(groups[0], dict) else groups
        # What this stage optimises learns, whatever an earlier stage of the same run froze.
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
        meta = load_checkpoint(work_dir, trained, self.opt)
        self.start = meta["step"] if meta else 0
        # CPU seconds spent on this stage by earlier runs, so that a resumed stage's curve goes on.
        self.cpu_before = float((meta or {}).get("extra", {}).get("cpu_s", 0.0))
        # The process's CPU time so far belongs to earlier stages of the same `rdeic train` run.
        self.cpu_start = time.process_time()
        self.progress = Progress(steps, self.start, name, enabled=self.rt.is_main)
        self.precision = resolved(self.rt.device)

    @property
    def device(self) -> torch.device:
        return self.rt.device

    def seed(self, base: int) -> int:
        """A seed for this process's random stream; it moves on when a run resumes."""
        return base + self.start + 1_000_003 * self.rt.rank

    def log(self, message: str) -> None:
        self.progress.log(message)

    def run(self, loss_fn, draw, validate) -> None:
        """Optimise until ``steps``.

        Args:
            loss_fn: ``loss_fn(*batch) -> (loss, logs)`` with logs a dict of floats.
            draw: ``draw() -> batch`` (a tuple of arguments for ``loss_fn``, on :attr:`device`).
            validate: ``validate() -> str``, run without gradients in eval mode, on rank 0 only.
        """
        step_fn = self.rt.wrap(self.trained, loss_fn)
        t0 = time.time()
        if self.rt.is_main:
            self.log(f"{self.name}: training steps in {self.precision}")
        # Where the stage starts from, to compare against: step 0, or the step a continued model's stage
        # starts at (``rdeic train --from M --steps stage=N``); a resumed run has that line already.
        if self.rt.is_main and self.start < self.steps and not self._validated(self.start):
            self._validate(validate, self.start, t0)
        for step in range(self.start, self.steps):
            set_lr(self.opt, self.lr * lr_factor(step, self.steps, warmup=self.warmup))
            self._mode(train=True)
            with autocast(self.device, self.precision):  # see .precision; backward follows its casts
                loss, logs = step_fn(*draw())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            self.progress.update(step + 1, loss=loss.item(), **logs)
            if ((step + 1) % self.save_every == 0 or step + 1 == self.steps) and self.rt.is_main:
                self._validate(validate, step + 1, t0)
                save_checkpoint(self.work_dir, self.trained, self.opt, step + 1, extra={"cpu_s": self.cpu_seconds()})
        self._mode(train=False)
        self.rt.barrier()

    def cpu_seconds(self) -> float:
        """CPU time (all threads of this process) this stage has cost so far, earlier runs included."""
        return self.cpu_before + time.process_time() - self.cpu_start

    def _validated(self, step: int) -> bool:
        path = os.path.join(self.work_dir, "valid.log")
        if not os.path.exists(path):
            return False
        with open(path) as f:
            return any(line.startswith(f"step {step} valid ") for line in f)

    def _validate(self, validate, step: int, t0: float) -> None:
        self._mode(train=False)
        with torch.no_grad():
            message = validate()
        # CPU time is what the learning curves are plotted against (on a shared machine, wall time lies).
        line = f"step {step} valid {message} ({time.time() - t0:.0f} s, {self.cpu_seconds() / 60:.1f} CPU-min)"
        self.log(line)
        # Kept beside the checkpoint, so the curve of a stage survives restarts (tools/learning_curves.py).
        os.makedirs(self.work_dir, exist_ok=True)
        with open(os.path.join(self.work_dir, "valid.log"), "a") as f:
            f.write(line + "\n")

    def _mode(self, train: bool) -> None:
        for module in self.trained.values():
            module.train(train)
