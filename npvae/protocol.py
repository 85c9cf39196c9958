"""Burda et al.'s training protocol, each choice taken from their published code and paper.

Burda, Grosse and Salakhutdinov (2016), "Importance Weighted Autoencoders", ICLR, section 5
and appendix; their code is the repository ``yburda/iwae`` (files ``experiments.py``,
``train.py``, ``optimizers.py``, ``datasets.py``, ``iwae.py``, ``nnet.py``; the line
numbers below are those of its stored version). ``npvae.fit(..., protocol="burda")`` and
``npvae train --protocol burda`` apply the parts marked *setting*; the others are what a
study does around ``fit`` (``benchmarks/burda_table1.py`` does them).

Each choice, theirs -> npvae's:

* **Optimizer.** Adam with ``beta_1=0.99, beta_2=0.999``, ``1e-4`` added to ``sqrt(v)``,
  second moments started at **1** (optimizers.py l. 11, 15-16, 30-34). The paper (section
  5) says ``beta1 = 0.9``; the code, which made the numbers, uses 0.99 (experiments.py
  l. 114 keeps its default). -> :func:`burda_adam`, :func:`start_burda_adam` (setting
  ``protocol``).
* **Gradient scale.** Theirs is the gradient of the *sum* over the minibatch (iwae.py,
  ``IWAE.gradIminibatch_srng``), so their epsilon and initial ``v`` act on 20 times npvae's
  gradient (npvae's loss is the mean). -> ``epsilon = 1e-4 / 20``, ``v`` starts at
  ``1 / 20**2``: the same steps.
* **Minibatch** of 20 (experiments.py l. 121; paper section 5). -> setting ``batch_size``.
* **Order of the minibatches**: the same every epoch, no shuffling (train.py l. 20-22,
  datasets.py l. 28-29). -> setting ``shuffle=False``.
* **Learning rate**: stage ``i = 0..7`` is ``3**i`` epochs at
  ``1e-4 * round(10**(1 - i/7), 1)`` (experiments.py l. 118-121, 138-139), the paper's
  ``1e-3 * 10**(-i/7)`` (section 5) rounded to two digits; 3,280 epochs. -> setting
  ``lr_schedule="burda"`` (:func:`learning_rate`), applied at the start of every epoch.
* **Output bias**: the logit of the training mean, clipped to [0.001, 0.999]
  (datasets.py l. 37-42; iwae.py, ``BernoulliSampler.random`` and ``random_iwae``).
  -> setting ``output_bias="data"`` (:func:`output_bias`).
* **Binarization**: a fresh Bernoulli draw of every minibatch, ``u <= x`` (datasets.py
  l. 51-53); the test set binarized the same way once per evaluation (iwae.py,
  ``measure_marginal_log_likelihood``). -> setting ``binarize="dynamic"`` (``u < x``,
  equal in law).
* **Training data**: the first 59,600 training images; the last 400, not shuffled first,
  are the validation set (datasets.py l. 21-22, 70, 87). -> :func:`train_validation_split`.
* **The VAE's objective**: the mean over the k samples of the log weights, i.e. the
  sampled KL (iwae.py, ``IWAE.gradIminibatch_srng`` with ``model_type="vae"``). ->
  ``objective="elbo"`` with setting ``kl="mc"``.
* **Test NLL**: IS with k = 5000 on the 10,000 test images (experiments.py l. 61-63; paper
  section 5). -> :func:`npvae.log_likelihood`.
* **Active units**: the variance over the first 500 training images (binarized once) of
  the encoder's mean, above 1e-2 (iwae.py, ``get_units_variances`` and
  ``chop_units_with_variance_under_threshold``; paper section 5.2, ``Cov_x(E_q[u])``).
  -> :func:`active_units`.
* **Initialization**: Glorot-uniform weights, zero biases (nnet.py l. 24-34). -> npvae's
  (another RNG).

Not reproduced: their Adam applies the moments of the previous step (Theano evaluates
every update from the old values, optimizers.py l. 32-34), so each gradient acts one step
late; npvae's Adam applies it at once. Their encoder gives ``sigma = exp(linear)``
(iwae.py, ``GaussianSampler.random``), npvae's ``log_var`` (``sigma = exp(linear / 2)``): the same family, the
same bound, another parameterization of the last encoder layer.
"""

import math
from typing import NamedTuple

import numpy as np

from . import _validate as check
from .optim import Adam

