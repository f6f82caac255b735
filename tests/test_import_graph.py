"""No import circle inside bit_jax: every import, at module level or inside a function, read
from the source with `ast` (nothing is imported), must leave the modules a DAG."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def import_graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  """{module: the modules of `package` it imports}, for every .py under `root / package`."""
  files = {_module_name(path, root): path for path in (root / package).rglob("*.py")}
  graph = {}
  for module, path in files.items():
    is_package = path.name == "__init__.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        imported.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: from the module's package, `level - 1` packages up.
          parts = module.split(".")[:len(module.split(".")) - node.level + is_package]
          base = ".".join(parts + ([base] if base else []))
        # `from p import name`: the submodule p.name if there is one, else p itself.
        imported.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base
                        for a in node.names)
    graph[module] = {m for m in imported if m in files and m != module}
  return graph


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None when it has none (depth-first)."""
  done, path = set(), []

  def visit(node):
    if node in path:
      return path[path.index(node):] + [node]
    if node in done:
      return None
    path.append(node)
    for successor in sorted(graph[node]):
      cycle = visit(successor)
      if cycle:
        return cycle
    path.pop()
    done.add(node)
    return None

  return next(filter(None, map(visit, sorted(graph))), None)


def test_bit_jax_has_no_import_cycle():
  graph = import_graph(ROOT, "bit_jax")
  assert "bit_jax.cpu_kernels" in graph["bit_jax.models"]  # The graph sees lazy imports too.
  assert "bit_jax.loop.divergence" in graph["bit_jax.loop"]  # And submodules by `from`.
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_form_of_import_is_an_edge(tmp_path):
  files = {"__init__.py": "", "a.py": "from pkg import b\n", "b.py": "import pkg.c as c\n",
           "c.py": "def f():\n  from pkg.sub.d import g\n", "sub/__init__.py": "",
           "sub/d.py": "from .. import e\ng = 1\n", "e.py": "from .sub import d\n"}
  for name, text in files.items():
    (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pkg" / name).write_text(text)
  graph = import_graph(tmp_path, "pkg")
  assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"},
                   "pkg.c": {"pkg.sub.d"}, "pkg.sub": set(), "pkg.sub.d": {"pkg.e"},
                   "pkg.e": {"pkg.sub.d"}}
  assert find_cycle(graph) == ["pkg.sub.d", "pkg.e", "pkg.sub.d"]
  (tmp_path / "pkg" / "e.py").write_text("from .sub.d import g\n")  # A name, not a module.
  assert import_graph(tmp_path, "pkg")["pkg.e"] == {"pkg.sub.d"}
  (tmp_path / "pkg" / "sub" / "d.py").write_text("g = 1\n")
  assert find_cycle(import_graph(tmp_path, "pkg")) is None
