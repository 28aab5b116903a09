"""DP parameters in the ring (secagg.dp.mechanism) and the round configuration's checks."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pytest

from secagg import encoding
from secagg.dp.accounting import PrivacyLedger, spent
from secagg.dp.mechanism import DpConfigError, RoundDp, bound_sq, clip_and_encode, noise_sigma2
from secagg.rounds import RoundConfig

PARAMS = encoding.EncodingParams(scale=4.0, coord_bound=8.0, norm_bound=8.0)


def test_units_are_exact_and_noise_rounds_up():
    assert bound_sq(1.0, 1.0) == 1 << 32
    assert bound_sq(0.1, 3.0) == math.floor((Fraction(0.1) * 3 * 65536) ** 2)
    assert noise_sigma2(0.5, 1.0) == 32768**2
    s = math.ceil(Fraction(0.1) * 65536)  # 6553.6 -> 6554: more noise, never less
    assert noise_sigma2(0.1, 1.0) == s * s
    with pytest.raises(DpConfigError, match="2\\^62"):
        bound_sq(1e5, 1e3)


def test_clip_and_encode_passes_the_exact_check_at_every_size():
    rng = np.random.default_rng(3)
    clip = 1.5
    limit = bound_sq(clip, PARAMS.scale)
    for d in (1, 7, 1000, 100_000):
        for norm in (0.1, clip, 1.9):  # inside, at and above C (all inside norm_bound/scale)
            x = rng.normal(size=d)
            x *= norm / np.linalg.norm(x)
            enc = clip_and_encode(x, PARAMS, clip)
            assert int(np.dot(enc, enc)) <= limit
            if norm < clip * 0.99:  # not clipped: just the encoding
                np.testing.assert_array_equal(enc, encoding.encode(x, PARAMS))
    with pytest.raises(DpConfigError, match="rounding margin"):
        clip_and_encode(
            np.ones(10**6),
            encoding.EncodingParams(scale=1.0, coord_bound=8.0, norm_bound=8.0),
            1e-3,
        )


def test_round_dp_from_config_and_rho():
    assert RoundDp.from_config(0.0, 0.0, 1.0) is None
    with pytest.raises(DpConfigError, match="both"):
        RoundDp.from_config(1.0, 0.0, 1.0)
    dp = RoundDp.from_config(2.0, 1.0, 1.0)
    assert dp is not None
    assert dp.rho("mean", 10, 0, None) == pytest.approx(4 / 8)
    assert dp.rho("multi-krum", 10, 2, None) == pytest.approx((2 * 6) ** 2 / 8)


def cfg(**over: object) -> RoundConfig:
    base: dict[str, object] = dict(
        round_id="r1",
        n_expected=10,
        f=1,
        rule="mean",
        dim=100,
        scale=1.0,
        coord_bound=2.0,
        norm_bound=2.0,
        deadline_unix_ms=int((time.time() + 60) * 1000),
        dp_sigma=0.5,
        dp_clip=1.0,
        dp_delta=1e-5,
    )
    base.update(over)
    return RoundConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"dp_clip": 0.0}, "both dp_sigma and dp_clip"),
        ({"dp_sigma": -1.0}, "dp_sigma must be >= 0"),
        ({"skip_validation": True}, "need input validation"),
        ({"dp_clip": 3.0}, "raise norm_bound"),
        ({"dp_delta": 0.0}, "dp_delta in \\(0, 1\\)"),
        ({"dp_sigma": 0.0, "dp_clip": 0.0}, "DP is off"),
    ],
)
def test_round_config_refuses_bad_dp_settings(over, message):
    with pytest.raises(ValueError, match=message):
        cfg(**over).validate()


def test_round_config_round_trips_the_dp_fields():
    c = cfg()
    c.validate()
    back = RoundConfig.from_proto(c.to_proto())
    assert back == c and back.dp_params() == c.dp_params()
    off = cfg(dp_sigma=0.0, dp_clip=0.0, dp_delta=0.0)
    off.validate()
    assert off.dp_params() is None


def test_ledger_adds_rho_and_reports_epsilon():
    led = PrivacyLedger()
    assert led.report_fields(0.0, 1e-5)["dp_epsilon_spent"] == 0.0
    led.add(0.01)
    led.add(0.03)
    f = led.report_fields(0.03, 1e-5)
    assert f["dp_rounds"] == 2 and f["dp_rho_spent"] == pytest.approx(0.04)
    assert f["dp_epsilon_spent"] == spent(0.04, 2, 1e-5)
