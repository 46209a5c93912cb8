"""Running averages for training logs."""


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

