"""Scenario modules' configuration applied before their checks run: a module's own at its
start (``_mtls_configure_ahead``, the ``configure_ahead`` mark), and later modules' while
earlier ones run (``--configure-ahead``, ``Lookahead``). A plugin of plugin.py's.

Why: a check's consistency window runs from the last configuration change of its module
(Target.last_change), and against a broken gateway the first failing check of each module
waits that window out (issue 21, benchmarks/results-2026-12-06.md). Modules run one after
another, so a module configured only when pytest reaches it adds a whole window to the
run; configured while earlier modules run, its window has passed by the time its checks
ask, and a failing check is decided by its first answer. The checks do not change: each
still gives the gateway a whole window after its module's last change.

pytest sets a module's fixtures up only when the module's first test runs. So this module
evaluates a later module's module-scoped fixtures itself, with the fixture functions and
the arguments pytest would use (the same session fixture values; the module's own
fixtures, evaluated here in the same way), inside that module's change scope, and hands
each value over when pytest asks for it (``handing_over``, from the plugin's
pytest_fixture_setup hook): pytest then caches it, reports its error and tears it down as
its own. What a fixture raised is raised again when pytest asks for it, so a test sees
the same error or skip as without this.

A module is left to pytest, as without ``--configure-ahead``, when one of its fixtures
needs what only pytest's setup of that module gives (params, a fixture of a narrower or a
package scope, a part of ``request`` a module fixture does not get here). Then what was
made for it is torn down first.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .outputs import features_of
from ._turns import Turns
from .plugin import SUITE_KEY

#: A module whose configuration ahead takes this long (s) gets its own progress line.
SLOW_MODULE = 5.0

#: What a fixture may raise and still be a result pytest reports (as pytest's TEST_OUTCOME).
RESULTS = (Exception, pytest.skip.Exception, pytest.fail.Exception, pytest.xfail.Exception)


class NotAhead(BaseException):
    """A module fixture needs what only pytest's own setup of the module gives.

    A BaseException: the module's configuration fixture keeps its fixtures' errors for
    their tests (it suppresses Exception), and this one must reach ``Lookahead.configure``.
    """


class _Value:
    """One fixture's value (or error) made ahead, and how to tear it down."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.teardown: list[Callable[[], None]] = []

    def finish(self) -> None:
        while self.teardown:
            self.teardown.pop()()

    def stand_in(self) -> Callable[..., Iterator[Any]]:
        """The fixture function pytest calls in place of the real one: it gives the value
        (or raises the error) made ahead, and tears it down when pytest tears it down."""

        def made_ahead(**_: Any) -> Iterator[Any]:
            if self.error is not None:
                raise self.error
            try:
                yield self.value
            finally:
                self.finish()

        return made_ahead


def _finish_generator(name: str, generator: Iterator[Any]) -> Callable[[], None]:
    def finish() -> None:
        try:
            next(generator)
        except StopIteration:
            return
        raise ValueError(f"fixture {name} has more than one yield")

    return finish


class _Request:
    """What a module fixture evaluated ahead gets as ``request``: the parts a module-scoped
    fixture may use. Anything else leaves the module to pytest (NotAhead)."""

    def __init__(self, module: _Module, name: str, teardown: list[Callable[[], None]]) -> None:
        self._module = module
        self._teardown = teardown
        self.fixturename = name
        self.scope = "module"
        self.node = module.node
        self.module = module.node.obj
        self.path = module.node.path
        self.config = module.node.config
        self.session = module.node.session
        self.keywords = module.node.keywords

    # A fixture's value may keep its request and use it later (a factory that asks for
    # another fixture when called): once pytest runs the module, pytest's own request does.
    def getfixturevalue(self, name: str) -> Any:
        live = self._module.live
        return live.getfixturevalue(name) if live is not None else self._module.value(name)

    def addfinalizer(self, finalizer: Callable[[], object]) -> None:
        live = self._module.live
        if live is not None:
            live.addfinalizer(finalizer)
        else:
            self._teardown.append(finalizer)

    def __getattr__(self, name: str) -> Any:
        live = self._module.live
        if live is not None:
            return getattr(live, name)
        raise NotAhead(f"request.{name} (fixture {self.fixturename})")


