"""The README and docs/ on the CPU: short enough to read, every page of docs/ reachable from the README once,
and nothing in them or in a script's --help about anything but the user's own work."""
import re

import pytest

from conftest import ROOT

# Words of the repository's own making rather than the user's work.
NOT_FOR_USERS = re.compile(r"previous release|this project's (2-core )?(CPU )?machine|lent machine|\.device",
                           re.IGNORECASE)
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_readme_stays_short_on_cpu():
    assert len(README.read_text().splitlines()) <= 400


def test_every_docs_page_is_linked_once_from_the_readme_and_every_link_leads_somewhere_on_cpu():
    readme = README.read_text()
    linked = re.findall(r"\]\(docs/([\w-]+\.md)[^)]*\)", readme)
    assert sorted(linked) == sorted(page.name for page in DOCS)
    for page in DOCS:
        for target in re.findall(r"\]\(([\w-]+\.md)[^)]*\)", page.read_text()):
            assert (ROOT / "docs" / target).is_file(), (page.name, target)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda path: path.name)
def test_the_readme_and_docs_speak_of_the_users_work_alone_on_cpu(page):
    assert not NOT_FOR_USERS.findall(page.read_text())


def script_main(name):
    """The main(argv) of a script, imported by name (tools/ is on the path as in test_acceptance)."""
    import importlib
    import sys
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    return importlib.import_module(name).main


@pytest.mark.parametrize("script", ["ALP", "CLP", "LSQ", "eval", "reproduce", "bench", "acceptance"])
def test_no_scripts_help_speaks_of_our_own_machines_on_cpu(script, capsys):
    with pytest.raises(SystemExit) as stop:
        script_main(script)(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and "usage:" in text
    assert not NOT_FOR_USERS.findall(text)
