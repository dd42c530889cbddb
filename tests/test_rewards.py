"""Reward shaping formulas against small hand-computed cases (docs/method.md#flow-rewards)."""

import math
import statistics

import pytest
import torch

from flowfield.path import score_weight
from flowfield.rewards import (
    RewardOptions,
    filter_tokens,
    group_advantages,
    normalize,
    outcome_advantages,
    reward_to_go,
    token_rewards,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_score_weight():
    assert score_weight(torch.tensor(0.8)).item() == pytest.approx(4.0)
    assert score_weight(torch.tensor(0.5)).item() == pytest.approx(1.0)


def test_minmax_unilateral_and_bilateral():
    e = t(2.0, 4.0, 3.0, 6.0)  # min 2, max 6
    assert normalize(e, "unilateral").tolist() == pytest.approx([0.0, 0.5, 0.25, 1.0])
    assert normalize(e, "bilateral").tolist() == pytest.approx([-1.0, 0.0, -0.5, 1.0])


def test_constant_or_single_token_sequences_normalise_to_zero():
    assert normalize(t(3.0, 3.0), "bilateral").tolist() == [0.0, 0.0]
    assert normalize(t(5.0), "unilateral").tolist() == [0.0]
    assert normalize(t(), "bilateral").numel() == 0


def test_threshold_zeroes_small_magnitudes():
    s = t(-0.9, -0.6, -0.2, 0.0, 0.6, 0.61, 1.0)
    assert filter_tokens(s, 0.6, 0, "bilateral").tolist() == [-0.9, 0, 0, 0, 0, 0.61, 1.0]


def test_top_k_unilateral_keeps_largest():
    s = t(0.7, 0.9, 0.8, 1.0, 0.65)
    assert filter_tokens(s, 0.6, 3, "unilateral").tolist() == [0, 0.9, 0.8, 1.0, 0]


def test_top_k_bilateral_keeps_top_half_and_bottom_half():
    s = t(1.0, -1.0, 0.9, -0.9, 0.8, -0.8, 0.7)
    # K = 5: the 3 highest (1.0, 0.9, 0.8) and the 2 lowest (-1.0, -0.9)
    assert filter_tokens(s, 0.6, 5, "bilateral").tolist() == [1.0, -1.0, 0.9, -0.9, 0.8, 0, 0]
    # K = 4: 2 and 2
    assert filter_tokens(s, 0.6, 4, "bilateral").tolist() == [1.0, -1.0, 0.9, -0.9, 0, 0, 0]


def test_top_k_not_applied_when_few_survive():
    s = t(1.0, -1.0, 0.1)
    assert filter_tokens(s, 0.6, 15, "bilateral").tolist() == [1.0, -1.0, 0.0]


def test_token_rewards_end_to_end_with_beta():
    # e: min 0, max 10 -> s_bilateral = 2(e/10 - 0.5) = [-1, -0.6, 0.2, 0.8, 1]
    e = t(0.0, 2.0, 6.0, 9.0, 10.0)
    r = token_rewards(e, RewardOptions("bilateral", beta=0.01, threshold=0.6, top_k=15))
    assert r.tolist() == pytest.approx([0.01, 0.0, 0.0, -0.008, -0.01])
    r = token_rewards(e, RewardOptions("unilateral", beta=0.5, threshold=0.6, top_k=1))
    # s_unilateral = [0, .2, .6, .9, 1]; |s| > .6 -> .9, 1; top 1 -> 1
    assert r.tolist() == pytest.approx([0, 0, 0, 0, -0.5])


def test_reward_to_go():
    assert reward_to_go(t(1.0, 2.0, 3.0)).tolist() == [6.0, 5.0, 3.0]


def test_outcome_advantages_use_sample_std():
    # R = [1, 0, 1, 0]: mean .5, sample std sqrt(1/3) = 0.57735
    a = outcome_advantages([1.0, 0.0, 1.0, 0.0])
    assert a == pytest.approx([0.866025, -0.866025, 0.866025, -0.866025], rel=1e-5)
    assert outcome_advantages([1.0, 1.0]) == pytest.approx([0.0, 0.0])  # all correct
    assert outcome_advantages([1.0]) == [0.0]  # no baseline


@pytest.mark.parametrize("rewards", [
    [1e300, 0.0],  # the variance (1e600) overflows a float
    [1e308, 1.5e308],  # so does the sum of the mean
    [-1.7e308, 1.7e308, 0.0],
    [1e200, 3e200, -2e200, 5e200],
    [1e-300, 0.0],  # and tiny ones: the 1e-9 dominates, as in the plain formula
])
def test_outcome_advantages_of_huge_rewards_follow_the_formula(rewards):
    # statistics works in exact fractions: no overflow
    mean, std = statistics.mean(rewards), statistics.stdev(rewards)
    want = [(x - mean) / (std + 1e-9) for x in rewards]
    got = outcome_advantages(rewards)
    assert all(math.isfinite(a) for a in got), got
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_outcome_advantages_scaling_changes_nothing_for_ordinary_rewards():
    # the rescaling is by a power of two: bit for bit the plain formula where that is finite
    for rewards in ([1.0, 0.0, 1.0, 0.0], [2.5, -3.0, 7.0], [1e6, 3.0, -12.5], [0.3, 0.2]):
        r = torch.tensor(rewards, dtype=torch.float64)
        assert outcome_advantages(rewards) == ((r - r.mean()) / (r.std() + 1e-9)).tolist()


def test_group_advantages_add_reward_to_go_and_group_by_id():
    r = [t(0.01, 0.0, -0.01), t(0.0, -0.02), t(0.005)]
    adv = group_advantages(r, [1.0, 0.0, 7.0], ["g", "g", "solo"])
    a0 = 0.5 / (0.7071067811865476 + 1e-9)  # (1 - .5) / sample std([1, 0])
    assert adv[0].tolist() == pytest.approx([a0 + 0.0, a0 - 0.01, a0 - 0.01])
    assert adv[1].tolist() == pytest.approx([-a0 - 0.02, -a0 - 0.02])
    assert adv[2].tolist() == pytest.approx([0.005])  # a group of one: reward-to-go only


def test_reward_options_validate():
    with pytest.raises(ValueError):
        RewardOptions(normalization="sideways")
    with pytest.raises(ValueError):
        RewardOptions(top_k=-1)
    with pytest.raises(ValueError):
        RewardOptions(threshold=float("nan"))


# "expert" normalisation: standardised against held-out expert statistics, sign kept


def _cal(mean=0.0, std=1.0, ts=(0.8,)):
    from flowfield.rewards import Calibration

    return Calibration(log_mean=mean, log_std=std, timesteps=ts)


def test_expert_normalisation_is_a_clipped_log_z_score():
    import math

    cal = _cal(mean=math.log(2.0), std=0.5)
    # log e = log 2 + z * 0.5: z = 0, 1.5, 3, 6, -1.5
    e = torch.exp(torch.log(t(2.0, 2.0, 2.0, 2.0, 2.0)) + 0.5 * t(0.0, 1.5, 3.0, 6.0, -1.5))
    s = normalize(e, "expert", cal)
    assert s.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, -0.5])


