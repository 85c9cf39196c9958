"""Same numbers before and after a refactor: train short runs and print digests of what they produced.

Three runs on each engine (numba where installed, and the NumPy reference): the seed configuration
(float32, RMSprop, S = 1, 2 epochs on 10,000 images), a study cell on Burda et al.'s architecture
(784-200-200-50 tanh, dynamically binarized, iwae with DReG, S = 5, 1 epoch on 2,000 images, then
its IS log-likelihood with k = 200 on 50 test images), and a float64 ELBO with the sampled KL and STL
on Adam. For each: a SHA-256 of every parameter's bytes, the per-epoch losses, and the log-likelihood.

Run it on two checkouts and compare the JSON (``--compare`` does it against a stored file)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/bit_identity.py --out before.json      # on the old checkout
    OPENBLAS_NUM_THREADS=1 python benchmarks/bit_identity.py --compare before.json  # on the new one

Bit-identical means equal digests and equal floats: only the order of float additions could move
them, and a refactor that keeps the arithmetic keeps them.
"""

import argparse
import hashlib
import json
import sys
import warnings

import _common  # noqa: F401  (puts this checkout's npvae first on the path)
import numpy as np

import npvae

RUNS = {
    "seed": dict(model=dict(seed=0, dtype=np.float32), n=10000, n_val=2000,
                 fit=dict(epochs=2, batch_size=100, mc_samples=1)),
    "burda-iwae-dreg-S5": dict(model=dict(hidden=(200, 200), latent_dim=50, activation="tanh", seed=0, dtype=np.float32),
                               n=2000, n_val=500, ll=True,
                               fit=dict(epochs=1, batch_size=100, mc_samples=5, objective="iwae", estimator="dreg",
                                        binarize="dynamic")),
    "elbo-mc-stl-f64": dict(model=dict(hidden=(64,), latent_dim=4, seed=1, dtype=np.float64), n=1000, n_val=0,
                            fit=dict(epochs=1, batch_size=50, mc_samples=3, objective="elbo", kl="mc", estimator="stl",
                                     optimizer="adam")),
}


def digest(model, history, ll=None):
    """SHA-256 (16 hex digits) of the parameters' bytes, the losses and the log-likelihood."""
    h = hashlib.sha256()
    for name in sorted(model.params):
        h.update(name.encode())
        h.update(np.ascontiguousarray(model.params[name]).tobytes())
    record = {"params_sha256": h.hexdigest()[:16], "losses": [r["loss"] for r in history],
              "val_losses": [r.get("val_loss") for r in history]}
    if ll is not None:
        record["ll_mean"] = float(np.mean(ll.per_example))
    return record


def run(backends):
    x_train, x_test = _common.load_mnist()
    out = {}
    for backend in backends:
        for name, spec in RUNS.items():
            model = npvae.VAE(backend=backend, **spec["model"])
            val = x_test[:spec["n_val"]] if spec["n_val"] else None
            history = npvae.fit(model, x_train[:spec["n"]], validation_data=val, verbose=0, **spec["fit"])
            ll = None
            if spec.get("ll"):
                ll = npvae.log_likelihood(model, (x_test[:50] > 0.5).astype(model.dtype), k=200, seed=0,
                                          progress=False)
            out[f"{name}-{backend}"] = digest(model, history, ll)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["numba", "numpy"], help="engines to run")
    parser.add_argument("--out", help="write the digests to this JSON file")
    parser.add_argument("--compare", help="a JSON file of digests to compare with; exit 1 on any difference")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", DeprecationWarning)
    digests = run(args.backends)
    text = json.dumps(digests, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    if args.compare:
        with open(args.compare) as f:
            stored = json.load(f)
        differ = sorted(k for k in digests if stored.get(k) != digests[k])
        print("identical" if not differ else f"different: {', '.join(differ)}", file=sys.stderr)
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
