"""The support matrix: the test suite on every supported Python and Django.

The app supports Python 3.12 and 3.13 and Django 5.2 LTS, 6.0 and 6.1 (pyproject.toml). `make
test` runs the whole suite on the reference combination, Python 3.12 with Django 6.1 (the
project's .venv). `make matrix` (``nox -t matrix``) runs the five other combinations, one
session each, in a virtualenv of its own under .nox/ with ``-e .[dev]`` and the pinned Django::

    .venv/bin/nox -t matrix                          # the five sessions `make matrix` runs
    .venv/bin/nox -s "tests(3.13-django5.2)"         # one of them
    .venv/bin/nox -s "tests(3.13-django5.2)" -- -x   # arguments after -- go to pytest
    .venv/bin/nox                                    # all six, the reference one too

A session's virtualenv is kept and reused by the next run (``reuse_venv``): pip then only checks
that everything is installed (a changed pyproject.toml is picked up), so a rerun costs the tests'
time and a few seconds. ``--reuse-venv=never`` builds them anew.

What the matrix leaves out, and why: the files in ``LEFT_OUT`` below. They test the browser,
the channel layers, the servers and the network under load and failure, or a separate install,
with code that is the same whatever the Django version: Django takes part there only by serving
the same views and consumers that the rest of the suite already runs on every combination. All
of them still run in `make test` on the reference combination. Everything else runs on every
combination: the protocol, the consumer, the history and resume (ORM, transactions, SQLite),
authentication (sessions, signing, tokens), the HTTP API (django-ninja), the dashboard's views
and templates, the admin, the management commands, the system checks, migrations, and the
end-to-end tests that start daphne and uvicorn with the session's Django. The matrix runs on
SQLite, and on Redis where it answers (in CI, always); the PostgreSQL run stays in `make test`.

Time, measured on the project's 2-core machine while other test runs shared it: 4 to 5 minutes
a session (pytest 235 to 277 s for 567 tests; creating its virtualenv about 20 s the first time,
reusing it 5 s), 22.5 to 23 minutes for the five; with `make test` (9 minutes) the whole of
.ci/run took 32. The browser, delivery and fault tests would add about 1.5 minutes a session,
and the host-project test an install of its own.

Interpreters: a Python that is not installed skips its sessions on a developer's machine (the
other sessions still tell them something), and fails them in CI (``CI`` set), whose machine has
both: a matrix that skipped 3.13 there would claim support it never tested. Interpreters are
never downloaded (``download_python = "never"``): nox would otherwise fetch a standalone build
from outside the package registries, and test a Python that is not the user's. With pyenv, the
repository's .python-version makes both 3.12 (the default) and 3.13 visible.
"""

import os

import nox

PYTHONS = ("3.12", "3.13")
DJANGOS = ("5.2", "6.0", "6.1")
# What `make test` runs on: the project's .venv (the Makefile's Python 3.12, and the newest
# Django that pyproject.toml allows).
REFERENCE = ("3.12", "6.1")

# Left out of the matrix (they run in `make test`), each with its reason.
LEFT_OUT = {
    "tests/test_dashboard_browser.py": (
        "the dashboard's JavaScript in Chromium; its Django views and templates are tested by "
        "tests/test_dashboard.py, which runs"
    ),
    "tests/test_dashboard_fallback_browser.py": (
        "the same JavaScript in Chromium behind a stand-in proxy that refuses WebSocket upgrades "
        "(Server-Sent Events instead), about 30 s a run"
    ),
    "tests/test_dashboard_run_browser.py": (
        "the same JavaScript in Chromium following one run alone (AutoGPT's "
        "subscribe_graph_execution, or its Server-Sent Events behind the same stand-in proxy), "
        "about 40 s a run"
    ),
    "tests/test_delivery.py": (
        "bursts of thousands of events and connection storms through the channel layers "
        "(channels, channels-redis), about 50 s a run"
    ),
    "tests/test_faults.py": (
        "a stalled client, a Redis restart, 1,000 connections, SIGTERM and half-open sockets "
        "against daphne subprocesses, about 30 s a run"
    ),
    "tests/test_host_project.py": (
        "builds the wheel and installs it in a virtualenv of its own, where pip picks the newest "
        "Django: it would not test the session's Django"
    ),
}

nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


def _combination(python: str, django: str) -> nox.param:
    tags = [] if (python, django) == REFERENCE else ["matrix"]
    return nox.param(python, django, id=f"{python}-django{django}", tags=tags)


@nox.session(reuse_venv=True)
@nox.parametrize(
    ("python", "django"),
    [_combination(python, django) for python in PYTHONS for django in DJANGOS],
)
def tests(session: nox.Session, django: str) -> None:
    """The suite, less LEFT_OUT, on one Python and one Django minor version."""
    # One resolve: the pin is checked against every other requirement at once.
    session.install("-e", ".[dev]", f"Django~={django}.0")
    ignored = [f"--ignore={path}" for path in LEFT_OUT]
    session.run("python", "-m", "pytest", *ignored, *session.posargs)
