"""The parameter schema: every parameter's name, shape and network, from the architecture alone.

One owner for what the model's parameters are. The model initializes and checks its
``params`` against it, the engines name their gradients after it, the diagnostics split
encoder from decoder with it, and the model file checks a stored layout against it.

The layers, encoder then decoder (``H_i`` the hidden sizes, the decoder mirrored)::

    enc.0 ... enc.{n-1}   D -> H_0 -> ... -> H_{n-1}       hidden, with the activation
    enc.mu, enc.logvar    H_{n-1} -> L                     q(z|x)'s mean and log-variance
    dec.0 ... dec.{n-1}   L -> H_{n-1} -> ... -> H_0       hidden, with the activation
    dec.out               H_0 -> D                         p(x|z)'s logits

Each layer ``name`` has ``name.W`` of shape ``(fan_in, fan_out)`` and ``name.b`` of shape
``(fan_out,)``.
"""

from typing import Dict, List, NamedTuple, Sequence, Tuple

__all__ = ["Layer", "Schema", "ENCODER", "DECODER", "NETWORKS"]

#: The name prefix of the encoder's parameters, and of the decoder's.
ENCODER, DECODER = "enc.", "dec."
#: The two networks, as ``(part, prefix)``: what the diagnostics report on separately.
NETWORKS = (("encoder", ENCODER), ("decoder", DECODER))


class Layer(NamedTuple):
    """One dense layer: ``name`` (its parameters are ``name.W`` and ``name.b``), ``fan_in``, ``fan_out``."""

    name: str
    fan_in: int
    fan_out: int


class Schema:
    """The parameters of a VAE architecture.

    Parameters
    ----------
    input_dim : int
        ``D``.
    hidden : tuple of int
        The encoder's hidden sizes ``H_0, ..., H_{n-1}``; the decoder uses them reversed.
    latent_dim : int
        ``L``.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], latent_dim: int):
        self.input_dim, self.hidden, self.latent_dim = int(input_dim), tuple(int(h) for h in hidden), int(latent_dim)
        D, H, L = self.input_dim, self.hidden, self.latent_dim
        enc = [Layer(f"enc.{i}", a, b) for i, (a, b) in enumerate(zip((D,) + H, H))]
        dec = [Layer(f"dec.{i}", a, b) for i, (a, b) in enumerate(zip((L,) + H[::-1], H[::-1]))]
        self.layers: Tuple[Layer, ...] = tuple(enc + [Layer("enc.mu", H[-1], L), Layer("enc.logvar", H[-1], L)]
                                              + dec + [Layer("dec.out", H[0], D)])

    def __repr__(self) -> str:
        return f"Schema(input_dim={self.input_dim}, hidden={self.hidden}, latent_dim={self.latent_dim})"

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        """``{name: shape}`` of every parameter, in the layers' order (W before b)."""
        return {f"{layer.name}.{kind}": shape for layer in self.layers
                for kind, shape in (("W", (layer.fan_in, layer.fan_out)), ("b", (layer.fan_out,)))}

    def names(self) -> List[str]:
        """Every parameter's name, in the order of :meth:`shapes`."""
        return list(self.shapes())

    def count(self) -> int:
        """The number of scalar parameters."""
        return sum(layer.fan_in * layer.fan_out + layer.fan_out for layer in self.layers)

    @staticmethod
    def network(name: str) -> str:
        """``"encoder"`` or ``"decoder"``: the network the parameter ``name`` belongs to."""
        for part, prefix in NETWORKS:
            if name.startswith(prefix):
                return part
        raise ValueError(f"name: expected a parameter name starting with {ENCODER!r} or {DECODER!r}, got {name!r}")

    def hidden_layers(self, prefix: str) -> List[str]:
        """The names of the hidden layers of the network with ``prefix`` (``"enc"`` or ``"dec"``), in order."""
        return [f"{prefix}.{i}" for i in range(len(self.hidden))]
