"""The floor plan of docs/ARCHITECTURE.md, checked on the source: each package imports only from
the packages below it, and no module imports another that imports it back (directly or round a
longer loop). Every import statement counts, at the top of a module or inside a function."""
import ast
import os

import pytest

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bottom to top; a package may import from its own layer and those before it.
LAYERS = ("model", "util", "experiment", "evaluation", "engine")
ENTRY_POINTS = ("train_sccan", "train_base", "test_sccan", "tools", "benchmarks")
PROJECT = set(LAYERS) | set(ENTRY_POINTS)


def _modules():
    """{dotted module name: path} of the library packages and the entry points."""
    found = {}
    for package in LAYERS + ("tools", "benchmarks"):
        for name in sorted(os.listdir(os.path.join(REPOSITORY_ROOT, package))):
            if name.endswith(".py"):
                stem = name[:-3]
                found[package if stem == "__init__" else f"{package}.{stem}"] = os.path.join(package, name)
    for script in ("train_sccan", "train_base", "test_sccan"):
        found[script] = f"{script}.py"
    return found


def _project_imports(path):
    """The project modules that ``path`` imports (first two components of each name)."""
    with open(os.path.join(REPOSITORY_ROOT, path)) as handle:
        tree = ast.parse(handle.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {".".join(name.split(".")[:2]) for name in names if name.split(".")[0] in PROJECT}


MODULES = _modules()
IMPORTS = {name: {imported for imported in _project_imports(path) if imported in MODULES}
           for name, path in MODULES.items()}


def _layer(module):
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


@pytest.mark.parametrize("module", sorted(name for name in MODULES if _layer(name) < len(LAYERS)))
def test_a_library_module_imports_only_from_its_layer_and_below(module):
    upward = sorted(imported for imported in IMPORTS[module] if _layer(imported) > _layer(module))
    assert upward == [], f"{MODULES[module]} imports from a layer above it: {upward}"


def test_the_model_package_imports_nothing_from_the_rest_of_the_project():
    outside = {module: sorted(imported for imported in IMPORTS[module] if not imported.startswith("model"))
               for module in MODULES if module.split(".")[0] == "model"}
    assert {module: names for module, names in outside.items() if names} == {}


def find_cycles(imports):
    """Each module that can reach itself through ``imports`` ({module: imported modules}), with the loop."""
    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for imported in sorted(imports.get(module, ())):
                if imported == start:
                    return path + [start]
                if imported not in seen:
                    seen.add(imported)
                    stack.append((imported, path + [imported]))
        return None

    return [cycle for cycle in map(cycle_from, sorted(imports)) if cycle]


def test_no_import_cycle():
    assert find_cycles(IMPORTS) == []


def test_the_check_sees_an_upward_import_and_a_cycle(tmp_path):
    # The parser itself: a planted upward import and a planted cycle are found.
    (tmp_path / "planted.py").write_text("import evaluation.metrics\nfrom engine import trainer\n"
                                         "def f():\n    from experiment.build import build_dataset\n")
    relative = os.path.relpath(tmp_path / "planted.py", REPOSITORY_ROOT)
    assert _project_imports(relative) == {"evaluation.metrics", "engine", "engine.trainer", "experiment.build"}
    assert _layer("engine.trainer") > _layer("evaluation.metrics") > _layer("experiment.build") > _layer("util.io")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"], ["b", "c", "a", "b"],
                                                                          ["c", "a", "b", "c"]]


def test_the_old_model_names_still_import():
    # Code written for earlier versions (and for BAM-family repositories) imports these from model.
    import model
    from engine.optimization import build_optimizers, poly_learning_rate
    from experiment.models import build_model

    assert (model.build_model, model.build_optimizers, model.poly_learning_rate) == \
        (build_model, build_optimizers, poly_learning_rate)
    with pytest.raises(AttributeError, match="module 'model' has no attribute 'no_such_name'"):
        model.no_such_name


def test_shared_constants_have_one_home():
    # The ignore label and the cosine guard are defined in model/constants.py and imported
    # everywhere else: two definitions could drift apart.
    defined = {}
    for module, path in MODULES.items():
        with open(os.path.join(REPOSITORY_ROOT, path)) as handle:
            tree = ast.parse(handle.read())
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in ("IGNORE_LABEL", "COSINE_EPS"):
                        defined.setdefault(target.id, []).append(module)
    assert defined == {"IGNORE_LABEL": ["model.constants"], "COSINE_EPS": ["model.constants"]}
