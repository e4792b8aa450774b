"""The core's errors name options in Python words; the CLI words them as flags (issue #17).

``base.errors.option`` is how every message outside ``cli/`` refers to an option; these
tests pin both renderings of each form, that the CLI's wording is scoped to a command,
and that no message in the core spells a flag itself."""

from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

import pytest
import torch

from optstate.base.errors import (
    NAMED,
    ConfigError,
    Option,
    OptstateError,
    OutputExistsError,
    option,
    speaking,
)
from optstate.cli.flags import flag_words

# (option() arguments) -> (Python words, the CLI's words)
FORMS = [
    (("match",), {}, "match", "--match"),
    (("force", True), {}, "force=True", "--force"),
    (("stats", False), {}, "stats=False", "--no-stats"),
    (("key", "opt.v1"), {"shown": repr("opt.v1")}, "key='opt.v1'", "--key 'opt.v1'"),
    (("match", "name"), {}, "match='name'", "--match name"),
    (("lr",), {"shown": "VALUE"}, "lr=VALUE", "--lr VALUE"),
    (("base_lr", 0.1), {}, "base_lr=0.1", "--base-lr 0.1"),
    (("groups", [2]), {}, "groups=[2]", "--group 2"),
    (("params", ["w"]), {"shown": repr("w")}, "params=['w']", "--param 'w'"),
    (("ignore", ("foreach", "fused")), {}, "ignore=('foreach', 'fused')",
     "--ignore foreach --ignore fused"),
    (("save", Path("out/run.pt")), {}, "save='out/run.pt'", "--save out/run.pt"),
    (("values['lr']",), {}, "values['lr']", "--lr"),
    (("values",), {"shown": "KEY=VALUE", "python": "{KEY: VALUE}"}, "values={KEY: VALUE}",
     "--set KEY=VALUE"),
    (("output",), {"shown": "NEW_FILE"}, "output=NEW_FILE", "-o NEW_FILE"),
]


@pytest.mark.parametrize(("args", "kwargs", "python", "cli"), FORMS)
def test_option_reads_as_python_by_default_and_as_a_flag_in_the_cli(args, kwargs, python, cli):
    assert option(*args, **kwargs) == python
    with speaking(flag_words):
        assert option(*args, **kwargs) == cli
    assert option(*args, **kwargs) == python  # the block ended: Python words again


def test_an_error_message_and_hint_in_both_words():
    def refuse(p: str) -> OutputExistsError:
        return OutputExistsError(f"{p} already exists",
                                 hint=f"pass {option('force', True)} to overwrite it")

    e = refuse("out.pt")
    assert str(e) == e.message == "out.pt already exists"
    assert e.hint == "pass force=True to overwrite it"
    with speaking(flag_words):
        e = refuse("out.pt")
    assert e.hint == "pass --force to overwrite it"  # the words are fixed when it is built
    assert isinstance(e, OptstateError) and e.exit_code == 2


def test_speaking_ends_when_its_block_raises():
    with pytest.raises(ConfigError, match="^--match must be"), speaking(flag_words):
        raise ConfigError(f"{option('match')} must be auto, position or name")
    assert option("match") == "match"


def test_threads_a_command_starts_speak_as_it_does():
    seen = []
    with speaking(flag_words):
        t = threading.Thread(target=lambda: seen.append(option("unsafe", True)))
        t.start()
        t.join()
    assert seen == ["--unsafe"]


def test_option_is_plain_data():
    assert Option("force", True).python_words() == "force=True"
    assert Option("key").value is NAMED and repr(NAMED) == "NAMED"


def test_library_and_cli_words_for_the_same_core_error(tmp_path, capsys):
    """The same failure of ``locate``: Python words through the library, the flag through
    the command line (byte-identical to before issue #17)."""
    from optstate.analysis.inspect import inspect_path
    from optstate.cli import main

    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=r"^params=\['v'\]: no parameter has that name"):
        inspect_path(tmp_path / "c.pt", params=["v"])
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tmp_path / "c.pt"), "--param", "v"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(
        "Error: --param 'v': no parameter has that name")
    assert option("params") == "params"  # the command's words did not outlive it


_CORE = Path(__file__).resolve().parent.parent / "optstate"
# Where flags may be written: the command line itself, its renderers (the rich views'
# "--max-diffs N lists more" hints are the CLI talking), and the entry point.
_SPEAKS_CLI = ("cli", "render", "_entry.py")
# Texts that are command lines, not messages: check suggests `optstate set ...` lines
# to run (and says when it cannot suggest one).
_COMMAND_LINES = {"analysis/check.py"}
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-o\b)")


def _texts(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module, docstrings left out (they may say which flag
    of the CLI a function serves)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_the_core_spells_no_flag_in_its_messages():
    files = [f for f in sorted(_CORE.rglob("*.py"))
             if f.relative_to(_CORE).parts[0] not in _SPEAKS_CLI
             and str(f.relative_to(_CORE)) not in _COMMAND_LINES]
    found = [f"{f.relative_to(_CORE)}:{line}: {text!r}" for f in files
             for line, text in _texts(f) if _FLAG.search(text)]
    assert found == []


def _named_options() -> set[tuple[str, str, bool | None]]:
    """(module, name, bool value or None) of every ``option("name", ...)`` call in the core
    whose name is a literal (or set's ``SET_LR``)."""
    found = set()
    for f in _CORE.rglob("*.py"):
        if f.relative_to(_CORE).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "option" and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id == "SET_LR":
                name = "values['lr']"
            elif isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
            else:
                continue  # a name from a loop (diff's atol/rtol, distributed's resume/...)
            value = node.args[1] if len(node.args) > 1 else None
            flag = value.value if isinstance(value, ast.Constant) and isinstance(
                value.value, bool) else None
            found.add((str(f.relative_to(_CORE)), name, flag))
    return found


def test_every_option_the_core_names_is_a_flag_of_the_cli():
    import typer

    from optstate.cli import app, load_all

    load_all()
    group = typer.main.get_command(app)
    flags = {o for cmd in group.commands.values() for p in cmd.params
             for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
    named = _named_options()
    assert len(named) > 40  # the scan finds them
    unknown = []
    for module, name, value in sorted(named):
        spelled = flag_words(Option(name, NAMED if value is None else value))
        if spelled not in flags:
            unknown.append(f"{module}: option({name!r}) -> {spelled}")
    assert unknown == []