__all__ = ["PROTOCOLS", "LR_SCHEDULES", "OUTPUT_BIAS", "BURDA", "BURDA_STAGES", "BURDA_STAGE_ENDS", "BURDA_EPOCHS",
           "BURDA_VALIDATION", "BURDA_ADAM", "BURDA_ACTIVE_THRESHOLD", "stage_of_epoch", "learning_rate",
           "output_bias", "set_output_bias", "burda_adam", "is_burda_adam", "start_burda_adam",
           "train_validation_split", "ActiveUnits", "active_units"]

#: ``protocol`` of :func:`npvae.fit`: none, or Burda et al.'s.
PROTOCOLS = ("none", "burda")
#: ``lr_schedule`` of :func:`npvae.fit`: the optimizer's rate throughout, or Burda et al.'s stages.
LR_SCHEDULES = ("constant", "burda")
#: ``output_bias`` of :func:`npvae.fit`: the initializer's zeros, or the logit of the training mean.
OUTPUT_BIAS = ("zero", "data")

#: The stages ``i = 0..7`` of the schedule, ``3**i`` epochs each (experiments.py l. 121, 138).
BURDA_STAGES = 8
#: The epoch that ends each stage: 1, 4, 13, 40, 121, 364, 1093, 3280.
BURDA_STAGE_ENDS = tuple(sum(3 ** j for j in range(i + 1)) for i in range(BURDA_STAGES))
#: Epochs of the whole schedule.
BURDA_EPOCHS = BURDA_STAGE_ENDS[-1]
#: The last training images held out for validation (datasets.py l. 70: ``n_validation=400``).
BURDA_VALIDATION = 400
#: Adam as theirs (optimizers.py l. 11, 16, 33), for a gradient of the batch *sum*.
BURDA_ADAM = {"beta1": 0.99, "beta2": 0.999, "epsilon": 1e-4, "initial_v": 1.0}
#: Their threshold of an active unit (iwae.py, ``chop_units_with_variance_under_threshold``; paper section 5.2).
BURDA_ACTIVE_THRESHOLD = 1e-2
#: What ``protocol="burda"`` sets (the settings of :mod:`npvae.settings`); ``kl`` only for
#: ``objective="elbo"`` (their VAE), ``optimizer`` is :func:`burda_adam`.
BURDA = {"batch_size": 20, "binarize": "dynamic", "shuffle": False, "lr_schedule": "burda",
         "output_bias": "data", "kl": "mc", "optimizer": "adam"}


def stage_of_epoch(epoch):
    """The stage ``i`` (0-7) of Burda et al.'s schedule that epoch ``epoch`` (1-based) is in;
    epochs after the last stage (3,280) stay in it."""
    epoch = check.positive_int(epoch, "epoch")
    for i, end in enumerate(BURDA_STAGE_ENDS):
        if epoch <= end:
            return i
    return BURDA_STAGES - 1


def learning_rate(schedule, epoch, lr0):
    """The learning rate of epoch ``epoch`` (1-based) under ``schedule``.

    ``"constant"``: ``lr0``. ``"burda"``: ``lr0 * round(10**(1 - i/7), 1) / 10`` in stage
    ``i`` (:func:`stage_of_epoch`), which for ``lr0 = 1e-3`` is their
    ``1e-4 * round(10.**(1 - i/7.), 1)`` (experiments.py l. 119): 1e-3, 7.2e-4, 5.2e-4,
    3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4. The paper's ``1e-3 * 10**(-i/7)`` (section 5)
    is this before the rounding, which moves no rate by more than 1.6% (stage 5).
    """
    schedule = check.choice(schedule, "lr_schedule", LR_SCHEDULES)
    if schedule == "constant":
        return lr0
    return lr0 * round(10.0 ** (1.0 - stage_of_epoch(epoch) / 7.0), 1) / 10.0


def output_bias(x_train, dtype=np.float64):
    """The decoder's output bias of Burda et al.: ``logit(clip(mean_n x_n, 0.001, 0.999))``
    (datasets.py l. 37-42), from the grayscale training images.

    Parameters
    ----------
    x_train : ndarray, shape (N, D), values in [0, 1]
    dtype : the bias's dtype (the mean and logit are taken in float64)

    Returns
    -------
    ndarray, shape (D,)
    """
    x = np.asarray(x_train)
    if x.ndim != 2 or x.shape[0] == 0 or x.dtype.kind != "f":
        raise ValueError(f"x_train: expected a non-empty float array of shape (N, D), got dtype {x.dtype} "
                         f"shape {x.shape}")
    p = np.clip(x.mean(axis=0, dtype=np.float64), 0.001, 0.999)
    return (np.log(p) - np.log1p(-p)).astype(dtype)


def set_output_bias(model, x_train):
    """Set ``model.params["dec.out.b"]`` in place to :func:`output_bias` of ``x_train``."""
    model.params["dec.out.b"][...] = output_bias(x_train, model.dtype)