def test_expert_normalisation_keeps_the_sequence_level_sign():
    """Per-sequence min-max gives a spiky high-deviation rollout a higher return than a clean
    one; expert normalisation gives it a lower one (the issue with min-max,
    docs/method.md#normalisation)."""
    import math

    cal = _cal(mean=math.log(1.0), std=0.5)
    clean = t(1.0, 1.1, 0.9, 1.0, 1.2, 0.95, 1.0, 1.3)  # all within expert range
    spiky = t(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 10.0)  # one far-off token (an error)
    opts = RewardOptions(normalization="expert", beta=0.01, threshold=0.3, top_k=0)
    r_clean, r_spiky = token_rewards(clean, opts, cal), token_rewards(spiky, opts, cal)
    assert r_clean.sum().item() == 0.0  # nothing stands out from expert data
    # the scale: a token 3 sigma above the expert mean gets the full penalty -beta
    assert r_spiky.tolist() == pytest.approx([0.0] * 7 + [-0.01])
    bil = RewardOptions(normalization="bilateral", beta=0.01, threshold=0.3, top_k=0)
    assert token_rewards(spiky, bil).sum() > token_rewards(clean, bil).sum()  # the inversion


def test_expert_top_k_keeps_the_largest_magnitudes_and_needs_a_calibration():
    import math

    cal = _cal(mean=0.0, std=1.0)
    e = torch.exp(t(3.0, -3.0, 2.5, 0.1, 2.0) * 3.0 / 3.0 * 1.0)
    s = filter_tokens(normalize(e, "expert", cal), 0.5, 2, "expert")
    assert (s != 0).nonzero().flatten().tolist() == [0, 1]  # |s| = 1, 1 beat 0.83, 0.67
    with pytest.raises(ValueError, match="calibration"):
        normalize(t(1.0, 2.0), "expert")
    with pytest.raises(ValueError, match="calibrated at timesteps"):
        cal.check((0.5,))
    cal.check((0.8,))
    assert math.isclose(_cal(std=2.0).to_dict()["log_std"], 2.0)


