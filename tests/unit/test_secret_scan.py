"""lab/checks.py's secret scan: a part of the scan that did not find its planted control value, or a file scan
that failed, must fail the test instead of reading as "no secret found"."""

from __future__ import annotations

import pytest

from lab.checks import _scan_findings

GOOD = "/root/.gk-control\nfiles-rc 0\ngrep-errors 0\ncmdline 2 0\njournal 1 0\n"


def test_a_clean_scan_finds_nothing():
    assert _scan_findings("gw1", GOOD) == []


def test_secrets_found_are_named_by_place_never_by_value():
    out = "/etc/leak.conf\n/root/.gk-control\nfiles-rc 0\ngrep-errors 0\ncmdline 2 1\njournal 1 3\n"
    assert _scan_findings("gw1", out) == ["gw1:/etc/leak.conf", "gw1: process command line (1 matches)",
                                          "gw1: journal (3 matches)"]


def test_files_that_vanished_while_grep_read_them_are_not_a_failed_scan():
    assert _scan_findings("gw1", GOOD.replace("files-rc 0", "files-rc 2")) == []


@pytest.mark.parametrize("stdout, why", [
    ("", "the file scan did not find its control file"),  # the scan never ran (ssh failed, shell error)
    (GOOD.replace("/root/.gk-control\n", ""), "the file scan did not find its control file"),
    (GOOD.replace("files-rc 0", "files-rc 2").replace("grep-errors 0", "grep-errors 1"), "the file scan failed"),
    (GOOD.replace("cmdline 2 0", "cmdline 0 0"), "the cmdline scan did not find its control value"),
    (GOOD.replace("journal 1 0\n", ""), "the journal scan did not find its control value"),
])
def test_a_scan_that_could_not_prove_anything_fails(stdout, why):
    with pytest.raises(AssertionError, match=why):
        _scan_findings("gw1", stdout)
