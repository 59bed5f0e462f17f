"""Tools the background model may call: a registry of async functions with JSON-schema parameters.

Built in: `clock` (the current date and time), `set_timer` / `list_timers` (timers whose expiry is told
to the conversation), `calculate` (arithmetic by walking the expression's syntax tree: no eval) and
`search_notes` (the best-matching passages of the text files in a local notes folder).
A Realtime client's own tools (declared in `session.update`) join the registry as `ClientTool`s: calling
one sends `response.function_call_arguments.*` to the client and waits for its `function_call_output`.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import json
import math
import operator
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ToolFunction = Callable[..., Awaitable[str]]


class ToolError(ValueError):
    """A tool was called with arguments it cannot use; the message goes back to the model."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    run: ToolFunction  # keyword arguments -> result text

    def schema(self) -> dict:
        """The chat-completions `tools` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass
class ToolRegistry:
    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool

    def remove(self, name: str) -> None:
        self.tools.pop(name, None)

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    async def call(self, name: str, arguments: str) -> str:
        """Run a tool; errors come back as text for the model (a bad call must not end the task)."""
        tool = self.tools.get(name)
        if tool is None:
            return f"error: no tool named {name!r}"
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ToolError("arguments must be a JSON object")
            return await tool.run(**args)
        except (json.JSONDecodeError, ToolError, TypeError) as exc:
            return f"error: {exc}"


# ---- calculator ----------------------------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000  # 10 ** 10 ** 10 would hang the worker


def evaluate(expression: str) -> float | int:
    """Arithmetic on numbers, + - * / // % **, parentheses, and a few math functions and constants."""
    if len(expression) > 500:
        raise ToolError("expression longer than 500 characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    return _evaluate(tree.body)


def _evaluate(node: ast.AST) -> float | int:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is too large")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ToolError("division by zero") from exc
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        try:
            return _FUNCTIONS[node.func.id](*[_evaluate(a) for a in node.args])
        except (ValueError, TypeError) as exc:
            raise ToolError(f"{node.func.id}: {exc}") from exc
    raise ToolError(f"unsupported in a calculation: {ast.unparse(node)!r}")


def format_number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}" if isinstance(value, float) else str(value)


async def calculate(expression: str) -> str:
    return f"{expression} = {format_number(evaluate(expression))}"


# ---- notes search --------------------------------------------------------------------------------------

NOTE_SUFFIXES = (".txt", ".md")
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def search_notes_folder(folder: Path, query: str, limit: int = 3) -> list[tuple[str, str]]:
    """(file name, paragraph) of the paragraphs sharing most query words (rarer words count more)."""
    if not folder.is_dir():
        raise ToolError(f"{folder}: the notes folder does not exist")
    paragraphs = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in NOTE_SUFFIXES and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            for para in re.split(r"\n\s*\n", text):
                if para.strip():
                    paragraphs.append((str(path.relative_to(folder)), para.strip(), set(_words(para))))
    query_words = set(_words(query))
    if not query_words:
        raise ToolError("the query has no words")
    counts = {w: sum(w in words for _, _, words in paragraphs) for w in query_words}
    scored = []
    for name, para, words in paragraphs:
        score = sum(1.0 / counts[w] for w in query_words & words)
        if score > 0:
            scored.append((score, name, para))
    scored.sort(key=lambda s: -s[0])
    return [(name, para) for _, name, para in scored[:limit]]


# ---- clock and timers ----------------------------------------------------------------------------------


