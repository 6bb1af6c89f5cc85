"""The search loops: grid, random, successive halving, Hyperband, regularized evolution, hill
climbing and Monte-Carlo tree search.

Each loop is written as `loop(run, space, *, its own options)`: `@strategy` turns it into the public
search `loop(objective, space, *, its options, metric, maximize, name, path, verbose)`, which checks
the options every search shares, builds the one Runner they all use (trials run once, logged,
resumed), and returns a SearchResult. A loop checks its own options before its first trial.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import random
from collections.abc import Callable, Iterator

from .. import validate
from .checks import (
    DRAWS_PER_TRIAL,
    FEASIBLE_DRAWS,
    MAX_COUNT,
    MAX_ETA,
    MAX_STALE,
    check_budget,
    check_callable,
    check_count,
)
from .runner import OutOfTime, Runner, SearchResult
from .space import grid, is_active, mutate, sample, validate_space, values
from .trials import Trial

STRATEGIES: dict[str, Callable] = {}

_SHARED = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, d, a in (
    ("metric", "score", "str"), ("maximize", True, "bool"), ("name", None, "str | None"),
    ("path", None, "str | os.PathLike | None"), ("verbose", False, "bool"), ("seconds", None, "float | None"))]


def strategy(key: str, label: str | None = None):
    """Register `loop(run, space, **options)` in STRATEGIES[key] as a search (see the module's docstring).

    `label` names the strategy in its SearchResult (default: the key). `seconds` is a wall-clock budget:
    once spent, the loop's next new trial is refused and the search returns the trials it has
    (SearchResult.timed_out), see Runner.
    """
    def wrap(loop: Callable) -> Callable:
        @functools.wraps(loop)
        def search(objective: Callable, space: dict, *, metric: str = "score", maximize: bool = True,
                   name: str | None = None, path=None, verbose: bool = False, seconds: float | None = None,
                   **options) -> SearchResult:
            run = Runner(objective, metric=metric, maximize=maximize, name=name, path=path, verbose=verbose,
                         seconds=seconds)
            validate_space(space)
            with contextlib.suppress(OutOfTime):   # the wall-clock budget is spent: the trials so far
                loop(run, space, **options)
            return SearchResult(label or key, run.trials, metric, maximize, timed_out=run.timed_out)

        own = list(inspect.signature(loop).parameters.values())[2:]
        # what help() and IDEs show
        search.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("objective", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Callable"),
             inspect.Parameter("space", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="dict"),
             *own, *_SHARED], return_annotation="SearchResult")
        STRATEGIES[key] = search
        return search
    return wrap


def check_draws(seed, feasible, mutate_fn=None) -> None:
    """The options of every loop that draws configs: an integer seed and optional callables."""
    validate.integer("seed", seed)
    check_callable("feasible", feasible, "feasible(config) -> bool")
    check_callable("mutate_fn", mutate_fn, "mutate_fn(space, config, rng) -> config")


def _propose(space: dict, rng: random.Random, feasible: Callable | None, make=None) -> dict:
    """A config from make() (default: sample), redrawn until feasible(config) (FEASIBLE_DRAWS at most)."""
    make = make or (lambda: sample(space, rng))
    for _ in range(FEASIBLE_DRAWS):
        config = make()
        if feasible is None or feasible(config):
            return config
    raise RuntimeError(f"no feasible config found in {FEASIBLE_DRAWS} draws; loosen the constraint")


@strategy("grid")
def grid_search(run: Runner, space: dict, *, budget: int, points: int | dict = 3) -> None:
    """Every config of grid(space, points), each trained for `budget` epochs."""
    check_budget(budget)
    for config in grid(space, points):
        run(config, budget)


@strategy("random")
def random_search(run: Runner, space: dict, *, budget: int, n_trials: int, seed: int = 0,
                  feasible: Callable | None = None) -> None:
    """n_trials distinct configs drawn with Random(seed), each trained for `budget` epochs."""
    check_budget(budget)
    check_count("n_trials", n_trials)
    check_draws(seed, feasible)
    rng = random.Random(seed)
    for _ in range(DRAWS_PER_TRIAL * n_trials):
        if len(run.trials) >= n_trials:
            break
        config = _propose(space, rng, feasible)
        if not run.seen(config, budget):
            run(config, budget)


def rungs(min_budget: int, max_budget: int, eta: int) -> list[int]:
    """Budgets min, min*eta, ... up to max (max always the last rung)."""
    check_budget(min_budget, "min_budget")
    check_budget(max_budget, "max_budget")
    if max_budget < min_budget:
        raise ValueError(f"max_budget {max_budget} must be >= min_budget {min_budget}")
    validate.integer("eta", eta, low=2, high=MAX_ETA, what="the reduction factor")
    out = [min_budget]
    while out[-1] * eta <= max_budget:
        out.append(out[-1] * eta)
    if out[-1] != max_budget:
        out.append(max_budget)
    return out


def distinct_draws(space: dict, rng: random.Random, n: int, feasible: Callable | None) -> Iterator[dict]:
    """Up to n distinct configs, in the order random_search draws them (DRAWS_PER_TRIAL * n draws at most)."""
    seen: list[dict] = []
    for _ in range(DRAWS_PER_TRIAL * n):
        if len(seen) >= n:
            return
        c = _propose(space, rng, feasible)
        if c not in seen:
            seen.append(c)
            yield c


def halve(run: Runner, configs: list[dict], budgets: list[int], eta: int,
          evaluate: Callable[[list[dict], int], list[Trial]] | None = None) -> None:
    """Successive halving: train all at budgets[0], keep the best 1/eta, move them to the next rung.

    evaluate(configs, budget) -> their trials, in order (default: one after another through `run`)."""
    evaluate = evaluate or (lambda cs, b: [run(c, b) for c in cs])
    for i, b in enumerate(budgets):
        trials = evaluate(configs, b)
        scored = [(t.value(run.metric, run.maximize), j, c) for j, (c, t) in enumerate(zip(configs, trials))]
        if i == len(budgets) - 1:
            break
        scored.sort(key=lambda s: (s[0] if run.maximize else -s[0], -s[1]), reverse=True)
        configs = [c for _, _, c in scored[:max(1, len(configs) // eta)]]


@strategy("successive_halving")
def successive_halving(run: Runner, space: dict, *, n_configs: int, min_budget: int, max_budget: int,
                       eta: int = 3, seed: int = 0, feasible: Callable | None = None) -> None:
    """Successive halving (Jamieson & Talwalkar 2016).

    n configs at budget r, the best n/eta at r*eta, ... until max_budget: compute = sum_i n_i * r_i.
    Configs are drawn exactly as random_search(seed) draws them, so both see the same candidates.
    """
    check_count("n_configs", n_configs)
    budgets = rungs(min_budget, max_budget, eta)
    check_draws(seed, feasible)
    halve(run, list(distinct_draws(space, random.Random(seed), n_configs, feasible)), budgets, eta)


@strategy("hyperband")
def hyperband(run: Runner, space: dict, *, min_budget: int, max_budget: int, eta: int = 3, seed: int = 0,
              feasible: Callable | None = None) -> None:
    """Hyperband (Li et al. 2017): successive halving brackets from aggressive to none.

    s_max = len(rungs) - 1; bracket s starts n = ceil((s_max+1)/(s+1) * eta^s) configs at rung s_max - s.
    """
    budgets = rungs(min_budget, max_budget, eta)
    check_draws(seed, feasible)
    rng, s_max = random.Random(seed), len(budgets) - 1
    for s in range(s_max, -1, -1):
        n = math.ceil((s_max + 1) / (s + 1) * eta ** s)
        halve(run, list(distinct_draws(space, rng, n, feasible)), budgets[s_max - s:], eta)


@strategy("evolution")
def evolution(run: Runner, space: dict, *, budget: int, n_trials: int, population: int = 8,
              sample_size: int = 3, seed: int = 0, mutate_fn: Callable | None = None,
              feasible: Callable | None = None) -> None:
    """Regularized (aging) evolution (Real et al. 2019).

    1. population random configs (drawn as random_search(seed) draws them);
    2. repeat: pick `sample_size` members at random, mutate the best of them, evaluate the child,
       add it and remove the OLDEST member (aging, not the worst).
    mutate_fn(space, config, rng) -> config defaults to `mutate` (one decision changed).
    """
    check_budget(budget)
    check_count("n_trials", n_trials)
    check_count("population", population)
    check_count("sample_size", sample_size)
    check_draws(seed, feasible, mutate_fn)
    rng, mutate_fn = random.Random(seed), mutate_fn or mutate
    alive: list[Trial] = []
    for _ in range(DRAWS_PER_TRIAL * n_trials):
        if len(run.trials) >= n_trials:
            break
        if len(alive) < population:
            config = _propose(space, rng, feasible)
        else:
            contenders = [alive[rng.randrange(len(alive))] for _ in range(sample_size)]
            parent = (max if run.maximize else min)(contenders, key=lambda t: t.value(run.metric, run.maximize))
            config = _propose(space, rng, feasible, lambda p=parent: mutate_fn(space, p.config, rng))
        if run.seen(config, budget):
            continue
        alive.append(run(config, budget))
        if len(alive) > population:
            alive.pop(0)                                  # the oldest dies


@strategy("hill_climb")
def hill_climb(run: Runner, space: dict, *, budget: int, n_trials: int, neighbors: int = 4, seed: int = 0,
               mutate_fn: Callable | None = None, feasible: Callable | None = None) -> None:
    """Greedy hill-climbing: from a random start, evaluate `neighbors` mutations of the current
    best and move to the best of them if it improves; restart from a random config when none does.
    Stops after n_trials trials, or once MAX_STALE neighbours in all were configs already seen.
    """
    check_budget(budget)
    check_count("n_trials", n_trials)
    check_count("neighbors", neighbors)
    check_draws(seed, feasible, mutate_fn)
    rng, mutate_fn = random.Random(seed), mutate_fn or mutate
    score = lambda t: t.value(run.metric, run.maximize)            # noqa: E731
    better = (lambda a, b: a > b) if run.maximize else (lambda a, b: a < b)
    current = run(_propose(space, rng, feasible), budget)
    stale = 0
    while len(run.trials) < n_trials and stale < MAX_STALE:
        step = None
        for _ in range(neighbors):
            if len(run.trials) >= n_trials:
                break
            config = _propose(space, rng, feasible, lambda: mutate_fn(space, current.config, rng))  # noqa: B023 - called at once
            if run.seen(config, budget):
                stale += 1
                continue
            t = run(config, budget)
            if step is None or better(score(t), score(step)):
                step = t
        if step is not None and better(score(step), score(current)):
            current = step
        elif len(run.trials) < n_trials:                  # a local optimum: restart at random
            config = _propose(space, rng, feasible)
            if not run.seen(config, budget):
                current = run(config, budget)


SMALL_INT_RANGE = 8    # tree_search keeps every value of an int range this narrow instead of cutting it


@strategy("tree", "tree_search")
def tree_search(run: Runner, space: dict, *, budget: int, n_trials: int, points: int = 4,
                exploration: float = 1.0, seed: int = 0, feasible: Callable | None = None) -> None:
    """Monte-Carlo tree search over the sequence of decisions (ranges cut into `points` values;
    int ranges of at most SMALL_INT_RANGE values keep them all).

    A node is a prefix of decisions. Each iteration: 1. select children by UCT (upper confidence
    bound for trees, Kocsis & Szepesvári 2006),
    argmax  mean_norm(child) + c * sqrt(ln N(parent) / N(child)), while all children were tried;
    2. expand one untried child; 3. complete the config at random; 4. evaluate it and add its
    value to every node on the path. Values are min-max normalised over the trials so far.
    """
    check_budget(budget)
    check_count("n_trials", n_trials)
    validate.integer("points", points, low=1, high=MAX_COUNT, what="values per range")
    validate.number("exploration", exploration, low=0, what="the UCT constant c")
    check_draws(seed, feasible)
    maximize = run.maximize
    rng, names = random.Random(seed), list(space)
    stats: dict[tuple, list[float]] = {}                  # prefix -> [visits, sum of values]
    seen_values: list[float] = []

    def options(prefix: tuple) -> tuple[str | None, list]:
        config = dict(prefix)
        for n in names:
            if n not in config and is_active(space[n], config):
                p = space[n]
                small = p.kind == "int" and p.high - p.low < SMALL_INT_RANGE       # few integers: keep them all
                return n, list(range(int(p.low), int(p.high) + 1)) if small else values(p, points)
        return None, []

    def norm(v: float) -> float:
        finite = [x for x in seen_values if math.isfinite(x)]
        if not math.isfinite(v) or not finite or max(finite) == min(finite):
            return 0.0 if not math.isfinite(v) else 0.5
        r = (v - min(finite)) / (max(finite) - min(finite))
        return r if maximize else 1 - r

    for _ in range(DRAWS_PER_TRIAL * n_trials):
        if len(run.trials) >= n_trials:
            break
        prefix: tuple = ()
        while True:                                        # 1-2. select / expand
            n, opts = options(prefix)
            if n is None:
                break
            children = [(*prefix, (n, v)) for v in opts]
            untried = [c for c in children if c not in stats]
            if untried:
                prefix = untried[rng.randrange(len(untried))]
                break
            total = sum(stats[c][0] for c in children)
            prefix = max(children, key=lambda c: stats[c][1] / stats[c][0]
                         + exploration * math.sqrt(math.log(total) / stats[c][0]))
        config = dict(prefix)                              # 3. random completion on the cut values
        while True:
            n, opts = options(tuple(config.items()))
            if n is None:
                break
            config[n] = opts[rng.randrange(len(opts))]
        config = {k: config[k] for k in names if k in config}
        if feasible is not None and not feasible(config):
            v = -math.inf if maximize else math.inf        # infeasible: a bad leaf, nothing trained
        else:
            v = run(config, budget).value(run.metric, maximize)
            seen_values.append(v)
        path_nodes = [prefix[:i] for i in range(1, len(prefix) + 1)]
        for node in path_nodes:                            # 4. back-propagate
            s = stats.setdefault(node, [0, 0.0])
            s[0] += 1
            s[1] += norm(v)
