"""Man pages made from the argparse definitions and the config schema.

``lxdmig(1)`` and ``lxdmig-helper(8)`` are rendered from the same parsers
that drive ``--help``, ``lxdmig.conf(5)`` from ``config.OPTIONS``, so the
pages cannot drift from the code: ``python -m lxdmig.manpages --check``
(run by the tests) fails when the committed pages are stale, and
``python -m lxdmig.manpages`` rewrites them.

The output depends only on the definitions (no terminal width, no date,
no Python version), so it is reproducible.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lxdmig import __version__, config
from lxdmig.errors import EXIT_MEANINGS

MAN_DIR = Path(__file__).resolve().parent.parent / "man"
_SOURCE = f"lxdmig {__version__}"


def _esc(text: str) -> str:
    """Text safe in roff: backslashes and dashes escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _header(name: str, section: int, title: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "" "{_SOURCE}" "{title}"', ".SH NAME", f"{_esc(name)} \\- "]


def _option_synopsis(action: argparse.Action) -> str:
    flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
    if action.nargs == 0:
        return f"[{flag}]"
    return f"[{flag} {_metavar(action)}]"


def _positional_synopsis(action: argparse.Action) -> str:
    """As argparse's usage line writes it: [X] may be left out, X ... repeats."""
    name = _metavar(action)
    forms: dict[object, str] = {"?": f"[{name}]", "*": f"[{name} ...]", "+": f"{name} [{name} ...]",
                                argparse.REMAINDER: "..."}
    return forms.get(action.nargs, name)


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return str(action.dest).upper()


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _visible(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        yield action


def synopsis(prog: str, parser: argparse.ArgumentParser) -> str:
    parts = [prog]
    parts += [_option_synopsis(a) for a in _visible(parser) if a.option_strings]
    parts += [_positional_synopsis(a) for a in _visible(parser) if not a.option_strings]
    if _subparsers(parser) is not None:
        parts.append("ACTION" if prog.count(" ") else "COMMAND")
    return " ".join(parts)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": ""}
    if action.choices is not None and action.metavar is not None:
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    return text


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in _visible(parser):
        if action.option_strings:
            names = ", ".join(f"\\fB{_esc(o)}\\fR" for o in action.option_strings)
            label = names if action.nargs == 0 else f"{names} \\fI{_esc(_metavar(action))}\\fR"
        else:
            label = f"\\fI{_esc(_metavar(action))}\\fR"
        out += [".TP", label, _esc(_help(action))]
    return out


@dataclass(frozen=True)
class Command:
    path: str  # e.g. "lxdmig remote add"
    help: str
    parser: argparse.ArgumentParser


def commands(prog: str, parser: argparse.ArgumentParser) -> list[Command]:
    """Every subcommand (and sub-subcommand), depth first, in --help order."""
    out: list[Command] = []
    sub = _subparsers(parser)
    if sub is None:
        return out
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, child in sub.choices.items():
        path = f"{prog} {name}"
        out.append(Command(path, helps.get(name, ""), child))
        out += commands(path, child)
    return out


def _section(title: str) -> list[str]:
    return [f".SH {title}"]


def render_command_page(name: str, section: int, title: str, parser: argparse.ArgumentParser, *,
                        summary: str, examples: list[tuple[str, str]], files: list[tuple[str, str]],
                        see_also: list[str]) -> str:
    lines = _header(name, section, title)
    lines[-1] += _esc(summary)
    lines += _section("SYNOPSIS") + [f"\\fB{_esc(name)}\\fR {_esc(synopsis('', parser).strip())}".rstrip()]
    lines += _section("DESCRIPTION") + [_esc(parser.description or summary)]
    lines += _section("OPTIONS") + _options(parser)
    subs = commands(name, parser)
    if subs:
        lines += _section("COMMANDS")
        for cmd in subs:
            lines += [".SS " + _esc(cmd.path), _esc(synopsis(cmd.path, cmd.parser))]
            if cmd.parser.description or cmd.help:
                lines += [".PP", _esc(cmd.parser.description or cmd.help)]
            options = _options(cmd.parser)
            if options:
                lines += [".PP", "Options and arguments:", *options]
    lines += _section("EXIT STATUS")
    for code, meaning in EXIT_MEANINGS.items():
        lines += [".TP", f"\\fB{int(code)}\\fR", _esc(meaning)]
    if examples:
        lines += _section("EXAMPLES")
        for command, what in examples:
            lines += [".PP", _esc(what) + ":", ".RS", ".nf", f"\\fB{_esc(command)}\\fR", ".fi", ".RE"]
    lines += _section("FILES")
    for path, what in files:
        lines += [".TP", f"\\fI{_esc(path)}\\fR", _esc(what)]
    lines += _section("SEE ALSO") + [", ".join(f"\\fB{_esc(p.split('(')[0])}\\fR({p.split('(')[1]}" for p in see_also)]
    return "\n".join(lines) + "\n"


def render_config_page() -> str:
    lines = _header("lxdmig.conf", 5, "File formats")
    lines[-1] += "configuration of lxdmig and lxdmig\\-helper"
    lines += _section("SYNOPSIS") + [f"\\fI{_esc(str(config.DEFAULT_DIR / config.FILE_NAME))}\\fR"]
    lines += _section("DESCRIPTION") + [_esc(
        "One INI file shared by lxdmig(1) and lxdmig-helper(8). Every option is optional; what is not set takes "
        "the default shown. Relative paths are relative to the directory of the file. lxdmig --config FILE and "
        "$LXDMIG_CONFIG_DIR choose another file. Every option is checked when the file is read; an error names "
        "the file, the line and the option. 'lxdmig-helper config' prints every option with its default.")]
    section = ""
    for o in config.OPTIONS:
        if o.section != section:
            section = o.section
            lines += [f".SS [{_esc(section)}]"]
        lines += [".TP", f"\\fB{_esc(o.name)}\\fR = \\fI{_esc(o.default)}\\fR", _esc(o.help)]
    lines += [".SS [container \\fINAME\\fR]", _esc(
        "LXD's pre-copy keys for the LXC container NAME (LXD instances keep them in their own config; see "
        "lxdmig config):")]
    for key, what in ((config.INCREMENTAL, "true or false: false rules pre-copy out of --mode auto"),
                      (config.ITERATIONS, "at most this many pre-copy rounds (0-999, default 10)"),
                      (config.GOAL, "stop pre-copy once this percentage of pages was unchanged in a round "
                                    "(0-100, default 70)")):
        lines += [".TP", f"\\fB{_esc(key)}\\fR", _esc(what)]
    lines += _section("EXAMPLE") + [".nf", _esc("[helper]\nlisten = 192.0.2.2\n\n[container web1]\n"
                                                "migration.incremental.memory.goal = 80"), ".fi"]
    lines += _section("SEE ALSO") + ["\\fBlxdmig\\fR(1), \\fBlxdmig\\-helper\\fR(8)"]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name -> contents of every man page."""
    from lxdmig import cli
    from lxdmig.helper import cli as helper_cli

    conf = str(config.DEFAULT_DIR / config.FILE_NAME)
    return {
        "lxdmig.1": render_command_page(
            "lxdmig", 1, "User Commands", cli.build_parser(), summary="live-migrate running containers with CRIU",
            examples=[("lxdmig remote add b TOKEN", "Pin host b with a token from 'lxdmig-helper trust add' there"),
                      ("lxdmig check b c1", "Check, before anything is frozen, whether c1 can move to b"),
                      ("lxdmig move c1 b:c1", "Move c1 to b in the best mode both hosts support"),
                      ("lxdmig move c1 b:c1 --mode post-copy --json", "Post-copy, report as JSON"),
                      ("lxdmig move web1 b:web1 --engine lxd", "An LXD instance with LXD's own live migration"),
                      ("lxdmig config web1 --iterations 5 --goal 80", "Set LXD's pre-copy keys on web1")],
            files=[(conf, "configuration, see lxdmig.conf(5)"),
                   (str(config.DEFAULT_DIR / "remotes.json"), "the remotes and their pinned certificates")],
            see_also=["lxdmig-helper(8)", "lxdmig.conf(5)", "criu(8)", "lxc(1)"]),
        "lxdmig-helper.8": render_command_page(
            "lxdmig-helper", 8, "System Administration", helper_cli.build_parser(),
            summary="the per-host lxdmig daemon",
            examples=[("lxdmig-helper serve", "Run the daemon (systemd runs it as lxdmig-helper.service)"),
                      ("lxdmig-helper trust add a", "Let host a migrate here: prints a one-time token"),
                      ("lxdmig-helper trust list", "Who may migrate here")],
            files=[(conf, "configuration, see lxdmig.conf(5)"),
                   ("/var/lib/lxdmig/migrations", "received checkpoint images, one directory per migration"),
                   ("/usr/share/doc/lxdmig", "the documentation; security.md there: who can do what to this host "
                                             "(strangers, local users, trusted peers), each claim with its test, "
                                             "and what is not done yet")],
            see_also=["lxdmig(1)", "lxdmig.conf(5)", "systemd.service(5)"]),
        "lxdmig.conf.5": render_config_page(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lxdmig.manpages", description="write or check the man pages")
    p.add_argument("--check", action="store_true", help="exit 1 if a committed page differs from the code")
    p.add_argument("--dir", type=Path, default=MAN_DIR)
    args = p.parse_args(argv)
    stale = []
    for name, text in pages().items():
        path = args.dir / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale man pages: {', '.join(stale)}; run: python -m lxdmig.manpages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