@dataclass
class Timers:
    """Timers run on the worker's event loop; an expiry is reported through `on_expiry(text)`."""

    on_expiry: Callable[[str], None] | None = None
    pending: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    due: dict[str, dt.datetime] = field(default_factory=dict)

    async def set_timer(self, seconds: float, label: str = "timer") -> str:
        if not isinstance(seconds, int | float) or not 0 < seconds <= 86_400:
            raise ToolError("seconds must be a number between 0 and 86400")
        label = str(label)[:100]
        loop = asyncio.get_running_loop()
        if label in self.pending:
            self.pending.pop(label).cancel()
        self.due[label] = dt.datetime.now() + dt.timedelta(seconds=seconds)
        self.pending[label] = loop.call_later(seconds, self._expire, label)
        return f"timer {label!r} set for {format_number(float(seconds))} seconds"

    def _expire(self, label: str) -> None:
        self.pending.pop(label, None)
        self.due.pop(label, None)
        if self.on_expiry is not None:
            self.on_expiry(f"Your {label} is done.")

    async def list_timers(self) -> str:
        if not self.due:
            return "no timers running"
        now = dt.datetime.now()
        return "; ".join(
            f"{label}: {(due - now).total_seconds():.0f} s left" for label, due in self.due.items()
        )

    def cancel_all(self) -> None:
        for handle in self.pending.values():
            handle.cancel()
        self.pending.clear()
        self.due.clear()


async def clock() -> str:
    return dt.datetime.now().astimezone().strftime("It is %H:%M on %A, %d %B %Y (%Z).")


def default_registry(notes_dir: Path | None = None, timers: Timers | None = None) -> ToolRegistry:
    """The built-in tools (notes search only when a notes folder is given)."""
    registry = ToolRegistry()
    registry.add(
        Tool("clock", "The current local date and time.", {"type": "object", "properties": {}}, clock)
    )
    registry.add(
        Tool(
            "calculate",
            "Evaluate an arithmetic expression (numbers, + - * / // % **, sqrt, log, sin, pi, ...).",
            {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
            calculate,
        )
    )
    if timers is not None:
        registry.add(
            Tool(
                "set_timer",
                "Start a timer; the user is told when it ends.",
                {
                    "type": "object",
                    "properties": {"seconds": {"type": "number"}, "label": {"type": "string"}},
                    "required": ["seconds"],
                },
                timers.set_timer,
            )
        )
        registry.add(
            Tool(
                "list_timers", "The running timers.", {"type": "object", "properties": {}}, timers.list_timers
            )
        )
    if notes_dir is not None:
        folder = Path(notes_dir)

        async def search_notes(query: str) -> str:
            hits = search_notes_folder(folder, query)
            return "\n\n".join(f"[{name}] {para}" for name, para in hits) or "nothing found in the notes"

        registry.add(
            Tool(
                "search_notes",
                "Search the user's notes for passages about a topic.",
                {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
                search_notes,
            )
        )
    return registry


# ---- the Realtime client's own tools -------------------------------------------------------------------


class ClientToolBridge:
    """Tools declared by a Realtime client: a call is sent to the client (`send_call(call_id, name,
    arguments)`, the server emits `response.function_call_arguments.delta/.done`) and waits for the
    client's `function_call_output` item (`deliver(call_id, output)`)."""

    def __init__(self, send_call: Callable[[str, str, str], None], timeout_s: float = 30.0):
        self.send_call = send_call
        self.timeout_s = timeout_s
        self.waiting: dict[str, asyncio.Future] = {}
        self._count = 0

    def tool(self, declaration: dict) -> Tool:
        """A registry entry for one `session.update` tool declaration {type: function, name, ...}."""
        name = declaration["name"]

        async def run(**arguments) -> str:
            self._count += 1
            call_id = f"call_bg{self._count}"
            future = asyncio.get_running_loop().create_future()
            self.waiting[call_id] = future
            try:
                self.send_call(call_id, name, json.dumps(arguments))
                return await asyncio.wait_for(future, self.timeout_s)
            except TimeoutError:
                return f"error: the client did not answer {name} within {self.timeout_s:.0f} s"
            finally:
                self.waiting.pop(call_id, None)

        return Tool(
            name,
            str(declaration.get("description", "")),
            declaration.get("parameters") or {"type": "object", "properties": {}},
            run,
        )

    def deliver(self, call_id: str, output: str) -> bool:
        """The client's answer; False when no background call waits for it (the client's own call)."""
        future = self.waiting.get(call_id)
        if future is None or future.done():
            return False
        future.set_result(output)
        return True
