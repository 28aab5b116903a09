"""secagg.dp.accounting against Google's dp_accounting (the same mechanism, same numbers).

The discrete Gaussian's Rényi curve is the continuous Gaussian's (CKS20), so our ε
for T rounds at noise multiplier z must equal dp_accounting's RdpAccountant on
``SelfComposedDpEvent(GaussianDpEvent(z), T)``.
"""

from __future__ import annotations

import math

import pytest

from secagg.dp import accounting
from secagg.dp.accounting import PlanError, epsilon, noise_multiplier_for, plan, sensitivity

dp_accounting = pytest.importorskip(
    "dp_accounting", reason="dp-accounting is in the dp and dev extras (requirements/dev.txt)"
)
from dp_accounting import rdp  # noqa: E402


def reference_epsilon(z: float, rounds: int, delta: float) -> float:
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds))
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(
    ("z", "rounds", "delta"),
    [(0.5, 1, 1e-5), (1.1, 100, 1e-5), (4.0, 1000, 1e-6), (20.0, 50, 1e-8), (0.8, 3, 1e-3)],
)
def test_epsilon_equals_dp_accountings_rdp_accountant(z, rounds, delta):
    ours = epsilon(accounting.zcdp_rho(1.0, z), rounds, delta)
    assert ours == pytest.approx(reference_epsilon(z, rounds, delta), rel=1e-12)


def test_the_order_grid_is_dp_accountings_default():
    assert accounting.ORDERS == tuple(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)


@pytest.mark.parametrize(("eps", "rounds"), [(1.0, 100), (2.0, 10), (8.0, 1000), (0.5, 1)])
def test_calibration_meets_the_target_and_is_tight(eps, rounds):
    delta = 1e-5
    z = noise_multiplier_for(eps, delta, rounds)
    assert reference_epsilon(z, rounds, delta) <= eps
    assert reference_epsilon(z * (1 - 1e-6), rounds, delta) > eps * (1 - 1e-4)


def test_plan_spends_validation_delta_and_scales_with_sensitivity():
    p = plan(2.0, 1e-5, 100, clip=1.0, rule="mean", n=20)
    z = noise_multiplier_for(2.0, 1e-5 - 100 * 1e-9, 100)
    assert p.noise_multiplier == z
    assert p.sigma == pytest.approx(2.0 * z)  # Δ = 2C for the mean's sum
    assert p.aggregate_std == pytest.approx(math.sqrt(2) * 2.0 * z / 20)
    assert p.achieved_epsilon <= 2.0
    mk = plan(2.0, 1e-5, 100, clip=1.0, rule="multi-krum", n=20, f=3)
    assert mk.sensitivity.divisor == 15 and mk.sigma == pytest.approx(15 * p.sigma)
    # the released mean's sensitivity is 2C for any convex combination
    assert mk.sensitivity.mean_l2 == pytest.approx(2.0)
    with pytest.raises(PlanError, match="raise δ"):
        plan(1.0, 1e-7, 1000, clip=1.0, rule="krum")
    with pytest.raises(PlanError, match="--n"):
        plan(1.0, 1e-5, 10, clip=1.0, rule="bulyan")


def test_sensitivities_per_rule():
    assert sensitivity("krum", 3.0).sum_l2 == 6.0
    assert sensitivity("mean", 3.0, n=10).mean_l2 == pytest.approx(0.6)
    b = sensitivity("bulyan", 1.0, n=11, f=2)  # θ = 7, β = 3
    assert b.divisor == 3 and b.sum_l2 == pytest.approx(2 * math.sqrt(21))
    assert b.mean_l2 > 2.0  # coordinate-wise selection is not a convex combination


def test_spent_composes_rounds_with_different_rho():
    rhos = [0.01, 0.02, 0.005]
    got = accounting.spent(sum(rhos), 3, 1e-5)
    assert got == pytest.approx(epsilon(sum(rhos) / 3, 3, 1e-5 - 3e-9), rel=1e-12)
    assert accounting.spent(0.0, 0, 1e-5) == 0.0


def test_cli_plan_prints_sigma_and_refuses_with_a_hint(capsys):
    from secagg import cli

    rc = cli.main(
        "dp plan --epsilon 4 --delta 1e-5 --rounds 50 --clip 2 --rule mean --n 10".split()
    )
    out = capsys.readouterr().out
    assert rc == 0
    want = plan(4.0, 1e-5, 50, clip=2.0, rule="mean", n=10)
    assert (
        f"dp_sigma (each server's discrete Gaussian std on the opened sum) = {want.sigma:.6g}"
        in out
    )
    rc = cli.main("dp plan --epsilon 4 --delta 1e-5 --rounds 50 --clip 2 --rule bulyan".split())
    assert rc == 2 and "pass --n" in capsys.readouterr().err
