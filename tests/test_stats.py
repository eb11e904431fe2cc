"""smoothcert.core.stats against scipy, statsmodels and closed forms (docs/statistics.md §2–§7)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.proportion import proportion_confint

from smoothcert.core import stats as S

NS = [1, 2, 3, 7, 10, 100, 1000]
ALPHAS = [0.001, 0.01, 0.05, 0.2]


def _grid():
    for n in NS:
        ks = sorted({0, 1, n // 3, n // 2, n - 1, n} & set(range(n + 1)))
        for k in ks:
            for a in ALPHAS:
                yield k, n, a


GRID = list(_grid())


def test_module_does_not_import_torch():
    code = "import sys, smoothcert.core.stats, smoothcert; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("k", "n", "alpha"), GRID)
def test_clopper_pearson_matches_statsmodels(k, n, alpha):
    # one-sided bound at 1 - alpha is the two-sided 'beta' interval at 1 - 2 alpha
    lo, hi = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    assert S.clopper_pearson_lower(k, n, alpha) == pytest.approx(lo, abs=1e-12)
    assert S.clopper_pearson_upper(k, n, alpha) == pytest.approx(hi, abs=1e-12)


def test_clopper_pearson_vectorised_equals_scalar():
    k, n, a = (np.array(c) for c in zip(*GRID, strict=True))
    lo = S.clopper_pearson_lower(k, n, a)
    assert isinstance(lo, np.ndarray) and lo.shape == k.shape
    assert lo == pytest.approx([S.clopper_pearson_lower(*g) for g in GRID], abs=0)
    assert isinstance(S.clopper_pearson_lower(3, 10, 0.05), float)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_clopper_pearson_closed_forms(n, alpha):
    assert S.clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert S.clopper_pearson_lower(0, n, alpha) == 0.0
    assert S.clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-10)
    assert S.clopper_pearson_upper(n, n, alpha) == 1.0


def test_cohen_radius_closed_forms():
    assert S.cohen_radius(st.norm.cdf(1.0)) == pytest.approx(1.0, rel=1e-12)
    assert S.cohen_radius(st.norm.cdf(1.5), sigma=0.5) == pytest.approx(0.75, rel=1e-12)
    # (pA, pB) form: sigma/2 (Phi^-1(pA) - Phi^-1(pB)); reduces to sigma Phi^-1(pA) at pB = 1 - pA
    pa, pb = st.norm.cdf(2.0), st.norm.cdf(-1.0)
    assert S.cohen_radius(pa, pb, sigma=2.0) == pytest.approx(3.0, rel=1e-12)
    assert S.cohen_radius(0.9, 0.1, sigma=0.7) == pytest.approx(S.cohen_radius(0.9, sigma=0.7), rel=1e-12)
    # no certificate where the condition fails
    assert S.cohen_radius(0.5) == 0.0
    assert S.cohen_radius(0.3) == 0.0
    assert S.cohen_radius(0.4, 0.45) == 0.0
    r = S.cohen_radius(np.array([0.2, 0.5, st.norm.cdf(0.3)]), sigma=np.array([1.0, 1.0, 2.0]))
    assert r == pytest.approx([0.0, 0.0, 0.6], abs=1e-12)


@pytest.mark.parametrize(("n", "expected"), [(100, 1.50), (1_000, 2.46), (10_000, 3.20), (100_000, 3.81)])
def test_max_radius_table(n, expected):
    # paper Sec. 3.2.2, Fig. 5 right; docs/statistics.md §4: R_max(n, 0.001, sigma) = sigma * Phi^-1(0.001^(1/n))
    assert round(S.max_radius(n, 0.001), 2) == expected
    assert S.max_radius(n, 0.001, sigma=0.5) == pytest.approx(0.5 * S.max_radius(n, 0.001), rel=1e-12)
    assert S.max_radius(n, 0.001) == pytest.approx(S.cohen_radius(S.clopper_pearson_lower(n, n, 0.001)), rel=1e-12)


def test_max_radius_zero_when_certify_cannot_certify():
    assert S.max_radius(9, 0.001) == 0.0
    assert S.max_radius(10, 0.001) > 0.0


def test_predict_pvalue_matches_binomtest():
    for total in [1, 2, 3, 10, 11, 57, 200]:
        for a in range(total + 1):
            want = st.binomtest(a, total, 0.5).pvalue
            assert S.predict_pvalue(a, total - a) == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert S.predict_pvalue(0, 0) == 1.0
    a = np.arange(0, 51)
    assert S.predict_pvalue(a, 50 - a) == pytest.approx([st.binomtest(int(i), 50, 0.5).pvalue for i in a], rel=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 0.2, 0.1, 0.05, 0.01, 0.001, 1e-5, 0.25, 0.125])
def test_min_predict_n_is_the_threshold(alpha):
    n = S.min_predict_n(alpha)
    assert S.predict_pvalue(n, 0) <= alpha
    assert n == 1 or S.predict_pvalue(n - 1, 0) > alpha


def test_min_predict_n_at_reference_alpha():
    assert S.min_predict_n(0.001) == 11  # docs/statistics.md §5: abstains for n <= 10


@pytest.mark.parametrize("alpha", [0.5, 0.2, 0.1, 0.05, 0.01, 0.001, 1e-5, 0.25, 0.125])
def test_min_certify_n_is_the_threshold(alpha):
    n = S.min_certify_n(alpha)
    assert S.clopper_pearson_lower(n, n, alpha) > 0.5
    assert n == 1 or S.clopper_pearson_lower(n - 1, n - 1, alpha) <= 0.5


# paper App. I, Fig. 5 left; docs/statistics.md §6: sigma = 1, dense-grid values to 4 decimals
BOUND_TABLE = [
    (0.55, 0.1257, 0.1003, 0.0273),
    (0.70, 0.5244, 0.4191, 0.1350),
    (0.90, 1.2816, 1.0319, 0.3903),
    (0.99, 2.3263, 1.9080, 0.5549),
    (0.999, 3.0902, 2.5757, 0.5689),
]


@pytest.mark.parametrize(("pa", "cohen", "li", "lecuyer"), BOUND_TABLE)
def test_bound_table(pa, cohen, li, lecuyer):
    assert S.cohen_radius(pa) == pytest.approx(cohen, abs=5e-4)
    assert S.li_radius(pa) == pytest.approx(li, abs=5e-4)
    assert S.lecuyer_radius(pa) == pytest.approx(lecuyer, abs=5e-4)


def test_bound_ordering_on_dense_grid():
    pa = np.linspace(0.5005, 0.9995, 999)
    c, li, le = S.cohen_radius(pa), S.li_radius(pa), S.lecuyer_radius(pa)
    assert np.all(c > li) and np.all(li > le) and np.all(le > 0)
    assert np.all(np.diff(li) > 0) and np.all(np.diff(le) >= 0)
    # sigma scales every bound linearly; below pA = 1/2 there is no certificate
    assert S.li_radius(0.8, sigma=0.25) == pytest.approx(0.25 * S.li_radius(0.8), rel=1e-9)
    assert S.lecuyer_radius(0.8, sigma=0.25) == pytest.approx(0.25 * S.lecuyer_radius(0.8), rel=1e-9)
    assert S.li_radius(0.4) == 0.0 and S.lecuyer_radius(0.5) == 0.0


def test_certified_accuracy_lower_bound_formula():
    m, a, g = 500, 0.001, 0.001
    L = math.log(1 / g)
    want = 0.6 - a - (L / 3 + math.sqrt(L * L / 9 + 2 * m * a * (1 - a) * L)) / m
    assert S.certified_accuracy_lower_bound(0.6, m, a, g) == pytest.approx(want, rel=1e-12)
    assert S.certified_accuracy_lower_bound(0.0, m, a, g) == 0.0
    out = S.certified_accuracy_lower_bound(np.array([0.2, 0.6]), m, a, g)
    assert out[1] == pytest.approx(want) and out[0] < 0.2


@pytest.mark.parametrize(
    ("call", "exc", "fragment"),
    [
        (lambda: S.clopper_pearson_lower(3, 10, 0.0), ValueError, "alpha must be in (0, 1), got 0.0"),
        (lambda: S.clopper_pearson_lower(3, 10, 1.5), ValueError, "alpha must be in (0, 1), got 1.5"),
        (lambda: S.clopper_pearson_lower(11, 10, 0.1), ValueError, "k must be <= n"),
        (lambda: S.clopper_pearson_lower(-1, 10, 0.1), ValueError, "k must be an integer >= 0, got -1.0"),
        (lambda: S.clopper_pearson_lower(1, 0, 0.1), ValueError, "n must be an integer >= 1, got 0.0"),
        (lambda: S.clopper_pearson_upper(2.5, 10, 0.1), ValueError, "k must be an integer >= 0, got 2.5"),
        (lambda: S.cohen_radius(1.2), ValueError, "p_lower must be in [0, 1], got 1.2"),
        (lambda: S.cohen_radius(0.9, sigma=-0.5), ValueError, "sigma must be > 0 and finite, got -0.5"),
        (lambda: S.cohen_radius(0.9, sigma=float("nan")), ValueError, "sigma must be > 0 and finite, got nan"),
        (lambda: S.cohen_radius("high"), TypeError, "p_lower must be a number"),
        (lambda: S.max_radius(0, 0.01), ValueError, "n must be an integer >= 1"),
        (lambda: S.min_predict_n(0), ValueError, "alpha must be in (0, 1), got 0.0"),
        (lambda: S.predict_pvalue(-3, 4), ValueError, "count_a must be an integer >= 0, got -3.0"),
        (lambda: S.certified_accuracy_lower_bound(0.5, 10, 0.01, 1.0), ValueError, "gamma must be in (0, 1)"),
        (lambda: S.clopper_pearson_lower(np.array([1, 20]), 10, 0.1), ValueError, "k must be <= n"),
    ],
)
def test_bad_arguments_name_argument_and_value(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


# every public function, called the way the overloads distinguish: Python numbers, then arrays
_TYPED_CALLS = {
    "clopper_pearson_lower": ("3, 10, 0.05", "np.array([3, 4]), 10, 0.05"),
    "clopper_pearson_upper": ("3, 10, 0.05", "np.array([3, 4]), 10, 0.05"),
    "cohen_radius": ("0.9, sigma=0.5", "np.array([0.9, 0.6]), sigma=0.5"),
    "lecuyer_radius": ("0.9, 0.05, sigma=0.5", "np.array([0.9, 0.6]), sigma=0.5"),
    "li_radius": ("0.9, sigma=0.5", "np.array([0.9, 0.6]), sigma=0.5"),
    "max_radius": ("100, 0.001, sigma=0.5", "np.array([100, 1000]), 0.001"),
    "predict_pvalue": ("7, 3", "np.array([7, 9]), np.array([3, 1])"),
    "certified_accuracy_lower_bound": ("0.8, 500, 0.001, 0.05", "np.array([0.8, 0.5]), 500, 0.001, 0.05"),
}


def test_return_types_are_what_the_annotations_say():
    """At run time: Python float for scalar arguments (0-d arrays included), float64 arrays otherwise."""
    for name, (scalar, array) in _TYPED_CALLS.items():
        f = getattr(S, name)
        env = {"np": np, "f": f}
        assert type(eval(f"f({scalar})", env)) is float, name
        assert type(eval(f"f(np.asarray({scalar.split(',')[0]}), {scalar.partition(',')[2]})", env)) is float, name
        out = eval(f"f({array})", env)
        assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (2,), name


@pytest.mark.slow
def test_mypy_sees_the_return_types(tmp_path):
    """The annotations carry the return types to callers: ``float`` for Python numbers, and
    ``float | NDArray[float64]`` otherwise. Control: a wrong ``assert_type`` is reported, so a
    return type of ``Any`` (which ``assert_type(x, float)`` rejects too) could not pass."""
    api = pytest.importorskip("mypy.api")
    lines = [
        "import numpy as np",
        "from numpy.typing import NDArray",
        "from typing_extensions import assert_type",
        "from smoothcert import stats as S",
    ]
    for name, (scalar, array) in _TYPED_CALLS.items():
        lines.append(f"assert_type(S.{name}({scalar}), float)")
        lines.append(f"assert_type(S.{name}({array}), float | NDArray[np.float64])")
    good = tmp_path / "good.py"
    good.write_text("\n".join(lines) + "\n")
    bad = tmp_path / "bad.py"
    bad.write_text("\n".join([*lines[:4], "assert_type(S.cohen_radius(0.9), int)"]) + "\n")
    args = ["--python-version", "3.10", "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"]
    out, err, status = api.run([*args, str(good)])
    assert status == 0, out + err
    out, _, status = api.run([*args, str(bad)])
    assert status == 1 and 'Expression is of type "float", not "int"' in out, out


# --------------------------------------------------------------------------- one home for every rule


def test_the_gaussian_radius_has_one_implementation(monkeypatch):
    """stats.cohen_radius and stats.max_radius compute through radii.gaussian_radius (issue 17).

    A planted change of the radii formula (x 2) shows in both stats functions: they hold no copy.
    """
    from smoothcert.core import radii as R

    before = (S.cohen_radius(0.9, sigma=0.5), S.cohen_radius(0.9, 0.05, sigma=0.5), S.max_radius(100, 0.001))
    real = R.gaussian_radius
    monkeypatch.setattr(R, "gaussian_radius", lambda *a, **kw: 2 * real(*a, **kw))
    after = (S.cohen_radius(0.9, sigma=0.5), S.cohen_radius(0.9, 0.05, sigma=0.5), S.max_radius(100, 0.001))
    assert after == pytest.approx(tuple(2 * b for b in before), rel=1e-15)
    assert S.cohen_radius(0.9, 0.95) == 0.0  # pA <= pB: no certificate


def test_the_runner_up_is_named_as_the_caller_knows_it():
    with pytest.raises(ValueError, match=r"p_upper_runner_up must be in \[0, 1\], got 1.5"):
        S.cohen_radius(0.9, 1.5)


_VALIDATORS = [
    # (scalar check, array check, a good value, a bad value, the message fragment for the bad one)
    ("check_probability", "probability_array", 0.3, 1.5, "x must be in [0, 1], got 1.5"),
    ("check_open_unit", "open_unit_array", 0.3, 0.0, "x must be in (0, 1), got 0.0"),
    ("check_positive", "positive_array", 0.3, -2.0, "x must be > 0 and finite, got -2.0"),
    ("check_nonnegative", "nonnegative_array", 0.0, -1.0, "x must be "),
]


@pytest.mark.parametrize(("scalar", "array", "good", "bad", "fragment"), _VALIDATORS)
def test_scalar_and_array_validators_share_rules_and_messages(scalar, array, good, bad, fragment):
    from smoothcert.core import checks as C
    from smoothcert.core.errors import ConfigError

    assert getattr(C, scalar)("x", good) == good
    assert getattr(C, array)("x", np.array([good, good])).tolist() == [good, good]
    for check in (lambda v: getattr(C, scalar)("x", v), lambda v: getattr(C, array)("x", v)):
        for value in (bad, math.nan):
            with pytest.raises(ConfigError) as info:
                check(value)
            assert isinstance(info.value, ValueError) and str(info.value).startswith("x must be")
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            check(bad)
    with pytest.raises(ConfigError) as info:  # arrays show the offending elements only
        getattr(C, array)("x", np.array([good, bad, good]))
    assert str(info.value).endswith(f"got {np.array2string(np.array([bad]))}")
    with pytest.raises(TypeError, match="x must be a real number"):
        getattr(C, scalar)("x", "0.5")
    with pytest.raises(TypeError, match="x must be a number or an array of numbers"):
        getattr(C, array)("x", "high")


def test_integer_and_count_validators():
    from smoothcert.core import checks as C

    assert C.check_int("n", 3, 1) == 3 and C.int_array("n", [3.0, 4], 1).tolist() == [3, 4]
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        C.check_int("n", 0)
    with pytest.raises(TypeError, match=r"n must be an int, got float 2\.5"):
        C.check_int("n", 2.5)
    with pytest.raises(TypeError, match="n must be an int, got bool True"):
        C.check_int("n", True)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got \[2\.5\]"):
        C.int_array("n", [3, 2.5], 1)
    k, n = C.counts_array([0, 5], 5)
    assert k.tolist() == [0, 5] and n.tolist() == [5, 5]
    with pytest.raises(ValueError, match=r"k must be <= n, got k=\[6\] with n=\[5\]"):
        C.counts_array([0, 6], 5)


def test_the_numeric_modules_keep_no_validator_of_their_own():
    """stats, radii and sequential import their range checks from core.checks (no private copies)."""
    import inspect

    from smoothcert.core import radii, sequential

    for module in (S, radii, sequential):
        source = inspect.getsource(module)
        for name in (
            "_check_positive",
            "_check_probability",
            "_check_open_unit",
            "_check_int",
            "_check_counts",
            "_float_array",
            "_probability",
            "_nonneg",
            "_fmt",
            "_is_scalar",
            "_ret",
        ):
            assert f"def {name}(" not in source, (module.__name__, name)
