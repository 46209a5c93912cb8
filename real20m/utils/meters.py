"""Running averages for training logs."""
from collections import deque


class AverageMeter:
    """Count-weighted mean of everything seen."""

    def __init__(self, name: str = "", fmt: str = ".4f"):
        self.name = name
        self.fmt = fmt
        self.reset()

    def reset(self) -> None:
        self.value = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.value = float(value)
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def __str__(self) -> str:
        return f"{self.name} {self.value:{self.fmt}} ({self.avg:{self.fmt}})".lstrip()


class SmoothedValue:
    """Median/mean over a sliding window plus the global mean: smooth but still responsive logs."""

    def __init__(self, window_size: int = 20, fmt: str = ".4f"):
        self.window = deque(maxlen=window_size)
        self.fmt = fmt
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(float(value))
        self.total += float(value) * n
        self.count += n

    @property
    def median(self) -> float:
        ordered = sorted(self.window)
        if not ordered:
            return 0.0
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    @property
    def avg(self) -> float:
        return sum(self.window) / len(self.window) if self.window else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def latest(self) -> float:
        return self.window[-1] if self.window else 0.0

    def __str__(self) -> str:
        return f"{self.median:{self.fmt}} ({self.global_avg:{self.fmt}})"
