import faulthandler
import sys

import pytest

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-fixtures",
        action="store_true",
        default=False,
        help="rewrite fixtures/**/*.expected.txt (and fixed-source expectations) from current output",
    )


@pytest.fixture
def update_fixtures(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--update-fixtures")


# A hung test must end the run with a diagnosis, not run into CI's time limit: past this, every
# thread's stack goes to stderr and the test's process exits (xdist reports the test as crashed
# and carries on with a new worker). `@pytest.mark.hang_limit(seconds)` allows a test more.
HANG_LIMIT_S = 600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hang_limit(seconds): how long the test may run before it counts as hung")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    marker = item.get_closest_marker("hang_limit")
    faulthandler.dump_traceback_later(marker.args[0] if marker else HANG_LIMIT_S, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
