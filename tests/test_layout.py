"""The house rules of the layout, read from the source with `ast` (nothing is imported): the modules' imports form
no circle, the top level holds the entry scripts and the field's modules only, no function outside the tests is
longer than a screen, and a flag is declared in one way only (cli.FLAGS, turned into argparse by cli.add_flags)."""
import ast
import glob
import os

from conftest import ROOT

PACKAGE = 'condensation'
MAX_TOP_LEVEL = 15
MAX_FUNCTION_LINES = 80


def _sources(*patterns):
    return sorted(p for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _tree(path):
    with open(path) as f:
        return ast.parse(f.read(), path)


def import_graph():
    """module -> the project modules it imports (anywhere in its body, functions included)."""
    paths = _sources('*.py', f'{PACKAGE}/**/*.py')
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:  # `from package import module` imports the module
                    full = f'{node.module}.{a.name}'
                    edges.add(full if full in modules else node.module)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = 'open'
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 'open':
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        state[m] = 'done'
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_import_circle_among_the_projects_modules():
    graph = import_graph()
    assert 'utils' in graph and f'{PACKAGE}.original_api' in graph['utils']  # the graph sees the facade's imports
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_the_library_never_imports_the_top_level_modules():
    # the package stands on its own: the top-level utils/networks/augment are facades for the field's scripts
    top = {_module_name(p) for p in _sources('*.py')}
    for module, edges in import_graph().items():
        if module.startswith(PACKAGE):
            assert not edges & top, f'{module} imports {sorted(edges & top)}'


def test_the_top_level_holds_the_entry_scripts_and_the_fields_modules_only():
    top = [os.path.basename(p) for p in _sources('*.py')]
    assert len(top) <= MAX_TOP_LEVEL, top
    for name in ('utils.py', 'networks.py', 'augment.py', 'main.py', 'main_DM.py', 'gen_condense.py',
                 'pool_match.py', 'validate.py', 'main_ITGAN.py', 'CL_DM.py', 'evaluate.py', 'reproduce.py'):
        assert name in top


def test_every_package_says_what_it_holds():
    for init in _sources(f'{PACKAGE}/**/__init__.py'):
        doc = ast.get_docstring(_tree(init))
        assert doc and len(doc.split()) >= 20, init


def test_no_function_longer_than_a_screen_outside_the_tests():
    long = []
    for path in _sources('*.py', f'{PACKAGE}/**/*.py', 'bench/*.py'):
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f'{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({lines} lines)')
    assert not long, long


def _add_argument_calls(tree):
    """(enclosing function name or None, the call) for every `.add_argument(...)` in the tree."""
    found = []

    def walk(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and getattr(child.func, 'attr', None) == 'add_argument':
                found.append((function, child))
            walk(child, inner)

    walk(tree, None)
    return found


def _flag_names():
    """The names cli.FLAGS declares (its dict literal's keys)."""
    for node in _tree(os.path.join(ROOT, PACKAGE, 'run', 'cli.py')).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == 'FLAGS':
            return {k.value for k in node.value.keys}
    raise AssertionError('cli.py has no FLAGS table')


def test_flags_are_declared_one_way_only():
    # In the library a flag exists only as an entry of cli.FLAGS, which cli.add_flags turns into argparse; a
    # module's own `python -m` command (under `if __name__ == '__main__'`) declares its positional arguments.
    for path in _sources(f'{PACKAGE}/**/*.py'):
        tree = _tree(path)
        main_blocks = [n for n in tree.body if isinstance(n, ast.If) and 'main' in ast.unparse(n.test)]
        allowed = {id(c) for block in main_blocks for _, c in _add_argument_calls(block)}
        for function, call in _add_argument_calls(tree):
            assert function == 'add_flags' or id(call) in allowed, \
                f'{os.path.relpath(path, ROOT)}:{call.lineno} declares a flag outside cli.FLAGS'
    # An entry script declares only the flags that it alone has, never one of cli.FLAGS a second time.
    flags = _flag_names()
    assert {'dataset', 'ipc', 'data', 'batch_size', 'epochs_eval', 'pool'} <= flags  # DiM's flags are there too
    for path in _sources('*.py'):
        for _, call in _add_argument_calls(_tree(path)):
            dest = next((k.value.value for k in call.keywords if k.arg == 'dest'), None)
            name = dest or call.args[0].value.lstrip('-').replace('-', '_')  # what argparse names it
            assert name not in flags, f'{os.path.basename(path)}:{call.lineno} declares --{name} again'
