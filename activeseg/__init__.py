"""activeseg: an active-learning annotation loop for 3-D neuron instance segmentation."""

__version__ = "0.1.0"