class _Module:
    """One scenario module's fixtures, made ahead."""

    def __init__(self, node: pytest.Module, items: list[pytest.Item], current: pytest.FixtureRequest) -> None:
        self.node = node
        self._current = current
        self.definitions: dict[str, Any] = {}
        for item in items:
            # pytest's own record of each test's fixtures (as _mtls_configure_ahead below).
            for name, definitions in item._fixtureinfo.name2fixturedefs.items():
                if not definitions or definitions[-1].scope not in ("module", "session"):
                    continue  # a test's own (its parameters among them): never made ahead
                if self.definitions.setdefault(name, definitions[-1]) is not definitions[-1]:
                    raise NotAhead(f"fixture {name} is not the same for every test of the module")
        self.values: dict[Any, _Value] = {}  # FixtureDef -> value, in the order made
        #: pytest's request for the module's configuration, once pytest runs the module.
        self.live: pytest.FixtureRequest | None = None

    def value(self, name: str) -> Any:
        definition = self.definitions.get(name) or self._lookup(name)
        if definition is None:
            raise NotAhead(f"fixture {name} is none of the module's")
        if definition.params is not None:
            raise NotAhead(f"fixture {name} has params")
        if definition.scope == "session":
            return self._session_value(name, definition)
        if definition.scope != "module":
            raise NotAhead(f"fixture {name} has scope {definition.scope}")
        made = self.values.get(definition)
        if made is None:
            made = self._make(name, definition)
        if made.error is not None:
            raise made.error
        return made.value

    def _lookup(self, name: str) -> Any:
        """A fixture no test of the module names (a configure_ahead setup's own), as pytest
        finds it for the module."""
        manager = self.node.session._fixturemanager
        try:
            definitions = manager.getfixturedefs(name, self.node)
        except (TypeError, AttributeError):  # pytest 8.0 takes the node id
            definitions = manager.getfixturedefs(name, self.node.nodeid)
        if definitions:
            self.definitions[name] = definitions[-1]
            return definitions[-1]
        return None

    def _session_value(self, name: str, definition: Any) -> Any:
        # The module running now gets it from pytest: the same value, as long as the same
        # definition answers there (a module may override a name for itself).
        value = self._current.getfixturevalue(name)
        cached = definition.cached_result
        if cached is None or cached[2] is not None or cached[0] is not value:
            raise NotAhead(f"session fixture {name} is another one in the module running now")
        return value

    def _make(self, name: str, definition: Any) -> _Value:
        made = _Value()
        kwargs = {arg: _Request(self, name, made.teardown) if arg == "request" else self.value(arg)
                  for arg in definition.argnames}
        self.values[definition] = made
        function = definition.func
        try:
            if inspect.isgeneratorfunction(function):
                generator = function(**kwargs)
                made.value = next(generator)
                made.teardown.append(_finish_generator(name, generator))
            else:
                made.value = function(**kwargs)
        except RESULTS as exc:
            made.error = exc
        return made

    def abandon(self) -> None:
        """Tear down what was made, latest first (the module is left to pytest)."""
        for made in reversed(list(self.values.values())):
            with contextlib.suppress(*RESULTS):
                made.finish()
        self.values.clear()