def burda_adam(lr=1e-3, batch_size=BURDA["batch_size"]):
    """Their Adam in the units of npvae's loss, the *mean* over a minibatch of
    ``batch_size`` (theirs is the sum): ``Adam(lr, beta1=0.99, beta2=0.999,
    epsilon=1e-4 / batch_size)``; :func:`start_burda_adam` starts its ``v`` at
    ``1 / batch_size**2``. Adam is unchanged by scaling the gradient by ``c`` together
    with ``epsilon`` by ``c`` and ``v`` by ``c**2``, so this is theirs step for step (but
    the one-step lag, see the module's docstring)."""
    batch_size = check.positive_int(batch_size, "batch_size")
    return Adam(lr=lr, beta1=BURDA_ADAM["beta1"], beta2=BURDA_ADAM["beta2"],
                epsilon=BURDA_ADAM["epsilon"] / batch_size)


def is_burda_adam(optimizer, batch_size):
    """Whether ``optimizer`` is :func:`burda_adam` for ``batch_size`` (any learning rate)."""
    if not isinstance(optimizer, Adam):
        return False
    want = burda_adam(batch_size=batch_size).get_config()
    have = optimizer.get_config()
    return all(have[k] == want[k] for k in ("beta1", "beta2", "epsilon"))


def start_burda_adam(optimizer, params, batch_size):
    """Start ``optimizer`` (an :class:`npvae.optim.Adam` that has taken no step) as theirs:
    first moments 0, second moments ``initial_v / batch_size**2`` (their ``v`` starts at 1
    for the gradient of the sum, optimizers.py l. 16), through its public state dict."""
    if optimizer.iterations:
        raise ValueError(f"optimizer: expected an Adam that has taken no step, got one after "
                         f"{optimizer.iterations} steps")
    v0 = BURDA_ADAM["initial_v"] / check.positive_int(batch_size, "batch_size") ** 2
    state = {"name": np.array(optimizer.name), "iterations": np.array(0, dtype=np.int64)}
    state.update({h: np.array(float(v)) for h, v in optimizer.get_config().items()})
    for key, p in params.items():
        state[f"m/{key}"] = np.zeros_like(p)
        state[f"v/{key}"] = np.full_like(p, v0)
    optimizer.load_state_dict(state)


def train_validation_split(x, n_validation=BURDA_VALIDATION):
    """Their split of the training images: all but the last ``n_validation`` for training,
    the last ``n_validation`` for validation, in the file's order (datasets.py l. 21-22;
    ``n_validation=400`` for MNIST, l. 70).

    Returns
    -------
    x_train : ndarray, shape (N - n_validation, ...)
    x_validation : ndarray, shape (n_validation, ...)
    """
    n_validation = check.positive_int(n_validation, "n_validation")
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] <= n_validation:
        raise ValueError(f"n_validation: expected fewer than the {x.shape[0] if x.ndim else 0} examples of x, "
                         f"got {n_validation}")
    return x[:-n_validation], x[-n_validation:]


class ActiveUnits(NamedTuple):
    """Active latent units (Burda et al. 2016, section 5.2).

    Attributes
    ----------
    count : int
        Units with ``variances > threshold``.
    variances : ndarray, shape (latent_dim,)
        ``Var_x(E_q[u_i | x])`` over the images given (ddof 0, as their ``np.var``).
    threshold : float
    """

    count: int
    variances: np.ndarray
    threshold: float


def active_units(model, x, threshold=BURDA_ACTIVE_THRESHOLD):
    """Count the latent units whose encoder mean varies over ``x`` by more than ``threshold``.

    Their ``A_u = Cov_x(E_{u ~ q(u|x)}[u])`` (section 5.2), a unit active when
    ``A_u > 1e-2``; their code takes it over the first 500 training images, binarized once
    (iwae.py, ``get_units_variances``), which is what ``x`` should be to count their way.

    Parameters
    ----------
    model : npvae.VAE
    x : ndarray, shape (N, input_dim), N >= 2
    threshold : float, default 1e-2

    Returns
    -------
    ActiveUnits
    """
    check.vae(model)
    threshold = float(threshold)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold: expected a non-negative number, got {threshold!r}")
    x = model.check_data(x)
    if x.shape[0] < 2:
        raise ValueError(f"x: expected at least 2 images (a variance over them), got {x.shape[0]}")
    mu, _ = model.encode(x)
    variances = np.var(mu.astype(np.float64), axis=0)
    return ActiveUnits(int(np.sum(variances > threshold)), variances, threshold)
