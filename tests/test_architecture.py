"""The architecture's promises, checked on the source: no import cycles (lazy imports included),
no private name of one module used by another, no function body over 80 lines, one engine
interface that both engines implement in full, and a new objective that touches one place."""

import ast
from pathlib import Path

import numpy as np
import pytest

import npvae
from npvae import engines, gradcheck, objectives
from npvae.params import Schema

from _helpers import BACKENDS  # noqa: E402

PACKAGE = Path(npvae.__file__).parent
MAX_FUNCTION_LINES = 80


def _modules():
    """``{dotted module name: parsed tree}`` of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text(), str(path)))
    return out


def _resolve(module, node, is_package, modules=()):
    """The absolute module names an import node (at any depth) of ``module`` brings in: for
    ``from P import a, b``, the modules ``P.a``, ``P.b`` that are modules, and ``P`` itself
    when some name is not a module (a package's parent is not counted: Python imports it
    first whatever the package imports)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module
    # "from . import ops" imports the module npvae.ops; "from .ops import sigmoid" imports npvae.ops
    names = [f"{prefix}.{a.name}" for a in node.names]
    return names + ([prefix] if any(n not in modules for n in names) else [])


def _import_graph():
    modules = _modules()
    graph = {}
    for name, (path, tree) in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(tree):                    # every import, at module level or inside a function
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(t for t in _resolve(name, node, is_package, modules) if t in modules and t != name)
        graph[name] = targets
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle_lazy_imports_included():
    graph = _import_graph()
    assert "npvae.engines.registry" in graph["npvae.model"]      # the walker sees real edges
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = _import_graph()
    graph["npvae.params"] = graph["npvae.params"] | {"npvae.model"}      # params -> model -> params
    assert _cycle(graph) is not None


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    offences = []
    for name, (path, tree) in modules.items():
        imported = {}                                  # local name -> npvae module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for target, alias in zip(_resolve(name, node, path.name == "__init__.py", modules), node.names):
                    if alias.name.startswith("_") and not alias.name.startswith("__") and target not in modules:
                        offences.append(f"{path.name}:{node.lineno} imports {alias.name}")
                    if target in modules:
                        imported[alias.asname or alias.name] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not offences, offences


def test_no_function_body_is_longer_than_80_lines():
    long = []
    for name, (path, tree) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                if body:
                    lines = body[-1].end_lineno - body[0].lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


# ---------------------------------------------------------------------------
# One interface, implemented in full by each engine
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_engine_implements_the_whole_interface(backend):
    model = npvae.VAE(input_dim=5, hidden=(4,), latent_dim=2, backend=backend)
    assert isinstance(model.engine, engines.Engine)
    for method in engines.Engine.__abstractmethods__:
        assert getattr(type(model.engine), method) is not getattr(engines.Engine, method)


@pytest.mark.numba
def test_the_numba_engine_composes_the_reference_rather_than_inheriting_it():
    model = npvae.VAE(input_dim=5, hidden=(4,), latent_dim=2, backend="numba")
    assert not isinstance(model.engine, engines.ReferenceEngine)
    assert isinstance(model.engine.reference, engines.ReferenceEngine)
    assert not hasattr(model.engine, "forward")          # no silent reference path under a numba name


def test_an_engine_missing_a_method_cannot_be_made():
    class Partial(engines.Engine):
        name = "partial"

        def encode(self, x):
            return x

    with pytest.raises(TypeError, match="abstract"):
        Partial(None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_belong_to_the_engine_and_survive_a_change_of_backend(backend):
    model = npvae.VAE(input_dim=5, hidden=(4,), latent_dim=2, backend=backend, threads=3)
    assert model.engine.threads == model.threads == 3
    model.backend = "numpy"
    assert model.engine.threads == 3
    with pytest.raises(ValueError, match="threads"):
        model.threads = 0


# ---------------------------------------------------------------------------
# The parameter schema
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [(3,), (4, 3), (5, 4, 3)])
def test_the_schema_is_the_models_parameters(hidden):
    model = npvae.VAE(input_dim=6, hidden=hidden, latent_dim=2)
    schema = Schema(6, hidden, 2)
    assert schema.shapes() == {k: p.shape for k, p in model.params.items()}
    assert list(schema.shapes()) == list(model.params)
    assert schema.count() == sum(p.size for p in model.params.values())
    assert {Schema.network(n) for n in schema.names()} == {"encoder", "decoder"}
    assert schema.hidden_layers("dec") == [f"dec.{i}" for i in range(len(hidden))]


def test_the_schema_refuses_a_name_of_no_network():
    with pytest.raises(ValueError, match="'enc.' or 'dec.'"):
        Schema.network("out.W")


# ---------------------------------------------------------------------------
# A new objective touches one place
# ---------------------------------------------------------------------------
class _PowerMean(objectives.Objective):
    """A test-only bound: ``log mean_s w_s^a / a`` for ``a = 1/2`` (a Renyi-type bound), written
    once here and nowhere else."""

    name = "test-power-mean"
    a = 0.5

    def forward(self, log_w):
        lse, cache = npvae.ops.logsumexp_forward(self.a * log_w)
        return (lse - np.log(log_w.shape[1])) / self.a, cache

    def backward(self, dbound, cache):
        return npvae.ops.logsumexp_backward(dbound, cache)       # d/dlog_w of lse(a log_w) / a


@pytest.fixture
def power_mean():
    objective = objectives.register(_PowerMean())
    yield objective
    del objectives.REGISTRY[objective.name]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_registered_objective_runs_and_checks_on_every_engine(power_mean, backend):
    model = npvae.VAE(input_dim=6, hidden=(5,), latent_dim=2, seed=1, backend=backend)
    rng = np.random.default_rng(0)
    x, eps = rng.random((3, 6)), model.sample_eps(3, 4, rng)
    errors = gradcheck.check_model(model, x, eps, objective=power_mean.name, rng=rng)
    assert max(errors.values()) < 1e-6
    iwae = model.bound(x, eps, "iwae").per_example
    assert np.all(model.bound(x, eps, power_mean.name).per_example <= iwae + 1e-12)   # a = 1/2 sits under IWAE
    assert objectives.check_objective(power_mean.name, "analytic", "stl") == (power_mean.name, "analytic", "stl")
    with pytest.raises(ValueError, match="dreg"):
        objectives.check_objective(power_mean.name, "analytic", "dreg")   # it has no path weights


def test_register_refuses_a_taken_name_and_a_non_objective():
    with pytest.raises(ValueError, match="taken"):
        objectives.register(objectives.IWAE())
    with pytest.raises(ValueError, match="Objective instance"):
        objectives.register("iwae")


@pytest.mark.parametrize("module", ["engines/reference.py", "fast/step.py", "fast/engine.py"])
def test_the_engines_ask_objectives_for_their_rules_never_compare_their_names(module):
    names = set(objectives.REGISTRY) | set(objectives.ESTIMATOR_RULES) | set(objectives.KL)
    tree = ast.parse((PACKAGE / module).read_text())
    compared = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
                for side in [node.left, *node.comparators]
                if isinstance(side, ast.Constant) and side.value in names]
    assert not compared, f"{module} compares objective or estimator names at lines {compared}"
