"""Test-session settings.

One BLAS thread: on a 2-core machine XLA's own thread pool and a multi-threaded OpenBLAS oversubscribe the cores,
and NumPy's LAPACK calls (the exact-diagonalisation references) then run 50-100x slower. Must be set before
NumPy is imported, hence here.

Real data (tests/shared_data.py, README.md "Real data"): tests marked ``realdata`` read the measured STS files.
Without the shared data folder they are skipped with one message saying what is missing and how to get it.
Under ``CI=true`` (where the data must be present) a missing folder is an error before collection, and a run in
which any ``realdata`` test (or any test skipped for missing shared data) did not run fails. The count is kept by
the process that reports (the pytest-xdist controller, or the only process with ``-n 0``).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# the tests run in two pytest-xdist workers (pyproject.toml): on a GPU machine both share the device, so neither
# may preallocate most of its memory
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# the CLI turns on JAX's persistent compilation cache (shibajax/_compilation_cache.py): tests that call its main()
# in-process must not fill ~/.cache (nor read compiled kernels from disk in later tests of the same worker)
os.environ.setdefault("SHIBAJAX_COMPILATION_CACHE", "off")

import pytest  # noqa: E402
import shared_data  # noqa: E402

_SKIPPED: list[tuple[str, str]] = []  # (node id, reason) of each skipped test that needed the shared data


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")  # a pytest-xdist worker: its reports go to the controller


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "realdata: reads the measured STS files of the shared data folder (shibajax.data; skipped with one message "
        "when absent, a failure under CI=true)",
    )
    if _in_ci() and not _is_worker(config):
        missing = [m for m in (shared_data.REALDATA_MISSING, shared_data.REFERENCE_MISSING) if m]
        if missing:
            raise pytest.UsageError(f"CI=true but the real-data tests cannot run: {missing[0]}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if item.get_closest_marker("realdata") is not None and shared_data.REALDATA_MISSING:
        pytest.skip(shared_data.REALDATA_MISSING)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report):
    """Count skipped tests that needed the shared data (on the controller: xdist forwards every worker's reports)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if "realdata" in report.keywords or shared_data.MISSING_PREFIX in reason:
        _SKIPPED.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if _in_ci() and not _is_worker(session.config) and _SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _in_ci() and not _is_worker(config) and _SKIPPED:
        terminalreporter.section("real-data tests that did not run", red=True)
        for nodeid, reason in _SKIPPED:
            terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")
        terminalreporter.write_line(
            f"CI=true: {len(_SKIPPED)} real-data test(s) were skipped; in CI every one must run (this fails the run)",
            red=True,
        )
