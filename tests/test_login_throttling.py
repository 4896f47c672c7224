"""Password guessing is throttled on the dashboard's login page and the admin's (django-axes,
as the demo project configures it): after AXES_FAILURE_LIMIT failures a user is locked out
from that address, even with the right password, with a clear message, for a while. Another
user, or the same user from another address, is not affected.

Django's test client against the real URLconf, middleware and authentication backends.
"""

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

ATTACKER = "203.0.113.66"
ELSEWHERE = "198.51.100.7"
LOGINS = {
    "dashboard": ("/login/", "/"),
    "admin": ("/admin/login/", "/admin/"),
}


@pytest.fixture(autouse=True)
def people(settings: Any) -> dict[str, Any]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast
    users = get_user_model().objects
    return {
        # Staff, so that the admin's login lets them in too.
        "alice": users.create_user("alice", password="alice-password-123", is_staff=True),
        "bob": users.create_user("bob", password="bob-password-123", is_staff=True),
    }


def log_in(where: str, username: str, password: str, address: str = ATTACKER) -> Any:
    path, next_url = LOGINS[where]
    client = Client(REMOTE_ADDR=address)
    return client.post(path, {"username": username, "password": password, "next": next_url})


def fail(where: str, times: int, username: str = "alice", address: str = ATTACKER) -> None:
    for attempt in range(times):
        response = log_in(where, username, f"wrong-guess-{attempt}", address)
        # The form again ("did not match"); the failure that reaches the limit is answered
        # with the lockout already.
        assert response.status_code in (200, 429), attempt


def assert_locked_out(response: Any) -> None:
    assert response.status_code == 429
    text = response.content.decode()
    assert "Too many failed login attempts" in text
    assert "15 minutes" in text
    assert "_auth_user_id" not in response.client.session


def test_the_demo_project_locks_out_after_five_failures_for_fifteen_minutes() -> None:
    cool_off: timedelta = django_settings.AXES_COOLOFF_TIME
    assert django_settings.AXES_FAILURE_LIMIT == 5
    assert cool_off == timedelta(minutes=15)


@pytest.mark.parametrize("where", LOGINS)
def test_failures_below_the_limit_do_not_lock_out(where: str) -> None:
    fail(where, django_settings.AXES_FAILURE_LIMIT - 1)

    response = log_in(where, "alice", "alice-password-123")

    assert response.status_code == 302


@pytest.mark.parametrize("where", LOGINS)
def test_after_the_limit_the_right_password_is_refused_with_the_lockout_message(
    where: str,
) -> None:
    fail(where, django_settings.AXES_FAILURE_LIMIT)

    response = log_in(where, "alice", "alice-password-123")

    assert_locked_out(response)


def test_failures_on_either_login_page_count_together() -> None:
    fail("dashboard", 3)
    fail("admin", django_settings.AXES_FAILURE_LIMIT - 3)

    assert_locked_out(log_in("dashboard", "alice", "alice-password-123"))
    assert_locked_out(log_in("admin", "alice", "alice-password-123"))


@pytest.mark.parametrize("where", LOGINS)
def test_another_user_from_the_same_address_is_not_affected(where: str) -> None:
    fail(where, django_settings.AXES_FAILURE_LIMIT)

    response = log_in(where, "bob", "bob-password-123")

    assert response.status_code == 302


@pytest.mark.parametrize("where", LOGINS)
def test_the_same_user_from_another_address_is_not_affected(where: str) -> None:
    fail(where, django_settings.AXES_FAILURE_LIMIT)

    response = log_in(where, "alice", "alice-password-123", address=ELSEWHERE)

    assert response.status_code == 302


def test_the_lockout_ends_after_the_cool_off(settings: Any) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(milliseconds=1)
    fail("dashboard", django_settings.AXES_FAILURE_LIMIT)

    response = log_in("dashboard", "alice", "alice-password-123")

    assert response.status_code == 302


def test_a_successful_login_resets_the_count() -> None:
    fail("dashboard", django_settings.AXES_FAILURE_LIMIT - 1)
    assert log_in("dashboard", "alice", "alice-password-123").status_code == 302

    fail("dashboard", django_settings.AXES_FAILURE_LIMIT - 1)

    assert log_in("dashboard", "alice", "alice-password-123").status_code == 302
