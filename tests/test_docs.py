"""The man page, the completions and the changelog follow the CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from kexec_py.frontend.cli import cli

REPO = Path(__file__).resolve().parent.parent
MAN = (REPO / "man" / "kexec-py.8").read_text()
sys.path.insert(0, str(REPO / "tools"))


def _commands() -> dict[str, click.Command]:
    assert isinstance(cli, click.Group)
    ctx = click.Context(cli)
    return {n: c for n in cli.list_commands(ctx) if (c := cli.get_command(ctx, n)) is not None}


def _man_text() -> str:
    # roff escapes: "\-" is a minus, "\fB" etc. change fonts
    return re.sub(r"\\f[BIRP]", "", MAN).replace("\\-", "-")


def test_every_command_has_a_man_section() -> None:
    text = _man_text()
    for name in _commands():
        assert re.search(rf'^\.SS "?{re.escape(name)}\b', text, re.M), \
            f"command {name} has no .SS section in man/kexec-py.8"


@pytest.mark.parametrize("command", ["(global)", *sorted(_commands())])
def test_every_option_is_in_the_man_page(command: str) -> None:
    text = _man_text()
    cmd = cli if command == "(global)" else _commands()[command]
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        for name in p.opts + p.secondary_opts:
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), \
                f"{command}: option {name} is missing from man/kexec-py.8"


def test_man_page_sections() -> None:
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"):
        assert f'.SH "{section}"' in MAN or f".SH {section}" in MAN, section
    assert re.search(r"^\.BR kexec \(8\)", MAN, re.M)


@pytest.mark.skipif(shutil.which("man") is None and shutil.which("groff") is None,
                    reason="needs man or groff to render the page")
def test_man_page_renders_without_warnings() -> None:
    tool = ["groff", "-man", "-Tutf8", "-ww", "-z"] if shutil.which("groff") else None
    if tool is None:
        pytest.skip("groff not installed")
    r = subprocess.run([*tool, str(REPO / "man" / "kexec-py.8")], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_completions_are_current() -> None:
    import gen_completions

    for name, text in gen_completions.render().items():
        assert (REPO / "completions" / name).read_text() == text, \
            f"completions/{name} is stale: run python tools/gen_completions.py"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("words", "expect"), [
    (["kexec-py", "lo"], "load"),
    (["kexec-py", "load", "--ini"], "--initrd"),
    (["kexec-py", "--backend", "mo"], "model"),
    (["kexec-py", "unload", "-"], "--crash"),
])
def test_bash_completion_completes(words: list[str], expect: str) -> None:
    script = (f"source {REPO / 'completions' / 'kexec-py.bash'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
              f"COMP_CWORD={len(words) - 1}\n_kexec_py\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert expect in out


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_completion_parses() -> None:
    subprocess.run(["zsh", "-n", str(REPO / "completions" / "_kexec-py")], check=True)


@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish")
def test_fish_completion_parses() -> None:
    subprocess.run(["fish", "--no-execute", str(REPO / "completions" / "kexec-py.fish")],
                   check=True)


def test_changelog_has_unreleased_section() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
