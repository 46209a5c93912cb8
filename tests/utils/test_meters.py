import pytest

from real20m.utils.meters import AverageMeter, SmoothedValue


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


def test_smoothed_value_window_and_global_average():
    value = SmoothedValue(window_size=3, fmt=".1f")
    for number in (10.0, 1.0, 2.0, 6.0):
        value.update(number)
    assert value.median == 2.0  # window holds 1, 2, 6
    assert value.avg == pytest.approx(3.0)
    assert value.global_avg == pytest.approx(4.75)
    assert value.latest == 6.0
    assert str(value) == "2.0 (4.8)"
