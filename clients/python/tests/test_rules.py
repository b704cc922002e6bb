"""The local decision rules (pure functions, no sidecar)."""
from trainguard import rules

NAN = float("nan")


def test_a_gradscaler_overflow_is_the_scalers_only_with_finite_loss_and_activations():
    # Prevents: with gradient accumulation the loss passed is the last micro-batch's; a NaN activation
    # in an earlier one (finite loss, NaN grads) was filed as the scaler's overflow: decided locally,
    # no incident, never counted towards a rollback.
    assert rules.is_scaler_overflow(True, 1.0, NAN, [1.0, 2.0])
    assert not rules.is_scaler_overflow(True, 1.0, NAN, [NAN, 2.0])
    assert not rules.is_scaler_overflow(True, NAN, NAN)
    assert not rules.is_scaler_overflow(False, 1.0, NAN)
    assert not rules.is_scaler_overflow(True, 1.0, 3.0)
