"""The package's shape, read from the source (no imports run): imports flow one way through the
floors of dadc/ (docs/ARCHITECTURE.md), no import circle, Gradio only in web/, small units."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dadc"

# floor of each part of dadc/: a module may import its own package and lower floors only
FLOORS = {"core": 0, "synth": 1, "store": 1, "model": 2, "rounds": 3, "studio": 4, "campaign": 4, "hub": 4,
          "web": 5, "__main__": 6}
CORE = {"__init__", "config", "files", "examples", "preprocess"}
MAX_FUNCTION, MAX_CLASS = 60, 200  # lines


def modules():
    """{dotted name under dadc: path}."""
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in sorted(ROOT.rglob("*.py"))}


def part(name):
    """The floor's name of a module: its subpackage, "core" for a top-level module, or "__main__"."""
    head = name.split(".")[0]
    return "core" if head in CORE else head


def imports(name, path):
    """[(imported module under dadc, or a third-party name with a "!" prefix, line)] of one module,
    wherever the import statement stands (functions included)."""
    package = name.split(".")[:-1] if not name.endswith("__init__") else name.split(".")[:-1]
    known = modules()
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(("!" + a.name) if not a.name.startswith("dadc") else a.name[5:], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("dadc"):
                    out.append(("!" + node.module, node.lineno))
                    continue
                base = node.module.split(".")[1:]
            else:
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            for a in node.names:  # `from . import x` names a module; `from .x import y` a name in x
                target = ".".join(base + [a.name])
                if target in known or target + ".__init__" in known:
                    out.append((target if target in known else target + ".__init__", node.lineno))
                else:
                    out.append((".".join(base) if ".".join(base) in known else ".".join(base) + ".__init__",
                                node.lineno))
    return out


def graph():
    return {name: [(t, line) for t, line in imports(name, path) if not t.startswith("!")]
            for name, path in modules().items()}


def test_imports_flow_down_the_floors():
    wrong = []
    for name, targets in graph().items():
        for target, line in targets:
            a, b = part(name), part(target)
            if a != b and FLOORS[b] >= FLOORS[a]:
                wrong.append(f"dadc/{name.replace('.', '/')}.py:{line} imports {target} ({a} -> {b})")
    assert not wrong, "imports up or sideways a floor:\n" + "\n".join(wrong)


def test_no_import_circle():
    g = {name: {t for t, _ in targets if t != name} for name, targets in graph().items()}
    # a package's __init__ imports its own modules: that is the package, not a circle through it
    g = {n: {t for t in ts if not (n.endswith("__init__") and t.startswith(n[:-len("__init__")]))} for n, ts in g.items()}
    state, cycles = {}, []

    def visit(n, path):
        state[n] = "open"
        for t in sorted(g.get(n, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[n] = "done"
    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_gradio_only_in_web():
    """Outside web/ nothing imports Gradio (nor reads its package files): the ML core and the
    trainer run where Gradio is not installed, and a Gradio upgrade touches one package."""
    wrong = [f"{name}:{line} imports {t[1:]}" for name, path in modules().items() if part(name) != "web"
             for t, line in imports(name, path) if t.startswith("!gradio")]
    wrong += [name for name, path in modules().items() if part(name) != "web" and "find_spec(\"gradio\")" in path.read_text()]
    assert not wrong, wrong


def test_units_are_small():
    big = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                most = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
                lines = node.end_lineno - node.lineno + 1
                if lines > most:
                    big.append(f"dadc/{name.replace('.', '/')}.py {node.name}: {lines} lines (at most {most})")
    assert not big, "\n".join(big)


def test_every_subpackage_names_its_parts():
    for init in ROOT.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        for module in init.parent.glob("*.py"):
            if module.name != "__init__.py":
                assert module.name in doc, f"{init.relative_to(ROOT.parent)} does not name {module.name}"


def test_the_app_says_when_gradio_is_not_the_tested_version(caplog):
    from dadc.web import ui

    assert ui.check_gradio_version(ui.TESTED_GRADIO)
    assert not ui.check_gradio_version("99.0.0")
    assert "Gradio 99.0.0 is installed, but this app was tested with Gradio " + ui.TESTED_GRADIO in caplog.text
