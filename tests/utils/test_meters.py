import pytest

from real20m.utils.meters import AverageMeter


def test_average_meter_weights_by_count():
    meter = AverageMeter("loss", fmt=".2f")
    assert meter.avg == 0.0
    meter.update(2.0, n=3)
    meter.update(4.0, n=1)
    assert meter.avg == pytest.approx(2.5) and meter.count == 4
    assert str(meter) == "loss 4.00 (2.50)"
    meter.reset()
    assert meter.count == 0
    unnamed = AverageMeter()
    unnamed.update(1.0)
    assert str(unnamed) == "1.0000 (1.0000)"

