"""Terminal chat: ``python -m gemma_widgets chat``, a second view over the chat runtime.

Replies stream to stdout; Ctrl+C stops a reply (the partial reply is kept), or quits at the
prompt. A line ending in ``\\`` continues on the next line. Commands start with ``/``
(``/help`` lists them). It reads any stream, so a pipe drives it too::

    printf 'Name three colours.\\n/quit\\n' | python -m gemma_widgets chat --temperature 0
"""

from __future__ import annotations

import argparse
import sys
import threading
import unicodedata
from dataclasses import fields
from typing import TextIO

from gemma_widgets.engines.base import SamplingSettings
from gemma_widgets.errors import GemmaWidgetsError
from gemma_widgets.loading import LoadedModel, load_model
from gemma_widgets.session import ChatSession

HELP = """Commands:
  /help                 this list
  /quit, /exit          leave (Ctrl+D too)
  /clear                forget the conversation
  /regen                a new reply to your last message
  /edit TEXT            replace your last message with TEXT and resend it
  /system [TEXT]        show or set the system prompt (folded into the first user turn)
  /set NAME=VALUE       temperature (0 = greedy), top_p, top_k, max_new_tokens, repetition_penalty
  /save PATH            write the transcript (.json, or Markdown if PATH ends in .md)
  /load PATH            read a JSON transcript
A line ending in \\ continues on the next line. Ctrl+C stops a reply."""


#: Bidirectional overrides and isolates reorder what a terminal shows ("Trojan source").
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` (new lines and tabs kept).

    Model output is untrusted: an escape sequence could clear the screen, retitle the window or
    write the clipboard (OSC 52). Only C0/C1 controls and bidi overrides are replaced; emoji and
    joiners stay.
    """
    return "".join(ch if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _BIDI)
                   else f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" for ch in text)


class TerminalChat:
    """Read messages and commands from ``stdin``; stream replies to ``stdout``."""

    def __init__(self, session: ChatSession, stdin: TextIO, stdout: TextIO):
        self.session, self.stdin, self.stdout = session, stdin, stdout
        self.interactive = stdin.isatty()
        self._shown = 0
        self._lock = threading.Lock()
        session.on_text.append(self._on_text)

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def _on_text(self, text: str) -> None:
        with self._lock:
            self._write(printable(text[self._shown:]))
            self._shown = len(text)

    def _read_message(self) -> str | None:
        lines: list[str] = []
        while True:
            if self.interactive:
                self._write("you> " if not lines else "...> ")
            line = self.stdin.readline()
            if not line:
                return "\n".join(lines) if lines else None
            line = line.rstrip("\r\n")
            if line.endswith("\\"):
                lines.append(line[:-1])
                continue
            return "\n".join([*lines, line])

    def run(self) -> int:
        """The read-reply loop; returns the exit status."""
        if self.interactive:
            self._write(f"Chatting with {self.session.loaded.preset.name} "
                        f"({self.session.loaded.precision}). /help for commands.\n")
        while True:
            try:
                text = self._read_message()
            except KeyboardInterrupt:
                self._write("\n")
                return 0
            if text is None:
                return 0
            try:
                if text.startswith("/"):
                    if self._command(text) is False:
                        return 0
                else:
                    self._reply(self.session.send, text)
            except GemmaWidgetsError as exc:
                self._write(f"! {printable(str(exc))}\n")

    def _reply(self, action, *args) -> None:
        with self._lock:  # the reply's text waits until its prefix is written
            generation = action(*args)
            self._shown = 0
            self._write("gemma> ")
        try:
            generation.wait()
        except KeyboardInterrupt:
            generation.stop()
            generation.wait()
        self._write("\n")
        if generation.error is not None:
            error = printable(str(generation.error))
            self._write(f"! the model raised {type(generation.error).__name__}: {error} "
                        "(the transcript is kept; /regen to try again)\n")
        if generation.plan.notice():
            self._write(f"! {generation.plan.notice()}\n")
        if generation.stats is not None:
            self._write(f"[{generation.stats.summary()}]\n")

    def _command(self, line: str) -> bool | None:
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self._write(HELP + "\n")
        elif name == "clear":
            self.session.clear()
            self._write("(conversation cleared)\n")
        elif name == "regen":
            self._reply(self.session.regenerate)
        elif name == "edit":
            self._reply(self.session.edit_last, arg)
        elif name == "system":
            if arg:
                self.session.conversation.system = arg
            self._write(f"system prompt: {printable(self.session.conversation.system) or '(none)'}\n")
        elif name == "set":
            self._set(arg)
        elif name == "save":
            self._write(f"saved {printable(str(self.session.save(arg or 'gemma-chat.json')))}\n")
        elif name == "load":
            self.session.load(arg)
            self._write(f"loaded {len(self.session.conversation.messages)} messages\n")
        else:
            raise GemmaWidgetsError(f"Unknown command /{name}: /help lists the commands.")
        return None

    def _set(self, arg: str) -> None:
        key, _, value = arg.partition("=")
        key = key.strip().replace("-", "_")
        known = {f.name: f.type for f in fields(SamplingSettings)}
        if key not in known or not value.strip():
            raise GemmaWidgetsError(f"Use /set NAME=VALUE with NAME one of {', '.join(known)}.")
        settings = self.session.settings
        old = getattr(settings, key)
        try:
            setattr(settings, key, type(old)(value.strip()))
            settings.validate()
        except ValueError as exc:
            setattr(settings, key, old)
            raise GemmaWidgetsError(f"{key}: {exc}") from exc
        except GemmaWidgetsError:
            setattr(settings, key, old)
            raise
        self._write(f"{key} = {getattr(settings, key)}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``chat`` subcommand's options (sampling defaults: :class:`SamplingSettings`)."""
    parser.add_argument("--model", default=None, help="preset, hub id or folder (default: bundled)")
    parser.add_argument("--precision", default="fast",
                        help="fp32, bf16, ov-int4, ... (default: fast, the quickest this machine runs)")
    parser.add_argument("--system", default="", help="system prompt (folded into the first user turn)")
    parser.add_argument("--temperature", type=float, help="0 means greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass (default 0.95)")
    parser.add_argument("--top-k", type=int, help="sample among the k likeliest, 0 = off (default 64)")
    parser.add_argument("--max-new-tokens", type=int, help="reply length limit (default 256)")
    parser.add_argument("--repetition-penalty", type=float, help="1 = off (default 1.0)")
    parser.add_argument("--context-window", type=int, default=None,
                        help="tokens the prompt may use (default: the model's)")
    parser.add_argument("--load", default=None, help="start from a saved JSON transcript")


def run(args: argparse.Namespace, loaded: LoadedModel | None = None,
        stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the terminal chat with the parsed ``chat`` options."""
    chosen = {f.name: getattr(args, f.name) for f in fields(SamplingSettings)}
    settings = SamplingSettings(**{k: v for k, v in chosen.items() if v is not None})
    settings.validate()
    if loaded is None:
        print(f"Loading {args.model or 'the default model'}...", file=sys.stderr, flush=True)
        loaded = load_model(args.model, args.precision)
    session = ChatSession(loaded, settings=settings, context_window=args.context_window)
    if args.load:
        session.load(args.load)
    if args.system:
        session.conversation.system = args.system
    return TerminalChat(session, stdin or sys.stdin, stdout or sys.stdout).run()
