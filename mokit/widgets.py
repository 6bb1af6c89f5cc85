"""ipywidgets panels that call mokit's functions; they hold no logic of their own.

    panel(show_accuracy, sparsity=slider(0.5, 0, 0.99, 0.01), live=True)

A panel is a VBox of controls and an Output. `live=True` re-runs on every change; otherwise a
Run button does. `run_now=True` runs once with the defaults, so a headless run (papermill)
shows a result and never waits for a click.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import ipywidgets as W

_STYLE = {"description_width": "initial"}


def slider(value: float, min: float, max: float, step: float, description: str = "") -> W.FloatSlider:
    return W.FloatSlider(value=value, min=min, max=max, step=step, description=description,
                         continuous_update=False, style=_STYLE, readout_format=".3g")


def int_slider(value: int, min: int, max: int, step: int = 1, description: str = "") -> W.IntSlider:
    return W.IntSlider(value=value, min=min, max=max, step=step, description=description,
                       continuous_update=False, style=_STYLE)


def log_slider(value: float, min: float, max: float, description: str = "") -> W.FloatLogSlider:
    """A slider over powers of ten from `min` to `max` (e.g. learning rates)."""
    import math
    return W.FloatLogSlider(value=value, base=10, min=math.log10(min), max=math.log10(max), step=0.25,
                            description=description, continuous_update=False, style=_STYLE,
                            readout_format=".1e")


def dropdown(options: Sequence, value=None, description: str = "") -> W.Dropdown:
    return W.Dropdown(options=list(options), value=value if value is not None else options[0],
                      description=description, style=_STYLE)


class Panel(W.VBox):
    """Controls + output; `run()` calls fn(**values) and shows what it prints or plots."""

    def __init__(self, fn: Callable, controls: dict[str, W.ValueWidget], *, live: bool = False,
                 run_label: str = "Run", run_now: bool = False):
        self.fn, self.controls, self.output = fn, controls, W.Output()
        self.button = W.Button(description=run_label, button_style="primary")
        self.button.on_click(lambda _: self.run())
        if live:
            for w in controls.values():
                w.observe(lambda _: self.run(), names="value")
        row = list(controls.values()) + ([] if live else [self.button])
        super().__init__([W.HBox(row, layout=W.Layout(flex_flow="row wrap")), self.output])
        self.last = None
        if run_now:
            self.run()

    def values(self) -> dict:
        return {name: w.value for name, w in self.controls.items()}

    def run(self):
        """Call fn with the controls' current values inside the output area; return its result."""
        import matplotlib.pyplot as plt

        self.output.clear_output(wait=True)
        with self.output:
            self.last = self.fn(**self.values())
            if isinstance(self.last, plt.Figure):
                from IPython.display import display
                display(self.last)
                plt.close(self.last)
        return self.last


def panel(fn: Callable, *, live: bool = False, run_label: str = "Run", run_now: bool = False,
          **controls: W.ValueWidget) -> Panel:
    """A Panel calling fn(**{name: control.value}) - see the module docstring."""
    if not controls:
        raise ValueError("panel needs at least one control")
    return Panel(fn, controls, live=live, run_label=run_label, run_now=run_now)
