"""``exposed_as``: the names a spec's loss has in the layers (gluon, mmdet, paddle).

A spec's ``exposed_as: {layer: Name}`` is a promise that ``Name`` in that layer computes the
spec's loss. Where the layer has a handwritten API of that name (``HANDWRITTEN``: gluon's
``HuberLoss``, MMDetection's ``FocalLoss`` …) the promise holds only if that API runs the spec;
a build checks it (:func:`conflict`). Every other name becomes a generic adapter in the
layer when the loss is registered: ``lossc.gluon.<Name>`` (gluon's mean over the non-batch
axes), ``build_loss(dict(type=Name))`` in ``lossc.mmdet`` and ``lossc.torch.mmdet`` (and the
mmengine registry), ``lossc.paddle.<Name>``.
"""

LAYERS = ("gluon", "mmdet", "paddle")

# The layers' handwritten APIs and the specs each one runs.
HANDWRITTEN = {
    "gluon": {
        "L2Loss": ("l2",), "L1Loss": ("l1",), "SigmoidBinaryCrossEntropyLoss": ("sigmoid_bce",),
        "SigmoidBCELoss": ("sigmoid_bce",), "HuberLoss": ("huber",), "HingeLoss": ("hinge",),
        "SquaredHingeLoss": ("squared_hinge",), "LogisticLoss": ("logistic",), "PoissonNLLLoss": ("poisson_nll",),
        "SoftmaxCrossEntropyLoss": ("softmax_ce", "softmax_ce_dense"),
        "SoftmaxCELoss": ("softmax_ce", "softmax_ce_dense"), "KLDivLoss": ("kl_div",), "TripletLoss": ("triplet",),
        "CosineEmbeddingLoss": ("cosine_embedding",), "FocalLoss": ("focal", "focal_dense"), "SDMLLoss": ("sdml",),
        "CTCLoss": (),
    },
    "mmdet": {
        "FocalLoss": ("sigmoid_focal",), "CrossEntropyLoss": ("softmax_ce", "sigmoid_bce"),
        "SmoothL1Loss": ("huber",), "L1Loss": ("l1",), "MSELoss": ("mse",),
    },
    "paddle": {
        "sigmoid_focal_loss": ("sigmoid_focal",), "binary_cross_entropy_with_logits": ("sigmoid_bce",),
        "smooth_l1_loss": ("huber",), "l1_loss": ("l1",), "mse_loss": ("mse",), "kl_div": ("kl_div",),
        "cross_entropy": ("softmax_ce", "softmax_ce_dense"), "ctc_loss": (), "get": (), "Loss": (),
    },
}


def conflict(layer, name, spec_name):
    """Why ``exposed_as: {layer: name}`` cannot hold for the spec ``spec_name``, or None."""
    if layer not in HANDWRITTEN:
        return f"unknown layer '{layer}' (known: {', '.join(LAYERS)})"
    specs = HANDWRITTEN[layer].get(name)
    if specs is None or spec_name in specs:
        return None
    runs = f"runs {', '.join(repr(s) for s in specs)}" if specs else "is not a spec's loss"
    return (f"lossc.{layer}.{name} is a handwritten {layer} API that {runs}, not '{spec_name}': expose "
            f"'{spec_name}' under another name")


def adapters(manifests, layer):
    """{Name: loss name} of the generic adapters ``layer`` gets from the registered losses'
    ``manifests`` (names with a handwritten API are that API, not an adapter)."""
    return {name: manifest["name"] for manifest in manifests
            for exposed_layer, name in manifest.get("exposed_as", {}).items()
            if exposed_layer == layer and name not in HANDWRITTEN[layer]}