def test_calibration_from_expert_deviations_round_trips():
    from flowfield.rewards import Calibration

    e = torch.exp(torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 0.7 + 1.0)
    cal = Calibration.from_deviations(e, (0.8,))
    assert cal.log_mean == pytest.approx(1.0, abs=0.1)
    assert cal.log_std == pytest.approx(0.7, abs=0.05)
    assert Calibration.from_dict(cal.to_dict()) == cal
    # expert tokens themselves normalise to about zero on average
    assert normalize(e, "expert", cal).mean().item() == pytest.approx(0.0, abs=0.02)
    with pytest.raises(ValueError):
        Calibration(log_mean=0.0, log_std=0.0)


def test_defaults_are_the_table_and_the_default_normalisation_falls_back():
    from flowfield import defaults
    from flowfield.rewards import NORMALIZATIONS, resolve_normalization

    o = RewardOptions()
    assert (o.normalization, o.beta, o.threshold, o.top_k) == (
        None, defaults.BETA, defaults.THRESHOLD, defaults.TOP_K)  # fmt: skip
    assert NORMALIZATIONS == ("bilateral", "unilateral", "expert")
    assert defaults.NORMALIZATION == "expert"
    cal = _cal(ts=defaults.TIMESTEPS)
    # unset: expert where the flow is calibrated at these timesteps, else bilateral
    assert resolve_normalization(None, cal) == "expert"
    assert resolve_normalization(None, cal, defaults.TIMESTEPS) == "expert"
    assert resolve_normalization(None, cal, (0.5,)) == "bilateral"
    assert resolve_normalization(None, None, defaults.TIMESTEPS) == "bilateral"
    # asked for: kept as it is (an explicit expert is refused elsewhere, never replaced)
    assert resolve_normalization("expert", None) == "expert"
    assert resolve_normalization("unilateral", cal) == "unilateral"
    assert resolve_normalization(None, None, default="unilateral") == "unilateral"
    # token_rewards with the default options: expert with a calibration, bilateral without
    e = t(1.0, 1.0, 1.0, 20.0)
    opts = RewardOptions(threshold=0.3, top_k=0)
    expert = RewardOptions("expert", threshold=0.3, top_k=0)
    bilateral = RewardOptions("bilateral", threshold=0.3, top_k=0)
    assert token_rewards(e, opts, cal).tolist() == token_rewards(e, expert, cal).tolist()
    assert token_rewards(e, opts).tolist() == token_rewards(e, bilateral).tolist()