class Lookahead:
    """Configures the scenario modules after the running one, ``count`` at a time (None: all)."""

    #: The fixture that configures a module (plugin.py ``_mtls_configure_ahead``).
    CONFIGURE = "_mtls_configure_ahead"

    def __init__(self, count: int | None, *, scoped: Callable[[str], contextlib.AbstractContextManager],
                 eligible: Callable[[pytest.Item], bool], progress: Callable[[str], None]) -> None:
        self.count = count
        self._scoped = scoped
        self._eligible = eligible
        self._progress = progress
        self._modules: dict[str, _Module | None] = {}  # module node id -> made ahead (None: left to pytest)
        self._reached: set[str] = set()

    def handing_over(self, fixturedef: Any, request: pytest.FixtureRequest) -> _Value | None:
        """What was made ahead for this fixture of the module pytest sets up now, if anything."""
        if fixturedef.scope != "module":
            return None
        made = self._modules.get(request.node.nodeid)
        return None if made is None else made.values.pop(fixturedef, None)

    def reached(self, request: pytest.FixtureRequest, own: dict[str, object]) -> None:
        """pytest configures the module ``request.node``: configure those after it, then run
        the rest of the setups of the module (``own``, its configure_ahead fixture's value)
        and of theirs, together (``_finish_setups``).

        In that order so that every setup's checks find the configuration of every module
        made: a check's window runs from its module's last change, and the modules were
        configured one after another before any check waits."""
        node = request.node
        self._reached.add(node.nodeid)
        made = self._modules.get(node.nodeid)
        if made is not None:
            made.live = request
            # What pytest never asks for (its tests were skipped at setup) goes with the module.
            node.addfinalizer(made.abandon)
        following = self._following(node)
        start = time.monotonic()
        done = []
        for number, (module, items) in enumerate(following, 1):
            began = time.monotonic()
            if self.configure(module, items, request):
                done.append(module)
                if time.monotonic() - began >= SLOW_MODULE:
                    # A gateway that takes long to program a Gateway: say what the wait is for.
                    self._progress(f"configured {module.name} ahead in {time.monotonic() - began:.1f} s "
                                   f"({number} of {len(following)})")
        if done:
            self._progress(f"configured {len(done)} scenario module(s) ahead in {time.monotonic() - start:.1f} s "
                           f"(--configure-ahead): {', '.join(module.name for module in done)}")
        theirs = []
        for module in done:
            try:
                theirs.append(self._modules[module.nodeid].value(self.CONFIGURE))
            except RESULTS:
                pass  # the configuration failed: pytest raises it for the module's tests
        start = time.monotonic()
        checked = _finish_setups(own, *theirs)
        if checked and theirs:
            self._progress(f"checked and changed the configuration of {checked} test(s) in "
                           f"{time.monotonic() - start:.1f} s (their setups' part after yield, together)")

    def _following(self, node: pytest.Module) -> list[tuple[pytest.Module, list[pytest.Item]]]:
        """The modules after ``node`` in the run's order that have tests to configure for
        and are not configured yet, as many as there is room for."""
        order: dict[pytest.Module, list[pytest.Item]] = {}
        for item in node.session.items:
            module = item.getparent(pytest.Module)
            if module is not None:
                items = order.setdefault(module, [])
                if self._eligible(item):
                    items.append(item)
        if node not in order:
            return []
        after = [m for m in list(order)[list(order).index(node) + 1:] if order[m]]
        waiting = [m for m in after if m.nodeid in self._modules and m.nodeid not in self._reached]
        room = len(after) if self.count is None else max(0, self.count - len(waiting))
        return [(m, order[m]) for m in after if m.nodeid not in self._modules][:room]

    def configure(self, node: pytest.Module, items: list[pytest.Item], current: pytest.FixtureRequest) -> bool:
        """Make ``node``'s configuration fixture and all it asks for, in its change scope."""
        self._modules[node.nodeid] = None
        with self._scoped(node.nodeid):
            try:
                made = _Module(node, items, current)
                self._modules[node.nodeid] = made  # an interrupt from here on: abandon_unreached
                made.value(self.CONFIGURE)
            except NotAhead as exc:
                made = self._modules.pop(node.nodeid)
                self._modules[node.nodeid] = None
                if made is not None:
                    made.abandon()
                self._progress(f"{node.name}: configured when it runs, not ahead ({exc})")
                return False
            except RESULTS:
                pass  # kept for pytest to raise where it asks for the fixture
        return True

    def abandon_unreached(self) -> None:
        """At the session's end: tear down what was made for modules pytest never reached."""
        for nodeid, made in reversed(list(self._modules.items())):
            if made is not None and nodeid not in self._reached:
                made.abandon()


