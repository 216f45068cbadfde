"""DeepCluster v2 (Caron et al., NeurIPS 2020, App. A): k-means pseudo-labels of the last epoch.

    memory: z_i = normalise(proj(f(x_i))) of every image, from the previous epoch
    before each epoch, for h = 1..H: spherical k-means of the memory -> centroids C_h, labels y_h(i)
    L = 1/(H V) sum_h sum_views CE(z C_h^T / tau, y_h(i))      (prototypes = centroids, not learned)

Authors' code (SwAV repository, main_deepclusterv2.py): projector as SwAV's (2048 hidden, 128 out),
3 k-means of 3000 centroids (10 iterations, initialised on random samples), tau 0.1; the memory is
filled by a forward pass before training; LARS lr 4.8 at batch 4096, weight decay 1e-6, warm-up,
cosine. Short run: batch 128, lr kept (``common.Recipe``), warm-up 10 %; N // 10 centroids as
SwAV's prototypes; two views; the memory holds the first view's embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("lars", lr=4.8, lr_batch=4096, scaling="none", weight_decay=1e-6, batch_size=128, warmup=0.1)
TAU, HEADS, KMEANS_ITERATIONS = 0.1, 3, 10


@torch.no_grad()
def spherical_kmeans(x, k: int):
    """(centroids [k, D] of unit norm, label of each row of x)."""
    centroids = x[torch.randperm(len(x))[:k]]
    for _ in range(KMEANS_ITERATIONS):
        labels = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        empty = sums.norm(dim=1) == 0
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=1))
    return centroids, (x @ centroids.T).argmax(1)


class DeepClusterV2(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        self.projector = mlp([run.feature_dim, head_width(2048, run.feature_dim), 128])
        self.k = min(3000, run.num_samples // 10)
        self.register_buffer("memory", torch.zeros(run.num_samples, 128))

    def embed(self, x):
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def before_epoch(self, epoch, images, views):
        if epoch == 0:
            with torch.no_grad():
                for chunk in torch.arange(len(images)).split(self.run.batch_size):
                    self.memory[chunk] = self.embed(views(images[chunk]))
        self.clusterings = [spherical_kmeans(self.memory, self.k) for _ in range(HEADS)]

    def loss(self, views, indices, labels):
        z = [self.embed(v) for v in views]
        self.memory[indices] = z[0].detach()
        return torch.stack([F.cross_entropy(e @ centroids.T / TAU, assigned[indices])
                            for centroids, assigned in self.clusterings for e in z]).mean()
