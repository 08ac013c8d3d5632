"""Which curl_cffi this leaf is built for, and a plain check of the installed one.

`gateway.grok.transfer` leans on one private name of curl_cffi (see its "curl_cffi
internals" section), and the undocumented helpers it imports move between releases. An
untested release would not fail at once: it would quietly give every curl handle back its
128 KB buffer, or fail deep inside a request. So the release series is named here and
checked at start-up (the Django system check `grok2api.E003`, and the API handler when it
is built); `tests/test_private_api_contracts.py` says what moved when an upgrade breaks.

Plain functions over `importlib.metadata`: this leaf imports neither Django nor the project.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

CURL_CFFI_SERIES = ("0.16",)  # release series whose internals transfer.py was checked against
CURL_CFFI_TESTED = "0.16.3"  # the release the contract tests last passed on (requirements/base.txt)


def version_problem(distribution: str, series: tuple[str, ...], tested: str) -> str | None:
    """What is wrong with the installed `distribution` for code written against `series`, or None.

    A series is a version prefix ("0.16" admits 0.16.0 to 0.16.x): patch releases keep the
    internals we use, and refusing them would block security fixes.
    """
    try:
        installed = version(distribution)
    except PackageNotFoundError:
        installed = None
    if installed is not None and any(installed == s or installed.startswith(s + ".") for s in series):
        return None
    supported = ", ".join(f"{s}.x" for s in series)
    return (
        f"{distribution} {installed or '(not installed)'} is not a supported version: this gateway uses private "
        f"parts of {distribution} checked against {supported} (tested with {tested}). Install "
        f"{distribution}=={tested} (requirements/base.txt), or, to move to the new release, run "
        f"tests/test_private_api_contracts.py against it, fix what it reports and add its series to the "
        f"supported ones."
    )


def curl_cffi_problem() -> str | None:
    """`version_problem` for the installed curl_cffi: None when transfer.py was checked against it."""
    return version_problem("curl_cffi", CURL_CFFI_SERIES, CURL_CFFI_TESTED)