# -- the plugin: a module's own configuration ahead of its first test, and later modules' --
class _AheadFailed:
    """What a configure_ahead setup raised, kept in place of its result for its test."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


@pytest.fixture(scope="module", autouse=True)
def _mtls_configure_ahead(request: pytest.FixtureRequest) -> dict[str, object]:
    """A scenario module's configuration, all of it applied before its first test runs:
    the module-scoped fixtures its tests use (Gateways, Routes, backends), then the setups
    of its tests marked configure_ahead (each test's own objects).

    Why: a check's consistency window runs from the harness's last configuration change
    (expect.py ``eventually``). Configured test by test, or fixture by fixture as tests
    first ask for them, a broken gateway costs a whole window per change followed by a
    failing check, one after the other; configured together, the module's first failing
    check waits out the window and the later ones find it elapsed (issue 21,
    benchmarks/results-2026-12-06.md). The checks do not change: each still gives the
    gateway a whole window after the last change before a wrong answer counts.

    Only tests of the harness (a ``features`` mark) whose features the implementation
    supports and that are not marked skip: configuring a test that will be skipped would
    only cost time, or fail on an implementation without the feature. A fixture or setup
    that raises is left to its own tests: pytest keeps a fixture's error for every test
    that asks for it, and a setup's error is raised in its test's call.

    A setup that checks the state before a change and then makes it (a test of what a
    change does) is a generator: up to its ``yield`` it configures, after it it checks
    and changes, and what it returns is the test's. Every setup's part before ``yield``
    runs first (with --configure-ahead, every later module's too), then the parts after
    it: their checks then find the configuration made a while ago, and against a broken
    gateway each is decided by its first answer instead of waiting a window after the
    setup before it. The part after ``yield`` and the test's call are the test's own
    change scope (Target.change_scope): they change only the test's own objects (its own
    Gateway, policy, ConfigMap or grant), so the module's other tests do not wait for
    those changes, while the test's checks wait for its module's changes and its own.
    """
    if not _runs_whole_modules(request.config):
        return {}  # each test configures itself (mtls_configured); see _runs_whole_modules
    items = [item for item in request.session.items
             if item.parent is not None and item.getparent(pytest.Module) is request.node and _configured(item)]
    for item in items:
        for name in item.fixturenames:
            # pytest's own record of the test's fixtures: no public API says a fixture's scope.
            definitions = item._fixtureinfo.name2fixturedefs.get(name) or ()
            if (name != "_mtls_configure_ahead" and definitions and definitions[-1].scope == "module"
                    and definitions[-1].params is None):
                with contextlib.suppress(Exception, pytest.skip.Exception, pytest.fail.Exception):
                    request.getfixturevalue(name)
    configured = {item.nodeid: _configure(item, request) for item in items
                  if item.get_closest_marker("configure_ahead") is not None}
    if isinstance(request, _Request) or _lookahead_of(request.config) is not None:
        return configured  # the Lookahead finishes the setups once it has configured the modules after this one
    _finish_setups(configured)
    return configured


def _configured(item: pytest.Item) -> bool:
    """Whether a module's configuration includes this test's: a test of the harness (a
    ``features`` mark) whose features the implementation supports, not marked skip."""
    suite = item.config.stash[SUITE_KEY]
    return bool(item.get_closest_marker("features") or item.get_closest_marker("configure_ahead")) \
        and item.get_closest_marker("skip") is None and not suite.unsupported(features_of(item))


def _lookahead(config: pytest.Config) -> Lookahead | None:
    """--configure-ahead's modules, in a process that runs the whole session's modules in
    order (no xdist: a worker does not know which module it gets next)."""
    count = config.getoption("configure_ahead", None)
    if count == 0 or hasattr(config, "workerinput") or config.getoption("numprocesses", None):
        return None
    suite = config.stash[SUITE_KEY]
    return Lookahead(count, scoped=suite.changes_of, eligible=_configured, progress=suite.progress)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request: pytest.FixtureRequest):
    """A module fixture made ahead (--configure-ahead) is handed to pytest, which caches,
    reports and tears it down as its own; once a module's configuration is set up, the
    modules after it are configured."""
    lookahead = _lookahead_of(request.config)
    if lookahead is None:
        return (yield)
    made = lookahead.handing_over(fixturedef, request)
    if made is None:
        result = yield
    else:
        real = fixturedef.func
        fixturedef.func = made.stand_in()  # pytest's own call of it: cached and torn down as pytest does
        try:
            result = yield
        finally:
            fixturedef.func = real
    if fixturedef.argname == Lookahead.CONFIGURE:
        lookahead.reached(request, result)
    return result


def _runs_whole_modules(config: pytest.Config) -> bool:
    """Whether this process runs every selected test of a module it starts: without
    xdist, or with a --dist that keeps a module on one worker. Under --dist load (and
    loadgroup, worksteal) a worker gets single tests, and configuring the module's others
    ahead would configure them on every worker; there the workers' windows overlap anyway."""
    return not hasattr(config, "workerinput") or config.getoption("dist", "no") in ("loadscope", "loadfile")


def _configure(item: pytest.Item, request: pytest.FixtureRequest) -> object:
    """Run a test's configure_ahead setup, up to its ``yield`` if it is a generator (then a
    _Rest); what it raised stays with the test (its call)."""
    setup = item.get_closest_marker("configure_ahead").kwargs["setup"]
    params = getattr(item, "callspec", None)
    params = params.params if params is not None else {}
    try:
        made = setup(**{name: params[name] if name in params else request.getfixturevalue(name)
                        for name in inspect.signature(setup).parameters})
        if not inspect.isgenerator(made):
            return made
        next(made)
    except StopIteration as stop:
        return stop.value  # a generator setup that returned before its yield
    except RESULTS as exc:
        return _AheadFailed(exc)
    return _Rest(item, made)


class _Rest:
    """A generator setup stopped at its ``yield``: its checks and changes, still to run."""

    def __init__(self, item: pytest.Item, setup: Iterator[Any]) -> None:
        self.item = item
        self.setup = setup
        #: Run it when its module starts, not while earlier modules run (the mark's at_module_start).
        self.at_module_start = bool(item.get_closest_marker("configure_ahead").kwargs.get("at_module_start"))

    def finish(self) -> object:
        """The rest of the setup, in the test's own change scope: its return value, or
        what it raised, for the test."""
        with self.item.config.stash[SUITE_KEY].changes_of(self.item.nodeid):
            try:
                next(self.setup)
            except StopIteration as stop:
                return stop.value
            except RESULTS as exc:
                return _AheadFailed(exc)
        self.setup.close()
        return _AheadFailed(pytest.fail.Exception(f"{self.item.nodeid}: its configure_ahead setup yields more than "
                                                  f"once; it may yield once, between configuring and checking",
                                                  pytrace=False))


def _finish_setups(own: dict[str, object], *others: dict[str, object]) -> int:
    """Run the rest of each setup stopped at its ``yield``: ``own``'s, the running
    module's, and ``others``', modules configured ahead of it (not those of theirs that
    run at their own module's start). How many there were.

    Together (_turns.py): their checks wait at the same time, taking turns. One after
    another, a setup whose check waits out its window against a broken gateway would
    delay the changes of every setup after it by that window (the four faults of
    benchmarks/results-2026-12-06-two-part.md that missed the bound)."""
    pending = [(configured, nodeid, rest)
               for group, configured in enumerate((own, *others))
               for nodeid, rest in configured.items()
               if isinstance(rest, _Rest) and not (group and rest.at_module_start)]
    if len(pending) == 1:
        configured, nodeid, rest = pending[0]
        configured[nodeid] = rest.finish()
    elif pending:
        suite = pending[0][2].item.config.stash[SUITE_KEY]
        turns = Turns(save=lambda: suite.change_scope, restore=suite.set_change_scope)
        for (configured, nodeid, _), result in zip(pending, turns.run([rest.finish for _, _, rest in pending])):
            configured[nodeid] = result
    return len(pending)


@pytest.fixture
def mtls_configured(request: pytest.FixtureRequest, _mtls_configure_ahead: dict[str, object]) -> object:
    """What this test's configure_ahead setup returned (see ``_mtls_configure_ahead``); run
    now where the module was not configured ahead."""
    if request.node.get_closest_marker("configure_ahead") is None:
        raise pytest.UsageError(f"{request.node.nodeid} asks for mtls_configured without a configure_ahead mark")
    if request.node.nodeid not in _mtls_configure_ahead:
        configured = {request.node.nodeid: _configure(request.node, request)}
        _finish_setups(configured)
        return configured[request.node.nodeid]
    _finish_setups(_mtls_configure_ahead)  # none left unless a module hook did not run (a plugin's own order)
    return _mtls_configure_ahead[request.node.nodeid]


AHEAD_KEY = pytest.StashKey["Lookahead | None"]()


def _lookahead_of(config: pytest.Config) -> Lookahead | None:
    if AHEAD_KEY not in config.stash:
        config.stash[AHEAD_KEY] = _lookahead(config)
    return config.stash[AHEAD_KEY]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if item.get_closest_marker("configure_ahead") is not None:
        # Its own change scope: it changes only its own objects (_mtls_configure_ahead).
        item.config.stash[SUITE_KEY].set_change_scope(item.nodeid)
    configured = item.funcargs.get("mtls_configured") if hasattr(item, "funcargs") else None
    if isinstance(configured, _AheadFailed):
        raise configured.error  # its setup ran ahead, with the module's; the test reports it


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    lookahead = session.config.stash.get(AHEAD_KEY, None)
    if lookahead is not None:
        lookahead.abandon_unreached()  # a run stopped early (-x): before plugin.py closes the target


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    module = item.getparent(pytest.Module)
    if module is not None:  # the module's fixtures are torn down in its scope, as they were set up
        item.config.stash[SUITE_KEY].set_change_scope(module.nodeid)
