"""What a pytest run passed, failed and skipped, with the failed tests' names: from its JUnit XML, or from the
lines of `pytest -v` (plain or under xdist) when it was stopped before writing that file."""
import re
import xml.etree.ElementTree as ElementTree


def counts(outcomes):
    """passed, failed (errors included), skipped and the failed tests' names, from (test id, outcome) pairs."""
    result = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for name, kind in outcomes:
        result[kind] += 1
        if kind == "failed":
            result["failures"].append(name)
    return result


def junit_counts(path):
    def outcome_of(case):
        if case.find("failure") is not None or case.find("error") is not None:
            return "failed"
        return "skipped" if case.find("skipped") is not None else "passed"

    def test_id(case):  # classname tests.test_alp -> tests/test_alp.py
        module = case.get("classname", "").replace(".", "/")
        return f"{module}.py::{case.get('name')}" if module else case.get("name")

    return counts((test_id(case), outcome_of(case)) for case in ElementTree.parse(path).getroot().iter("testcase"))


# pytest -v: "tests/a.py::test_b PASSED [ 3%]" (a reason in brackets may follow SKIPPED and XFAIL); under
# xdist "[gw2] [ 3%] PASSED tests/a.py::test_b"
PROGRESS_LINE = re.compile(r"^(?:\[gw\d+\] \[ *\d+%\] (?P<kind>[A-Z]+) (?P<name>\S+::.+?)"
                           r"|(?P<name2>\S+::.+?) (?P<kind2>[A-Z]+)(?: \(.*\))?(?: +\[ *\d+%\])?)\s*$")
KINDS = {"PASSED": "passed", "XFAIL": "passed", "FAILED": "failed", "ERROR": "failed", "XPASS": "failed",
         "SKIPPED": "skipped"}


def streamed_counts(text):
    outcomes = []
    for line in text.splitlines():
        match = PROGRESS_LINE.match(line)
        if match:
            kind = match["kind"] or match["kind2"]
            if kind in KINDS:
                outcomes.append((match["name"] or match["name2"], KINDS[kind]))
    return counts(outcomes)
