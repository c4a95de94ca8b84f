"""Program-of-thought (P-CoT) execution in a sandboxed child process (`checker.md` §5).

Input: the full program text, i.e. the generation prefix `def solution():\\n    \"\"\"{question}\"\"\"\\n`
followed by the generated body. The answer is the return value of `solution()`; printed output
does not count. Like ReFT, `import math` and `import sympy` are prepended, and text after the
first blank line is dropped when the whole text does not parse (a finished program followed by
rambling still runs, `reft.md` §4.3). Under `reft_compat` ReFT's `process_code` is applied
verbatim.

Layers, each enough to stop the escape tests on its own in most cases:
1. a static AST allowlist before running: imports limited to `ALLOWED_MODULES`; no `open`, `exec`,
   `eval`, `compile`, `getattr`, `globals`, …; no attribute starting with `_` (so no dunder
   walks), no `sympify`/`parse_expr`/`lambdify` (sympy's string parsers call `eval`); no `**`
   with a huge constant exponent;
2. restricted builtins and an import function that admits only the allowlist;
3. a forked child (from the worker, which already imported sympy, so a fork costs ~2 ms) with
   its own process group, `PR_SET_PDEATHSIG`, stdio on /dev/null, all other fds closed, cwd in a
   fresh empty temporary directory, `RLIMIT_AS` (memory), `RLIMIT_CPU`, `RLIMIT_FSIZE=0` (no file
   growth), `RLIMIT_NOFILE`, `RLIMIT_NPROC=0` and no core dumps;
4. a network namespace of its own (`unshare(CLONE_NEWNET)`, as root or through a user namespace)
   when the kernel allows it, so there is no interface to connect through;
5. a `sys.addaudithook` hook that refuses sockets, subprocesses, `fork`/`exec`/`system`, file
   writes and deletions, reads outside the Python installation, `ctypes`, and the compilation of
   generated source that mentions an import, a dangerous builtin or a dunder walk (so sympy's
   `lambdify` cannot be turned into code execution through a crafted `Function` name); sympy's
   `parse_expr` (behind `sympify(str)`, `S(str)`) only accepts plain maths strings and evaluates
   them without builtins;
6. a wall-clock deadline in the worker: on expiry the child's whole process group is SIGKILLed.
Not used: `setuid(nobody)`. With a Python installed under a private home (here `/root/.pyenv`)
the child could no longer import the standard-library modules that sympy loads lazily.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from typing import Any

ALLOWED_MODULES = frozenset({
    "math", "cmath", "sympy", "fractions", "itertools", "functools", "decimal", "statistics",
    "operator", "collections", "numbers", "heapq", "bisect", "string", "datetime",
})
DENIED_NAMES = frozenset({
    "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "getattr",
    "setattr", "delattr", "hasattr", "input", "breakpoint", "help", "exit", "quit", "memoryview",
    "dir", "type", "object", "classmethod", "staticmethod", "property", "super", "__builtins__",
    "sympify", "parse_expr", "lambdify", "os", "sys", "subprocess", "socket", "shutil", "ctypes",
    "builtins", "importlib", "signal", "resource", "threading", "multiprocessing", "pathlib", "io",
})
DENIED_ATTRS = frozenset({
    "sympify", "parse_expr", "lambdify", "system", "popen", "spawn", "fork", "exec", "eval",
    "gi_frame", "gi_code", "cr_frame", "ag_frame", "f_back", "f_globals", "f_locals", "f_builtins",
    "f_code", "tb_frame", "tb_next", "mro", "format_map", "load_module", "preview", "autowrap",
    "ufuncify", "init_session", "init_printing", "parse_latex", "parse_mathematica", "sleep",
    "binomial_coefficients_list", "textplot", "plot", "srepr", "pprint", "print_tree", "dotprint",
})
MAX_PROGRAM_CHARS = 20_000
MAX_AST_NODES = 5_000
MAX_CONST_EXPONENT = 10_000
MAX_RESULT_BYTES = 65_536
DEFAULT_MEMORY_MB = 1024

_SAFE_BUILTIN_NAMES = (
    "abs", "all", "any", "ascii", "bin", "bool", "chr", "complex", "dict", "divmod", "enumerate",
    "filter", "float", "format", "frozenset", "hash", "hex", "int", "isinstance", "issubclass",
    "iter", "len", "list", "map", "max", "min", "next", "oct", "ord", "pow", "range", "repr",
    "reversed", "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip", "True", "False",
    "None", "Exception", "ArithmeticError", "ZeroDivisionError", "ValueError", "TypeError",
    "KeyError", "IndexError", "StopIteration", "OverflowError", "AssertionError", "RuntimeError",
    "NameError", "AttributeError", "LookupError", "NotImplementedError", "__build_class__",
)

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1


class ProgramRejected(ValueError):
    """The static check refused the program."""


# --- preprocessing and the static check ----------------------------------------------------

def reft_process_code(code: str) -> str:
    """mwp_ReFT `src/python_engine.py::process_code`, verbatim in behaviour."""
    if "sys.exit" in code:
        code = code.replace("sys.exit", "print")
    out = ["import math", "import sympy"]
    for line in code.split("\n"):
        if line.startswith("def solution"):
            out.append(line)
            continue
        if line.strip() == "":
            break
        out.append(line)
    return "\n".join(out)


def preprocess(program: str, *, reft_compat: bool = False) -> str:
    """Prepare generated text for execution (see the module docstring)."""
    if reft_compat:
        return reft_process_code(program.strip())
    program = program.strip("\n")
    header = "import math\nimport sympy\n"
    try:
        ast.parse(program)
        return header + program
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return header + "\n".join(reft_process_code(program).split("\n")[2:])


def _constant_int(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _constant_int(node.operand)
        return None if inner is None else -inner
    return None


def _pow_depth(node: ast.AST) -> int:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return 1 + max(_pow_depth(node.left), _pow_depth(node.right))
    return 0


def static_check(code: str) -> ast.Module:
    """Parse and vet a program; raise ProgramRejected with the reason."""
    if len(code) > MAX_PROGRAM_CHARS:
        raise ProgramRejected("program too long")
    try:
        tree = ast.parse(code, mode="exec")
    except (SyntaxError, ValueError) as e:
        raise ProgramRejected(f"syntax error: {e.msg if isinstance(e, SyntaxError) else e}") from None
    except (RecursionError, MemoryError):
        raise ProgramRejected("program nested too deeply") from None
    count = 0
    for node in ast.walk(tree):
        count += 1
        if count > MAX_AST_NODES:
            raise ProgramRejected("program too large")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] not in ALLOWED_MODULES:
                    raise ProgramRejected(f"import of {name!r} is not allowed")
            for alias in node.names:
                if alias.name in DENIED_NAMES or alias.name in DENIED_ATTRS or alias.name.startswith("_"):
                    raise ProgramRejected(f"import of {alias.name!r} is not allowed")
        elif isinstance(node, ast.Name):
            if node.id in DENIED_NAMES or node.id.startswith("__"):
                raise ProgramRejected(f"name {node.id!r} is not allowed")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr in DENIED_ATTRS:
                raise ProgramRejected(f"attribute {node.attr!r} is not allowed")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            if any(n.startswith("__") for n in node.names):
                raise ProgramRejected("dunder global")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if _pow_depth(node) > 2:
                raise ProgramRejected("power tower")
            exp, base = _constant_int(node.right), _constant_int(node.left)
            if exp is not None and abs(exp) > MAX_CONST_EXPONENT and base not in (0, 1, -1):
                raise ProgramRejected("huge constant exponent")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "pow":
            if len(node.args) >= 2:
                exp = _constant_int(node.args[1])
                if exp is not None and abs(exp) > MAX_CONST_EXPONENT and len(node.args) == 2:
                    raise ProgramRejected("huge constant exponent")
    return tree


# --- the child -----------------------------------------------------------------------------

def _libc() -> Any:
    import ctypes  # imported in the worker before the audit hook exists
    return ctypes.CDLL(None, use_errno=True)


def _restricted_import(name: str, globals_: Any = None, locals_: Any = None,
                       fromlist: Any = (), level: int = 0) -> Any:
    if level != 0 or name.split(".")[0] not in ALLOWED_MODULES:
        raise ImportError(f"import of {name!r} is not allowed in the sandbox")
    return __import__(name, globals_, locals_, fromlist, level)


def _safe_builtins() -> dict[str, Any]:
    import builtins
    table = {n: getattr(builtins, n) for n in _SAFE_BUILTIN_NAMES}
    table["__import__"] = _restricted_import
    table["print"] = lambda *a, **k: None  # printed output never counts
    return table


_PARSE_OK_RE = re.compile(r"[0-9A-Za-z\s.+\-*/^()]{0,200}")
_PARSE_WORDS = frozenset({"I", "E", "pi", "oo", "sqrt", "exp", "log", "sin", "cos", "tan"})
_STATE = {"trusted_eval": False}
_SAFE_IMPORT_SOURCE_RE = re.compile(
    r"(?:from\s+(?:mpmath|math|cmath|sympy)(?:\.\w+)*\s+import\s+[\w*, ]+|"
    r"import\s+(?:mpmath|math|cmath|sympy)(?:\.\w+)*(?:\s+as\s+\w+)?)"
)
_DANGEROUS_SOURCE_RE = re.compile(
    r"__import__|__subclasses__|__globals__|__builtins__|__base__|__bases__|__mro__|__dict__|"
    r"__getattribute__|__code__|__closure__|__loader__|__spec__|\b(?:import|os|sys|subprocess|"
    r"_posixsubprocess|posix|nt|fork|system|popen|open|eval|exec|execfile|compile|getattr|setattr|"
    r"delattr|globals|locals|vars|breakpoint|input|ctypes|socket|marshal|pickle|shutil|"
    r"importlib|builtins|signal|resource|mmap|pty)\b"
)


def _guard_parse_expr(original: Any) -> Any:
    """Wrap sympy's `parse_expr` (which `eval`s) so that only plain maths strings reach it.

    `S("1/3")`, `nsimplify(0.125)` and `sympify("x**2")` keep working; anything with quotes,
    underscores, brackets or words beyond single letters and a few function names is refused,
    and the evaluation sees sympy's names only, with no builtins.
    """
    import sympy

    names = {k: getattr(sympy, k) for k in sympy.__all__}
    names["__builtins__"] = {}

    def parse_expr(s: Any, local_dict: Any = None, transformations: Any = None,
                   global_dict: Any = None, evaluate: bool = True) -> Any:
        if not isinstance(s, str) or not _PARSE_OK_RE.fullmatch(s):
            raise PermissionError("sandbox: this string cannot be parsed")
        for word in re.findall(r"[A-Za-z]{2,}", s):
            if word not in _PARSE_WORDS:
                raise PermissionError(f"sandbox: {word!r} cannot be parsed")
        kwargs: dict[str, Any] = {"local_dict": {}, "global_dict": dict(names), "evaluate": evaluate}
        if transformations is not None:
            kwargs["transformations"] = transformations
        _STATE["trusted_eval"] = True  # sympy compiles the vetted string: let the audit hook pass it
        try:
            return original(s, **kwargs)
        finally:
            _STATE["trusted_eval"] = False

    return parse_expr


def _make_audit_hook(allowed_code: Any) -> Any:
    # the Python installation only (stdlib, site-packages), for the modules sympy imports lazily;
    # not the worker's sys.path, which may hold the repository itself
    paths = sysconfig.get_paths()
    read_roots = tuple(os.path.abspath(p) + os.sep for p in
                       {sys.prefix, sys.base_prefix, sys.exec_prefix, paths["stdlib"], paths["platstdlib"],
                        paths["purelib"], paths["platlib"]})
    denied_prefixes = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn",
                       "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.remove",
                       "os.unlink", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                       "os.truncate", "os.link", "os.symlink", "os.putenv", "os.unsetenv",
                       "os.chdir", "os.chroot", "os.setxattr",
                       "os.removexattr", "os.utime", "shutil.", "ctypes.", "pty.", "fcntl.",
                       "mmap.", "sys.settrace", "sys.setprofile", "sys.addaudithook",
                       "code.__new__", "function.__new__", "pickle.", "glob.",
                       "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "sqlite3.",
                       "resource.setrlimit", "signal.", "builtins.input", "cpython.run_")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                raise PermissionError("sandbox: file writes are not allowed")
            if isinstance(flags, int) and flags & write_flags:
                raise PermissionError("sandbox: file writes are not allowed")
            if isinstance(path, int):
                raise PermissionError("sandbox: opening descriptors is not allowed")
            p = os.path.abspath(os.fsdecode(path)) if path is not None else ""
            if not p.startswith(read_roots):
                raise PermissionError("sandbox: file reads outside the Python installation")
            return
        if event in ("os.listdir", "os.scandir"):  # importlib lists package directories
            path = args[0] if args else None
            p = os.path.abspath(os.fsdecode(path)) + os.sep if isinstance(path, (str, bytes)) else ""
            if not p.startswith(read_roots):
                raise PermissionError("sandbox: listing directories is not allowed")
            return
        if event == "compile":
            # Code generated at run time: the standard library (dataclasses, namedtuple) and
            # sympy (polys/monomials.py) do it legitimately, so the source is vetted instead. What
            # an attacker needs to escape (a builtin such as __import__/open/eval, or a dunder
            # walk to the unaudited `_posixsubprocess.fork_exec`) cannot be spelled without one
            # of the denied tokens. `exec` of the resulting code objects is then allowed.
            if _STATE["trusted_eval"]:
                return
            source = args[0] if args else None
            if isinstance(source, bytes):
                source = source.decode("utf-8", "replace")
            if isinstance(source, str) and _SAFE_IMPORT_SOURCE_RE.fullmatch(source.strip()):
                return  # lambdify's "from mpmath import *" namespace set-up
            if not isinstance(source, str) or _DANGEROUS_SOURCE_RE.search(source):
                raise PermissionError("sandbox: compiling this generated code is not allowed")
            return
        if event.startswith(denied_prefixes):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


def _to_jsonable(value: Any) -> dict[str, Any]:
    """Describe the return value: numbers exactly (floats at 12 significant digits)."""
    from fractions import Fraction
    from decimal import Decimal
    import sympy

    if value is None:
        return {"kind": "none", "value": None}
    if isinstance(value, bool):
        return {"kind": "text", "value": str(value)}
    if isinstance(value, int):
        return {"kind": "number", "value": str(value)}
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {"kind": "nonfinite", "value": str(value)}
        # binary noise such as 0.1 + 0.2 is not an error (checker.md §5)
        return {"kind": "number", "value": format(value, ".12g")}
    if isinstance(value, Fraction):
        return {"kind": "number", "value": f"{value.numerator}/{value.denominator}"}
    if isinstance(value, Decimal):
        return {"kind": "number", "value": str(value)}
    if isinstance(value, sympy.Basic):
        if value.is_Integer:
            return {"kind": "number", "value": str(value.p)}
        if value.is_Rational:
            return {"kind": "number", "value": f"{value.p}/{value.q}"}
        if getattr(value, "is_number", False) and not value.free_symbols:
            if value.is_real is False:
                return {"kind": "text", "value": str(value)[:1000]}
            try:
                return {"kind": "number", "value": format(float(sympy.N(value, 20)), ".12g")}
            except (TypeError, ValueError, OverflowError):
                return {"kind": "text", "value": str(value)[:1000]}
        return {"kind": "text", "value": str(value)[:1000]}
    if isinstance(value, str):
        return {"kind": "text", "value": value[:1000]}
    if isinstance(value, (list, tuple, set, frozenset)):
        return {"kind": "text", "value": repr(value)[:1000]}
    return {"kind": "text", "value": str(value)[:1000]}


def _child(code_obj: Any, result_fd: int, workdir: str, timeout: float, memory_mb: int) -> None:
    """Runs in the forked child; never returns (os._exit)."""
    import resource

    os.setpgid(0, 0)
    try:
        libc = _libc()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # a network namespace with nothing in it; as non-root this needs a user namespace too
        if libc.unshare(_CLONE_NEWNET) != 0:
            libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
    except (OSError, AttributeError):
        pass  # the audit hook still refuses sockets
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 4096)
    os.chdir(workdir)
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * page
    limit = mapped + memory_mb * 2**20  # memory_mb on top of what the worker already maps
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for res, value in ((resource.RLIMIT_AS, limit), (resource.RLIMIT_CPU, int(timeout) + 2),
                       (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NOFILE, 64),
                       (resource.RLIMIT_NPROC, 0), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    sys.set_int_max_str_digits(4300)
    import sympy.parsing.sympy_parser as sp_parser
    sp_parser.parse_expr = _guard_parse_expr(sp_parser.parse_expr)  # sympify(str) imports it at call time
    sys.addaudithook(_make_audit_hook(code_obj))
    env: dict[str, Any] = {"__builtins__": _safe_builtins(), "__name__": "__sandbox__"}
    try:
        exec(code_obj, env)  # noqa: S102 - the vetted program, inside the sandbox child
        fn = env.get("solution")
        if not callable(fn):
            payload = {"kind": "error", "value": None, "error": "no solution() defined"}
        else:
            payload = _to_jsonable(fn())
    except MemoryError:
        payload = {"kind": "error", "value": None, "error": "memory limit"}
    except RecursionError:
        payload = {"kind": "error", "value": None, "error": "recursion limit"}
    except BaseException as e:  # the program's own exception: score 0
        payload = {"kind": "error", "value": None, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    data = json.dumps(payload).encode()[:MAX_RESULT_BYTES]
    os.write(result_fd, data)
    os._exit(0)


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Read from fd until EOF or the deadline; returns (data, finished)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), False
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            return b"".join(chunks), False
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), True
        size += len(chunk)
        if size <= MAX_RESULT_BYTES:
            chunks.append(chunk)


def run_program(program: str, *, timeout: float, memory_mb: int = DEFAULT_MEMORY_MB,
                reft_compat: bool = False) -> dict[str, Any]:
    """Execute `solution()` of a P-CoT program in the sandbox. Call only from the worker process.

    Returns a dict with `kind` (number|text|none|nonfinite|error|timeout|rejected), `value`
    (a string or None) and `error`.
    """
    code = preprocess(program, reft_compat=reft_compat)
    try:
        static_check(code)
        code_obj = compile(code, "<solution>", "exec")
    except ProgramRejected as e:
        return {"kind": "rejected", "value": None, "error": str(e)}
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return {"kind": "rejected", "value": None, "error": f"compile: {type(e).__name__}"}
    workdir = tempfile.mkdtemp(prefix="rlft-sandbox-")
    read_fd, write_fd = os.pipe()
    deadline = time.monotonic() + timeout
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            _child(code_obj, write_fd, workdir, timeout, memory_mb)
        finally:
            os._exit(1)
    os.close(write_fd)
    try:
        try:
            os.setpgid(pid, pid)  # also done in the child; whichever runs first wins the race
        except OSError:
            pass
        data, finished = _read_until(read_fd, deadline)
    finally:
        os.close(read_fd)
        try:
            os.killpg(pid, signal.SIGKILL)  # the whole group: nothing may outlive the check
        except (ProcessLookupError, PermissionError):
            pass
        os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
    if not finished:
        return {"kind": "timeout", "value": None, "error": f"program exceeded {timeout:g}s"}
    try:
        return json.loads(data.decode())
    except (ValueError, UnicodeDecodeError):
        return {"kind": "error", "value": None, "error": "program crashed (no result)"}
