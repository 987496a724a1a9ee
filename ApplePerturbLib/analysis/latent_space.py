"""How much group information the latent keeps: t-SNE pictures, Davies-Bouldin index, silhouette score.

Inputs are the pooled latents of ``latents.npz`` (``apple-perturb evaluate``):
``f_o``, the encoder's latent, and ``f_p = f_o + delta``, the perturbed
latent, each averaged over its spatial axes to an NxC array.

Scores of the group labels, computed by scikit-learn with the Euclidean
distance on the C-dimensional pooled latents (not on the 2D t-SNE
coordinates, which only serve the picture):

- Davies-Bouldin index (``sklearn.metrics.davies_bouldin_score``): 0 or
  more, lower when the groups form compact, separate clusters;
- silhouette score (``sklearn.metrics.silhouette_score``): -1 to 1, near 1
  for separate groups, near 0 for mixed groups.

A higher Davies-Bouldin index and a lower silhouette score for ``f_p`` than
for ``f_o`` mean that the perturbation left less attribute information in
the latent. Rows of unknown group are left out of both scores and of the
picture.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ApplePerturbLib.errors import InvalidInputError

logger = logging.getLogger(__name__)

_MAX_PERPLEXITY = 30.0
# Up to this many rows t-SNE uses exact gradients, whose O(N^2) cost is small
# there; Barnes-Hut (O(N log N), multithreaded) above.
_EXACT_TSNE_MAX_ROWS = 500
_LATENT_TITLES = {"f_o": "original latent f_o", "f_p": "perturbed latent f_p"}


@dataclass
class GroupSeparation:
    """Davies-Bouldin index and silhouette score of the group labels of one latent set."""

    davies_bouldin: float
    silhouette: float
    group_counts: dict[str, int]


@dataclass
class LatentSpaceResult:
    """t-SNE coordinates (Mx2) and group separation of each latent set, for the M known-group rows."""

    groups: list[str]
    embeddings: dict[str, np.ndarray]
    separation: dict[str, GroupSeparation]


def group_separation(features: np.ndarray, groups: Sequence[str | None]) -> GroupSeparation:
    """Compute the Davies-Bouldin index and silhouette score of the groups in NxC ``features``.

    Rows whose group is None are left out.

    Raises:
        InvalidInputError: the shapes do not match, a value is not finite,
            fewer than 2 groups are present, or there are not more known-group
            rows than groups (silhouette is undefined then).
    """
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    known_features, labels = _known_rows(features, groups)
    counts = {name: int(np.sum(labels == name)) for name in sorted(set(labels.tolist()))}
    if len(counts) < 2:
        raise InvalidInputError(
            f"the latent scores need images of at least 2 groups; found {counts or 'none with a known group'}."
        )
    if len(labels) <= len(counts):
        raise InvalidInputError(
            f"the silhouette score needs more images ({len(labels)}) than groups ({len(counts)})."
        )
    return GroupSeparation(
        davies_bouldin=float(davies_bouldin_score(known_features, labels)),
        silhouette=float(silhouette_score(known_features, labels, metric="euclidean")),
        group_counts=counts,
    )


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """Return the Nx2 t-SNE embedding of NxC ``features`` (scikit-learn, PCA initialisation).

    The default perplexity is min(30, (N - 1) / 3), at least 1, because
    scikit-learn requires a perplexity below N. Gradients are exact for up
    to 500 rows and Barnes-Hut above. t-SNE coordinates have no unit, and
    distances between far-apart clusters are not meaningful.
    """
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=float)
    if features.ndim != 2 or features.shape[0] < 3:
        raise InvalidInputError(f"t-SNE needs an NxC array with N >= 3; got shape {features.shape}.")
    if perplexity is None:
        perplexity = max(1.0, min(_MAX_PERPLEXITY, (features.shape[0] - 1) / 3.0))
    method = "exact" if features.shape[0] <= _EXACT_TSNE_MAX_ROWS else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, random_state=seed)
    return tsne.fit_transform(features)


def analyse_latents(latents: dict[str, np.ndarray | None], groups: Sequence[str | None],
                    seed: int = 0) -> LatentSpaceResult:
    """Embed and score each latent set of ``latents`` (keys "f_o" and optionally "f_p", each NxC)."""
    known = [group is not None for group in groups]
    embeddings, separation = {}, {}
    for name in ("f_o", "f_p"):
        features = latents.get(name)
        if features is None:
            continue
        separation[name] = group_separation(features, groups)
        known_features, _ = _known_rows(features, groups)
        embeddings[name] = tsne_embedding(known_features, seed)
    if not separation:
        raise InvalidInputError("no latent to analyse: expected an array 'f_o' (and optionally 'f_p').")
    known_groups = [group for group, keep in zip(groups, known) if keep]
    return LatentSpaceResult(groups=known_groups, embeddings=embeddings, separation=separation)


def plot_latent_space(result: LatentSpaceResult, group_order: Sequence[str] | None = None):
    """Draw one t-SNE panel per latent set, points coloured by group; returns a matplotlib Figure.

    Each panel's title gives its Davies-Bouldin index and silhouette score.
    The figure is built without pyplot, so it needs no display and leaves no
    global state behind.
    """
    from matplotlib.figure import Figure

    names = list(result.embeddings)
    order = list(group_order) if group_order else sorted(set(result.groups))
    labels = np.asarray(result.groups, dtype=object)
    figure = Figure(figsize=(5.2 * len(names), 4.6), dpi=110, layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]

    for axis, name in zip(axes, names):
        points = result.embeddings[name]
        for index, group in enumerate(order):
            selected = labels == group
            if selected.any():
                axis.scatter(points[selected, 0], points[selected, 1], s=18, alpha=0.75,
                             color=f"C{index}", label=f"{group} (n={int(selected.sum())})")
        scores = result.separation[name]
        # Adding 0.0 after rounding turns -0.0 into 0.0, so a silhouette of -0.001 prints as 0.00.
        silhouette = round(scores.silhouette, 2) + 0.0
        axis.set_title(f"{_LATENT_TITLES[name]}\nDavies-Bouldin {scores.davies_bouldin:.2f}, "
                       f"silhouette {silhouette:.2f}", fontsize=11)
        axis.set_xlabel("t-SNE 1")
        axis.set_ylabel("t-SNE 2")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(fontsize=9, loc="best")
    return figure


def _known_rows(features: np.ndarray, groups: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows of NxC ``features`` with a known group and their labels."""
    features = np.asarray(features, dtype=float)
    if features.ndim != 2:
        raise InvalidInputError(f"latents must be an NxC array; got shape {features.shape}.")
    if features.shape[0] != len(groups):
        raise InvalidInputError(
            f"{features.shape[0]} latent rows but {len(groups)} group labels; "
            "latents.npz and per_image.csv must come from the same evaluation."
        )
    if not np.all(np.isfinite(features)):
        raise InvalidInputError("the latents contain values that are not finite (nan or inf).")
    keep = np.array([group is not None for group in groups], dtype=bool)
    labels = np.array([group for group in groups if group is not None], dtype=str)
    return features[keep], labels
