"""Distillation losses on L2-normalised embeddings in the teacher's space.

Every function takes the global batch (all ranks' rows gathered), so one process and N
processes compute the same value. Rows of `s_*` are the student's, `t_*` the teacher's cached
ones; `s_img[i]` is paired with `s_txt[i]` (its caption or label prompt) where a pair is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgevl.distill.config import LossWeights


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Feature distillation (CLIP-KD, Yang et al., CVPR 2024, "FD"): pull each student embedding
    onto the teacher's. CLIP-KD measured plain FD (MSE) as the strongest single loss (ViT-B/16 ->
    ViT-T/16, 34.2 vs 30.6 zero-shot IN-1k). On unit vectors MSE = 2 - 2 cos, so "cosine" and
    "mse" differ by a factor of 2 in gradient."""
    if kind == "mse":
        return (student - teacher).pow(2).sum(-1).mean()
    return (1 - (student * teacher).sum(-1)).mean()


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def affinity_loss(s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Affinity mimicking (TinyCLIP, Wu et al., ICCV 2023): cross-entropy of the student's
    image->text and text->image similarity rows against the teacher's softmax, both directions."""
    s_logits = s_img @ s_txt.T / temperature
    t_logits = t_img @ t_txt.T / temperature
    return (_soft_ce(s_logits, F.softmax(t_logits, -1)) + _soft_ce(s_logits.T, F.softmax(t_logits.T, -1))) / 2


def kl_loss(s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """KL divergence to the teacher's similarity distribution, both directions (MobileCLIP,
    Vasu et al., CVPR 2024: loss (1-λ)·CLIP + λ·KL on "reinforced" data whose teacher embeddings
    are stored with it). Same gradient as `affinity_loss`; its value is 0 at a perfect match."""
    s_logits = s_img @ s_txt.T / temperature
    t_logits = t_img @ t_txt.T / temperature
    kl = 0.0
    for s, t in ((s_logits, t_logits), (s_logits.T, t_logits.T)):
        kl = kl + F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return kl / 2


def contrastive_loss(s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor,
                     pair_ids: torch.Tensor, temperature: float, soften: float) -> torch.Tensor:
    """Contrastive image-text alignment (CLIP's InfoNCE, both directions) with softened negatives:
    the target of row i is (1 - soften)·[its own pair] + soften·teacher softmax. LightCLIP
    (Nie et al., 2023) softens negative labels progressively; DC-CLIP aligns the towers
    contrastively in its second stage. Rows whose texts are the same text (`pair_ids` equal)
    are all positives, so repeated labels in a batch are not pushed apart."""
    s_logits = s_img @ s_txt.T / temperature
    t_logits = t_img @ t_txt.T / temperature
    same = (pair_ids[:, None] == pair_ids[None, :]).to(s_logits.dtype)
    hard = same / same.sum(-1, keepdim=True)
    loss = 0.0
    for s, t, h in ((s_logits, t_logits, hard), (s_logits.T, t_logits.T, hard.T / hard.T.sum(-1, keepdim=True))):
        loss = loss + _soft_ce(s, (1 - soften) * h + soften * F.softmax(t, -1))
    return loss / 2


def total_loss(weights: LossWeights, progress: float, s_img: torch.Tensor, t_img: torch.Tensor,
               s_pair: torch.Tensor, t_pair: torch.Tensor, pair_ids: torch.Tensor,
               s_txt: torch.Tensor, t_txt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum for one step and each term's value. `s_pair`/`t_pair`: the texts paired
    with the images; `s_txt`/`t_txt`: every text of the step (pairs and corpus texts), for the
    text tower's feature distillation; `progress` (0..1 through the stage) ramps the softening."""
    terms: dict[str, torch.Tensor] = {}
    if weights.feature:
        terms["feature"] = (feature_loss(s_img, t_img, weights.feature_kind)
                            + feature_loss(s_txt, t_txt, weights.feature_kind)) / 2
    if weights.affinity:
        terms["affinity"] = affinity_loss(s_img, s_pair, t_img, t_pair, weights.temperature)
    if weights.kl:
        terms["kl"] = kl_loss(s_img, s_pair, t_img, t_pair, weights.temperature)
    if weights.contrastive:
        terms["contrastive"] = contrastive_loss(s_img, s_pair, t_img, t_pair, pair_ids, weights.temperature,
                                                weights.soften * progress)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
