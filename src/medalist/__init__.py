"""medalist: a Kaggle classification competition from `make download` to `make submit`."""

__version__ = "0.1.0"
