"""A tenant's loss formula is checked in a limited child process, never on the control service's
event loop: hostile formulas are refused with a 422 naming the field, a check that runs too long
is killed, and other tenants' requests keep succeeding meanwhile (issue 17, item 2)."""

import threading
import time

import httpx
import pytest

from tests.platform.conftest import TENANT_KEYS, serving

KEY_A, KEY_B = list(TENANT_KEYS)
HEADERS_A = {"Authorization": f"Bearer {KEY_A}"}
HEADERS_B = {"Authorization": f"Bearer {KEY_B}"}
SPEC = {"task": {"size": "small"}, "betas": [0.1, 1.0]}


@pytest.fixture
def service(settings, redis_client):
    with serving(settings) as url:
        yield url


@pytest.fixture
def impatient_service(settings, redis_client):
    with serving(settings.model_copy(update={"formula_timeout_s": 0.001})) as url:
        yield url


def test_a_formula_of_ones_own_is_checked_and_accepted(service) -> None:
    response = httpx.post(service + "/jobs", json={**SPEC, "losses": ["exp(-x) + 0.1*x^2"]}, headers=HEADERS_A,
                          timeout=60)  # fmt: skip
    assert response.status_code == 201, response.text
    assert [run["id"] for run in response.json()["runs"]] == ["r00-f_exp_x_0_1_x_2-b0.1", "r01-f_exp_x_0_1_x_2-b1"]


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("exp(exp(exp(exp(exp(exp(-x))))))", "not twice differentiable at x = 0"),
        ("-x + 0*(((((3^64)^64)^64)^64)^64)", "is too large"),
        ("-x + log(-1)", "not a real number"),
        ("sqrt(1-x) - x", "not real-valued"),
        ("-x + abs(sin(x))", "kink at x = 0"),
    ],
)
def test_hostile_formulas_are_422_naming_the_field(service, formula: str, message: str) -> None:
    started = time.monotonic()
    response = httpx.post(service + "/jobs", json={**SPEC, "losses": ["logistic", formula]}, headers=HEADERS_A,
                          timeout=60)  # fmt: skip
    assert response.status_code == 422, response.text
    (detail,) = response.json()["details"]
    assert detail["field"] == "losses.1" and message in detail["message"]
    assert time.monotonic() - started < 30  # the first one also starts the forkserver


def test_a_check_past_its_time_is_killed_and_the_service_keeps_answering(impatient_service) -> None:
    """Formula checks are cut at the limit (here 1 ms), and while several run, another tenant's
    reads and the health check all succeed."""
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal answered
        with httpx.Client(base_url=impatient_service, timeout=5) as client:
            while not stop.is_set():
                for path, headers in (("/healthz", {}), ("/jobs", HEADERS_B)):
                    try:
                        status = client.get(path, headers=headers).status_code
                        answered += 1
                        if status != 200:
                            failures.append(f"{path}: {status}")
                    except httpx.HTTPError as err:
                        failures.append(f"{path}: {err!r}")

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with httpx.Client(base_url=impatient_service, headers=HEADERS_A, timeout=60) as client:
            for _ in range(6):
                response = client.post("/jobs", json={**SPEC, "losses": ["exp(-x) + 0.1*x^2"]})
                assert response.status_code == 422, response.text
                assert "took longer than 0.001 s" in response.json()["details"][0]["message"]
    finally:
        stop.set()
        poller.join()
    assert not failures and answered > 10


def test_ipo_unit_betas_are_converted_in_the_child_too(service) -> None:
    """Registry names alone are checked in the request without torch; betas in IPO-equivalent
    units need each loss's Taylor ratio (sympy), so that spec goes to the child like a formula."""
    from gpo_services.control.validation import needs_symbolic_work

    body = {**SPEC, "losses": ["logistic", "square"], "training": {"beta_units": "ipo"}}
    assert needs_symbolic_work(body) and not needs_symbolic_work({**SPEC, "losses": ["logistic"]})
    response = httpx.post(service + "/jobs", json=body, headers=HEADERS_A, timeout=60)
    assert response.status_code == 201, response.text
