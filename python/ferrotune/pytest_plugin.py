"""ferrotune's pytest plugin: evaluation suites that load a model once, record its metrics,
and fail when one drops below an earlier run's.

It is installed with ferrotune (entry point ``pytest11``, name ``ferrotune``)::

    pytest evals/ --ft-model out/checkpoint-500 --ft-report now.json --ft-baseline before.json

Options:

* ``--ft-model PATH``: a saved model directory, a Trainer checkpoint, a GGUF file or a PEFT
  adapter directory (see :func:`ferrotune.testing.load_pretrained`);
* ``--ft-tokenizer PATH``: the tokenizer, when it is not the model's own;
* ``--ft-report FILE``: write every metric recorded in the session to FILE (JSON: ``metrics``
  by test id and name, ``model``, ``tokenizer``, ``ferrotune_version``);
* ``--ft-baseline FILE``: a report of an earlier run: a metric that drops by more than its
  tolerance from the baseline's value for the same test id and name fails that test;
* ``--ft-tolerance DELTA``: the absolute drop allowed (default 0.0).

Fixtures: ``ft_model`` and ``ft_tokenizer`` (loaded once per session; a test using them is
skipped when ``--ft-model`` is not given), and ``ft_record(name, value, *, tolerance=None,
higher_is_better=None)``, which records a metric of the current test (tolerance: this
metric's own, else ``--ft-tolerance``; higher_is_better: default False for ``loss`` and
``perplexity``, also with a prefix like ``eval_loss``, else True).
:func:`ferrotune.testing.assert_metric` records the value it checks in the same way. The
session ends with a table of the recorded metrics (and their baseline values).

How a regression fails its test: each recorded metric is compared with the baseline at once;
once the test function has returned, this plugin's ``pytest_runtest_call`` (``trylast``: it
runs after pytest's own, which calls the test, and only when the test passed) fails the test
with every regressed metric in one message. So a test records all its metrics (the report is
complete and lists each regression) and the failure is that test's own; a test that failed
anyway keeps its own error, and the summary table still marks its regressions. Plain hooks,
no hook wrappers: they work on every pytest and pluggy a ferrotune user may have.

Cheap when unused: this module imports the standard library and pytest only, and
:mod:`ferrotune.testing` imports the model code only when a model is loaded.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from . import testing

REPORT_VERSION = 1


@dataclass
class Record:
    """One metric recorded by one test, with its baseline value (None: not in the baseline)."""

    nodeid: str
    name: str
    value: float
    higher_is_better: bool
    tolerance: float
    baseline: Optional[float]

    @property
    def regressed(self) -> bool:
        """Whether the value dropped from the baseline by more than the tolerance (a NaN
        value counts as a drop)."""
        if self.baseline is None:
            return False
        if self.higher_is_better:
            return not self.value >= self.baseline - self.tolerance
        return not self.value <= self.baseline + self.tolerance

    def regression_message(self, baseline_file: str) -> str:
        better = "higher" if self.higher_is_better else "lower"
        return (
            f"metric {self.name!r} regressed: {self.value!r} now, {self.baseline!r} in the baseline "
            f"{baseline_file} ({better} is better, tolerance {self.tolerance!r})"
        )


class MetricLog:
    """The metrics of one pytest session: what was recorded, the baseline, the report file.

    Registered as a plugin object by :func:`pytest_configure`; while the session runs it is
    also :data:`ferrotune.testing.recorder`'s target, so ``assert_metric`` records here.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.model = _path_option(config, "ft_model")
        self.tokenizer = _path_option(config, "ft_tokenizer")
        self.report_file = _path_option(config, "ft_report")
        self.baseline_file = _path_option(config, "ft_baseline")
        self.tolerance = config.getoption("ft_tolerance")
        if not self.tolerance >= 0:
            raise pytest.UsageError(f"--ft-tolerance must be zero or positive, got {self.tolerance}")
        self.baseline = _read_report(self.baseline_file) if self.baseline_file else {}
        self.records: Dict[Tuple[str, str], Record] = {}
        self._current_test: Optional[str] = None
        self._previous_recorder = testing.recorder
        testing.recorder = self._record_current

    def close(self) -> None:
        testing.recorder = self._previous_recorder

    def record(
        self,
        nodeid: str,
        name: str,
        value: float,
        tolerance: Optional[float] = None,
        higher_is_better: Optional[bool] = None,
    ) -> None:
        """Record ``name = value`` for the test ``nodeid`` (a second value of the same name
        replaces the first)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a metric name must be a non-empty string, got {name!r}")
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"metric {name!r}: the value must be a number, got {value!r}")
        if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0):
            raise ValueError(f"metric {name!r}: tolerance must be a number >= 0, got {tolerance!r}")
        if higher_is_better is None:
            higher_is_better = not testing.lower_is_better(name)
        self.records[(nodeid, name)] = Record(
            nodeid=nodeid,
            name=name,
            value=float(value),
            higher_is_better=bool(higher_is_better),
            tolerance=self.tolerance if tolerance is None else float(tolerance),
            baseline=self.baseline.get(nodeid, {}).get(name),
        )

    def _record_current(self, name: str, value: float, higher_is_better: Optional[bool]) -> None:
        # assert_metric outside a test (at collection, say) has no test to record under
        if self._current_test is not None:
            self.record(self._current_test, name, value, higher_is_better=higher_is_better)

    # ---- hooks -----------------------------------------------------------------------

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._current_test = nodeid

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._current_test = None

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        regressions = [r for r in self.records.values() if r.nodeid == item.nodeid and r.regressed]
        if regressions:
            lines = [r.regression_message(str(self.baseline_file)) for r in regressions]
            pytest.fail("\n".join(lines), pytrace=False)

    def pytest_sessionfinish(self) -> None:
        if self.report_file:
            self.write_report(self.report_file)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        tr = terminalreporter
        tr.write_sep("=", "ferrotune metrics")
        for line, regressed in self.table():
            tr.write_line(line, red=regressed)
        if self.report_file:
            tr.write_line(f"metrics written to {self.report_file}")

    # ---- output ----------------------------------------------------------------------

    def table(self) -> List[Tuple[str, bool]]:
        """The summary table's lines, each with whether it shows a regression."""
        header = ["test", "metric", "value"] + (["baseline", ""] if self.baseline_file else [])
        rows = []
        for r in self.records.values():
            row = [r.nodeid, r.name, f"{r.value:.6g}"]
            if self.baseline_file:
                row += ["-" if r.baseline is None else f"{r.baseline:.6g}", "REGRESSED" if r.regressed else ""]
            rows.append((row, r.regressed))
        widths = [max(len(row[i]) for row in [header] + [row for row, _ in rows]) for i in range(len(header))]

        def line(cells: List[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        return [(line(header), False)] + [(line(row), regressed) for row, regressed in rows]

    def write_report(self, path: str) -> None:
        from . import __version__

        metrics: Dict[str, Dict[str, float]] = {}
        for r in self.records.values():
            metrics.setdefault(r.nodeid, {})[r.name] = r.value
        report = {
            "report_version": REPORT_VERSION,
            "ferrotune_version": __version__,
            "model": self.model,
            "tokenizer": self.tokenizer,
            "metrics": metrics,
        }
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


def _path_option(config: pytest.Config, name: str) -> Optional[str]:
    """An option's path made absolute (relative paths are from where pytest was started)."""
    value = config.getoption(name)
    return None if value is None else os.path.abspath(os.path.join(config.invocation_params.dir, value))


def _read_report(path: str) -> Dict[str, Dict[str, float]]:
    """The ``metrics`` of a report written by ``--ft-report`` (test id -> name -> value)."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except FileNotFoundError:
        raise pytest.UsageError(f"--ft-baseline: no such file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise pytest.UsageError(f"--ft-baseline: {path} is not valid JSON ({e})") from None
    metrics = report.get("metrics") if isinstance(report, dict) else None
    if not isinstance(metrics, dict) or not all(_is_metric_map(by_name) for by_name in metrics.values()):
        raise pytest.UsageError(
            f"--ft-baseline: {path} is not a ferrotune report (a JSON object whose 'metrics' maps test ids "
            "to {metric name: number}, as --ft-report writes)"
        )
    return {nodeid: {name: float(v) for name, v in by_name.items()} for nodeid, by_name in metrics.items()}


def _is_metric_map(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in x.values())


# --------------------------------------------------------------------------- hooks

_LOG = pytest.StashKey[MetricLog]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ferrotune", "ferrotune model evaluation")
    group.addoption("--ft-model", metavar="PATH", help="the model the ft_model fixture loads: a saved model directory, a Trainer checkpoint, a GGUF file or a PEFT adapter directory")
    group.addoption("--ft-tokenizer", metavar="PATH", help="the tokenizer the ft_tokenizer fixture loads (default: the model's own)")
    group.addoption("--ft-report", metavar="FILE", help="write the metrics recorded in the session to FILE (JSON)")
    group.addoption("--ft-baseline", metavar="FILE", help="an earlier --ft-report: a metric that drops from its value there fails its test")
    group.addoption("--ft-tolerance", metavar="DELTA", type=float, default=0.0, help="the absolute drop from the baseline allowed (default 0.0)")


def pytest_configure(config: pytest.Config) -> None:
    log = MetricLog(config)
    config.stash[_LOG] = log
    config.pluginmanager.register(log, "ferrotune-metrics")


def pytest_unconfigure(config: pytest.Config) -> None:
    log = config.stash.get(_LOG, None)
    if log is not None:
        log.close()
        config.pluginmanager.unregister(log)
        del config.stash[_LOG]


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    log = config.stash[_LOG]
    return None if log.model is None else f"ferrotune: model {log.model}"


# --------------------------------------------------------------------------- fixtures


def _model_path(config: pytest.Config) -> str:
    path = config.stash[_LOG].model
    if path is None:
        pytest.skip("no model to evaluate: pass --ft-model PATH (a model directory, checkpoint, GGUF file or adapter)")
    return path


@pytest.fixture(scope="session")
def ft_model(pytestconfig: pytest.Config) -> Any:
    """The model ``--ft-model`` names, loaded once per session (skips the test without it)."""
    return testing.load_pretrained(_model_path(pytestconfig))


@pytest.fixture(scope="session")
def ft_tokenizer(pytestconfig: pytest.Config) -> Any:
    """The tokenizer of ``--ft-model`` (or ``--ft-tokenizer``), loaded once per session."""
    return testing.load_tokenizer(_model_path(pytestconfig), pytestconfig.stash[_LOG].tokenizer)


@pytest.fixture
def ft_record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``ft_record(name, value, *, tolerance=None, higher_is_better=None)``: record a metric of
    this test for the report, the baseline comparison and the summary table."""
    log = request.config.stash[_LOG]

    def record(name: str, value: float, *, tolerance: Optional[float] = None, higher_is_better: Optional[bool] = None) -> None:
        log.record(request.node.nodeid, name, value, tolerance, higher_is_better)

    return record
