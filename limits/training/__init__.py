"""Training BCP24's transformers (Bordelon, Chaudhry, Pehlevan, "Infinite Limits of Multi-head Transformer Dynamics",
arXiv 2405.15712) at growing head dimension N, head count H and depth L, in JAX with optax (the `train` extra:
``pip install -e '.[train]'``). The same code runs on CPU and on a GPU when JAX sees one.

    parameterisation  BCP24's mean-field (μP) scalings for SGD and Adam, and the standard one (Table 1)
    model             the trainable model of `limits.transformer`, read in from data
    data              scikit-learn digits as patches, a teacher sequence task, user .npz arrays (CIFAR-5M layout)
    train             runs vectorised over learning rates and seeds; the `mup`-style coordinate check
    sweeps            hyperparameter transfer, attention variance over heads, convergence in H, depth (tidy tables)
    plots             one figure per sweep
"""
try:
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without the extra
    from netsor import ProgramError
    raise ProgramError("limits.training needs JAX and optax: pip install 'netsor[train]'") from None

from .data import Dataset, TeacherTask, digits, load_npz, patchify
from .model import TrainableTransformer, from_transformer, trainable
from .parameterisation import Parameterisation, adam, sgd, standard
from .sweeps import (depth_scaling, fit_drift, fit_measurement, heads_convergence, hyperparameter_transfer,
                     kernel_errors, loss_curves, optimal_learning_rates, run_sweep)
from .runs import Training, coord_check, train

__all__ = ["Dataset", "TeacherTask", "digits", "load_npz", "patchify", "TrainableTransformer", "from_transformer",
           "trainable", "Parameterisation", "adam", "sgd", "standard", "depth_scaling", "fit_drift",
           "fit_measurement", "heads_convergence", "hyperparameter_transfer", "kernel_errors", "loss_curves",
           "optimal_learning_rates", "run_sweep", "Training", "coord_check", "train"]
