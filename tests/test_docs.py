"""The README is the short page a platform engineer reads first; every link in it and in docs/
leads somewhere that exists, and every make target, CLI command, route, alarm, environment
variable, file and template parameter they name exists in the code and the template."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.name}: {target}"
        if anchor and destination.suffix == ".md":
            assert anchor in anchors(destination), f"{page.name}: {target}"


def test_the_readme_is_read_in_five_minutes() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 10_500
    assert readme.index("make demo") < readme.index("make test") < readme.index("## Deploy")
    for section in ("## Deploy", "## Operate", "## Cost", "## Tear down", "License"):
        assert section in readme, section


def test_license_changelog_and_version_agree() -> None:
    from account_api.version import __version__

    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    assert f'version = "{__version__}"' in (ROOT / "pyproject.toml").read_text()


# -- claims: what the docs name must exist in the code and the template ---------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # the changelog is history
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def code_of(page: Path) -> list[str]:
    """Every inline code span and every line of a fenced block: where a doc names real things."""
    text = page.read_text()
    blocks = [line for block in FENCE.findall(text) for line in block.splitlines()]
    return CODE_SPAN.findall(FENCE.sub("", text)) + blocks


def claims(pattern: str, pages: list[Path]) -> list[tuple[str, str]]:
    found = re.compile(pattern)
    return sorted({(page.name, m) for page in pages for code in code_of(page) for m in found.findall(code)})


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def cli_commands() -> set[str]:
    from account_ops.cli import COMMANDS

    return {name.split()[0] for name in COMMANDS}  # "settings get" is the command settings


def api_routes() -> set[str]:
    import json

    document = json.loads((ROOT / "functions" / "settings_api" / "openapi.json").read_text())
    return {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}


def template_text() -> str:
    return (ROOT / "template.yaml").read_text()


def code_text() -> str:
    folders = ("layers/shared", "functions", "account_ops", "local")
    return template_text() + "".join(p.read_text() for f in folders for p in (ROOT / f).rglob("*.py"))


REPO_PATH = (
    r"(?:^|[\s(`])((?:layers|functions|local|tests|docs|events|account_ops|benchmarks|\.ci)/[\w./-]*[\w/]"
    r"|[\w-]+\.(?:toml|yaml|yml|txt|cfg|md|json)\b)"
)


def unknown_make_targets(pages: list[Path]) -> list[tuple[str, str]]:
    return [(page, t) for page, t in claims(r"(?:^|\s)make ([a-z][\w-]*)", pages) if t not in make_targets()]


def unknown_cli_commands(pages: list[Path]) -> list[tuple[str, str]]:
    named = claims(r"(?:^|[\s/])account-ops (?:--(?:local|config-env \S+|stack \S+|output \S+) )*([a-z][\w-]*)", pages)
    return [(page, c) for page, c in named if c not in cli_commands()]


def unknown_routes(pages: list[Path]) -> list[tuple[str, str]]:
    """A route of the settings API (the stage prefix /v1 aside), or of the simulator's control
    surface. A documented wrong method (`GET /secrets/rotate` is a 405) needs the path to exist."""
    routes = {re.sub(r"\{\w+\}", "{}", r).rstrip("/") for r in api_routes()}
    paths = {r.split()[1] for r in routes}
    simulator = (ROOT / "local" / "simulator.py").read_text()
    missing = []
    for page, route in claims(r"\b((?:GET|PUT|POST|DELETE|PATCH) /[\w/{}<>-]*)", pages):
        method, path = route.split()
        path = re.sub(r"[{<]\w+[}>]", "{}", path.removeprefix("/v1")).rstrip("/")
        if path.startswith("/_sim/"):
            if path not in simulator:
                missing.append((page, route))
        elif f"{method} {path}" not in routes and path not in paths:
            missing.append((page, route))
    return missing


def unknown_alarms(pages: list[Path]) -> list[tuple[str, str]]:
    template = template_text()
    return [
        (page, a)
        for page, a in claims(r"\b([A-Z]\w+Alarm)\b", pages)
        if not re.search(rf"^  {a}:\n    Type: AWS::CloudWatch::Alarm", template, re.M)
    ]


def unknown_environment_variables(pages: list[Path]) -> list[tuple[str, str]]:
    code = code_text()
    return [(page, v) for page, v in claims(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", pages) if v not in code]


def missing_files(pages: list[Path]) -> list[tuple[str, str]]:
    missing = []
    for page in pages:
        if page.parent.name == "decisions":
            continue  # history: a decision record names what it removed
        for _, path in claims(REPO_PATH, [page]):
            if any(ch in path for ch in "<>*{}") or re.search(r"/[A-Z]+$", path):
                continue  # a pattern (events/FILE), not a file
            places = (ROOT, page.parent, ROOT / "events", ROOT / "benchmarks")  # a bare name in its folder
            if not any((place / path).exists() for place in places):
                missing.append((page.name, path))
    return missing


def unknown_template_parameters(pages: list[Path]) -> list[tuple[str, str]]:
    template = template_text()
    return [
        (page, p)
        for page, p in claims(r"\b([A-Z][a-zA-Z]+)=\\?\"", pages)
        if not re.search(rf"^  {p}:\n    Type:", template, re.M)
    ]


CHECKS = {
    "make targets": (unknown_make_targets, "`make demo` and `make tset`"),
    "CLI commands": (unknown_cli_commands, "`account-ops status`, then `account-ops --local rotat --wait`"),
    "routes": (unknown_routes, "`GET /balance` and `GET /balances`"),
    "alarms": (unknown_alarms, "`RotationFailedAlarm` or `RotationFailAlarm`"),
    "environment variables": (unknown_environment_variables, "`VONAGE_SECRET_ARN`, not `VONAGE_SECRET_NAME`"),
    "files": (missing_files, "see `docs/cli.md` and `docs/cli-reference.md`"),
    "template parameters": (unknown_template_parameters, 'set `DryRun="false"` and `DryRunMode="false"`'),
}


@pytest.mark.parametrize("kind", CHECKS)
def test_every_thing_the_docs_name_exists(kind: str) -> None:
    check, _ = CHECKS[kind]
    assert check(DOCS) == []


@pytest.mark.parametrize("kind", CHECKS)
def test_the_check_finds_a_broken_claim(kind: str, tmp_path: Path) -> None:
    """Each check must find the one wrong name in a doc that names one real thing and one that is
    not there (a check that matched nothing would pass anything)."""
    check, text = CHECKS[kind]
    page = tmp_path / "broken.md"
    page.write_text(f"# Broken\n\n{text}\n")
    assert len(check([page])) == 1, check([page])
