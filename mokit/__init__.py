"""mokit: a Jupyter kit for model optimization and model search in PyTorch.

Import the modules you need (`from mokit import data, models, train`); importing mokit itself
does no work and sets no seeds.
"""

__version__ = "0.1.0"
