"""Training progress: a tqdm bar with the running losses, and a plain log file for runs in the background."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int, name: str, log_every: int = 20, enabled: bool = True):
        from tqdm import tqdm

        self.enabled = enabled  # False on every process but rank 0 of a distributed run
        self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, file=sys.stderr,
                        disable=not (enabled and sys.stderr.isatty()))
        self.name = name
        self.log_every = log_every
        self.t0 = time.time()
        self.start = start
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, step: int, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.bar.update(1)
        if step % self.log_every == 0 and self.enabled:
            means = {k: v / self.count for k, v in self.sums.items()}
            self.sums, self.count = {}, 0
            if not self.bar.disable:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                return
            rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
            text = " ".join(f"{k}={v:.4g}" for k, v in means.items())
            print(f"[{self.name}] step {step} {text} ({rate:.2f} it/s)", flush=True)

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        self.bar.write(f"[{self.name}] {message}", file=sys.stderr) if not self.bar.disable else print(
            f"[{self.name}] {message}", flush=True)
