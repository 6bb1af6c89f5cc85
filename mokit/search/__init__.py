"""Search spaces and search loops shared by hyperparameter search and NAS.

    space = {"lr": float_range(1e-4, 1.0, log=True),
             "optimizer": choice("sgd", "momentum", "adam"),
             "momentum": float_range(0.5, 0.99, when={"optimizer": ["momentum"]})}
    result = random_search(objective, space, budget=3, n_trials=9, seed=0, name="demo")
    result.best.config, result.best.value, result.compute

The one contract: `objective(config, budget) -> float or dict of metrics`, where budget counts
training epochs, so strategies are compared at equal compute (the sum of the budgets they spent).
Every trial (config, budget, metrics, seconds, status) is appended to
<runs>/searches/<name>/trials.jsonl (fsync'd) the moment it finishes. A trial is keyed by a hash
of (config, budget): a restarted search replays its seeded proposals, reads the finished trials
back instead of running them again, and continues where it stopped. An objective that raises or
returns NaN gives a "failed" trial (worst value); the search goes on. `seconds=` gives any search a
wall-clock budget: once it is spent no new trial starts, and the result says so (`timed_out`).

Strategies: grid_search, random_search, successive_halving, hyperband, evolution (regularized /
aging), hill_climb (greedy), tree_search (MCTS over the sequence of decisions), and optuna_search
(TPE, NSGA-II, random; Optuna's pruners; Optuna storages so several processes or machines share
one study); param_importances asks Optuna how much each decision mattered; ray_search (Ray Tune: ASHA,
TPE or random, trials side by side on a local Ray or a cluster; `pip install 'mokit[scale]'`);
parallel_halving and async_halving (ASHA) run successive halving on worker processes, synchronously or not.

The package, bottom to top: checks (bounds, argument checks) -> space -> trials (the log) ->
runner (Runner, SearchResult) -> strategies -> asha, objective, optuna_bridge (its plots are in mokit.plot).
"""

from .asha import async_halving, idle_fraction, parallel_halving, time_to
from .checks import (
                     DRAWS_PER_TRIAL,
                     FEASIBLE_DRAWS,
                     MAX_COUNT,
                     MAX_EPOCHS,
                     MAX_ETA,
                     MAX_STALE,
                     check_bool,
                     check_budget,
                     check_callable,
                     check_count,
                     check_metric,
)
from .objective import train_objective
from .optuna_bridge import open_storage, optuna_search, param_importances, study_result
from .ray_bridge import LocalRay, ray_search, ray_throughput
from .runner import OutOfTime, Runner, SearchResult, check_runner, check_seconds, evaluate_trial, format_config
from .space import (
                     Param,
                     choice,
                     float_range,
                     grid,
                     int_range,
                     is_active,
                     mutate,
                     repair,
                     sample,
                     validate_space,
                     values,
)
from .strategies import (
                     STRATEGIES,
                     distinct_draws,
                     evolution,
                     grid_search,
                     halve,
                     hill_climb,
                     hyperband,
                     random_search,
                     rungs,
                     strategy,
                     successive_halving,
                     tree_search,
)
from .trials import Trial, TrialLog, check_search_name, jsonable, search_path, trial_key

__all__ = [
    "DRAWS_PER_TRIAL", "FEASIBLE_DRAWS", "MAX_COUNT", "MAX_EPOCHS", "MAX_ETA", "MAX_STALE", "STRATEGIES",
    "LocalRay", "OutOfTime", "Param", "Runner", "SearchResult", "Trial", "TrialLog", "async_halving",
    "check_bool", "check_budget", "check_callable", "check_count", "check_metric", "check_runner",
    "check_search_name", "check_seconds",
    "choice", "distinct_draws", "evaluate_trial", "evolution", "float_range", "format_config", "grid",
    "grid_search", "halve", "hill_climb", "hyperband", "idle_fraction", "int_range", "is_active", "jsonable",
    "mutate", "open_storage", "optuna_search", "parallel_halving", "param_importances", "random_search",
    "ray_search", "ray_throughput", "repair", "rungs", "sample", "search_path", "strategy", "study_result",
    "successive_halving", "time_to", "train_objective", "tree_search", "trial_key", "validate_space",
    "values",
]
