"""A small modality-agnostic transformer for FedCola (seed 002): one block design for both
modalities, so an image block and a text block have weights of the same shapes.

::

    image -> patch embedding  -> blocks.image (L x [attn, mlp]) -> norm.image -> mean of tokens
    text  -> token embedding  -> blocks.text  (L x [attn, mlp]) -> norm.text  -> mean of tokens

Task heads pick the task by which modalities a row has: ``heads.image`` for image-only rows,
``heads.text`` for text-only rows, ``heads.both`` (on the mean of the two features) for
paired rows, and ``pair.image`` / ``pair.text`` map paired rows into a retrieval space.
Because image-only rows and text-only rows are different clients' data sets, these heads are
the per-data-set heads of the seed.

Parameter names are what FedCola's server keys on: ``blocks.<modality>.<i>.attn.*`` are the
self-attention weights it shares across modalities, everything else stays with its data set.
The model takes the inputs of ``towers=small``: raw uint8 pixels ``[B, C, H, W]`` and hashed
token ids ``[B, L]`` (0 = padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adamodal.errors import ConfigError

#: the linear layers of a block, by name inside the block
BLOCK_LINEARS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
MODALITY_OF_TASK = {"image": ("image",), "text": ("text",), "both": ("image", "text")}


@dataclass(frozen=True)
class TransformerSpec:
    """Everything needed to build identical transformers on the server and every client."""

    num_classes: int
    modalities: tuple[str, ...]
    img_shape: tuple[int, ...] | None = None  # (C, H, W)
    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    #: patch side in pixels; 0 = a quarter of the image side (16 patches)
    patch: int = 0
    #: text ids are folded into this many embedding rows (the hashed vocabulary is 32k)
    vocab: int = 8192
    #: tokens kept per text (hashed unigrams and bigrams, in reading order)
    max_tokens: int = 64
    proj_dim: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if min(self.width, self.heads, self.proj_dim) < 1 or self.patch < 0:
            raise ConfigError("fedcola.width, fedcola.heads and fedcola.proj_dim must be >= 1, fedcola.patch >= 0")
        if self.width % self.heads:
            raise ConfigError(f"fedcola.width ({self.width}) must be a multiple of fedcola.heads ({self.heads})")
        if self.vocab < 2 or self.max_tokens < 1 or self.depth < 1:
            raise ConfigError("fedcola.vocab must be >= 2, fedcola.max_tokens and fedcola.depth >= 1")


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if keep is None else keep[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))


class ImageEmbed(nn.Module):
    """Non-overlapping patches -> tokens, plus a class token and learned positions."""

    def __init__(self, img_shape: tuple[int, ...], width: int, patch: int) -> None:
        super().__init__()
        if len(img_shape) != 3:
            raise ConfigError(f"fedcola needs raw images (C, H, W) (towers=small), got shape {tuple(img_shape)}")
        c, h, w = (int(v) for v in img_shape)
        patch = patch or max(1, max(h, w) // 4)
        if patch > min(h, w):
            raise ConfigError(f"fedcola.patch={patch} is larger than the {h}x{w} images")
        self.in_shape = (c, h, w)
        self.proj = nn.Conv2d(c, width, kernel_size=patch, stride=patch)
        n = (h // patch) * (w // patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = x.reshape(-1, *self.in_shape)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        tokens = self.proj((x - 0.5) / 0.5).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        return tokens + self.pos, None


class TextEmbed(nn.Module):
    """Hashed token ids -> embeddings, plus a class token and learned positions; padding is
    masked out of attention (the class token is always kept, so an empty text is defined)."""

    def __init__(self, vocab: int, width: int, max_tokens: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.max_tokens = max_tokens
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, max_tokens + 1, width) * 0.02)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = ids[:, : self.max_tokens].long()
        present = ids != 0
        ids = torch.where(present, (ids - 1) % (self.vocab - 1) + 1, torch.zeros_like(ids))
        tokens = torch.cat([self.cls.expand(len(ids), -1, -1), self.embed(ids)], dim=1)
        keep = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)
        return tokens + self.pos[:, : tokens.shape[1]], keep


class CoLaNet(nn.Module):
    """Per-modality embeddings and blocks of one shared design, per-task heads."""

    def __init__(self, spec: TransformerSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.width
        self.embed = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        self.norm = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for m in spec.modalities:
            if m == "image":
                if spec.img_shape is None:
                    raise ConfigError("fedcola needs the image shape of the data set")
                self.embed[m] = ImageEmbed(spec.img_shape, w, spec.patch)
            else:
                self.embed[m] = TextEmbed(spec.vocab, w, spec.max_tokens)
            self.blocks[m] = nn.ModuleList(Block(w, spec.heads, spec.mlp_ratio, spec.dropout) for _ in range(spec.depth))
            self.norm[m] = nn.LayerNorm(w)
            self.heads[m] = nn.Linear(w, spec.num_classes)
        self.pair = nn.ModuleDict()
        if len(spec.modalities) == 2:
            self.heads["both"] = nn.Linear(w, spec.num_classes)
            for m in spec.modalities:
                self.pair[m] = nn.Linear(w, spec.proj_dim)

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """The feature ``[B, width]`` of one modality's inputs: the mean of its output tokens
        (class token included, padding excluded). Mean pooling learns much faster from scratch
        on small data than the class token alone, which matters for a few-round federation."""
        h, keep = self.embed[modality](x)
        for block in self.blocks[modality]:
            h = block(h, keep)
        h = self.norm[modality](h)
        if keep is None:
            return h.mean(dim=1)
        w = keep.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(dim=1) / w.sum(dim=1)

    def pair_embeddings(self, x_img: torch.Tensor, x_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm retrieval embeddings of paired rows (image, text)."""
        zi = F.normalize(self.pair["image"](self.encode("image", x_img)), dim=-1)
        zt = F.normalize(self.pair["text"](self.encode("text", x_txt)), dim=-1)
        return zi, zt

    def forward(
        self, x_img: torch.Tensor | None, x_txt: torch.Tensor | None, m_img: torch.Tensor, m_txt: torch.Tensor,
        return_pairs: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Logits ``[B, classes]``, each row from the head of the modalities it has; with
        ``return_pairs`` also the retrieval embeddings of the rows that have both (else None).
        Encoders run only on the rows that have their modality."""
        has_img = m_img.bool() if x_img is not None and "image" in self.embed else torch.zeros_like(m_img, dtype=torch.bool)
        has_txt = m_txt.bool() if x_txt is not None and "text" in self.embed else torch.zeros_like(m_txt, dtype=torch.bool)
        feats: dict[str, torch.Tensor] = {}
        if bool(has_img.any()):
            feats["image"] = self.encode("image", x_img[has_img])
        if bool(has_txt.any()):
            feats["text"] = self.encode("text", x_txt[has_txt])
        ref = next(iter(feats.values()), None)
        dtype = ref.dtype if ref is not None else torch.float32
        logits = torch.zeros(len(m_img), self.spec.num_classes, device=m_img.device, dtype=dtype)
        both = has_img & has_txt
        img_only, txt_only = has_img & ~has_txt, has_txt & ~has_img
        # positions of each row inside the per-modality feature tensors
        pos_img = torch.cumsum(has_img.long(), 0) - 1
        pos_txt = torch.cumsum(has_txt.long(), 0) - 1
        if bool(img_only.any()):
            logits[img_only] = self.heads["image"](feats["image"][pos_img[img_only]])
        if bool(txt_only.any()):
            logits[txt_only] = self.heads["text"](feats["text"][pos_txt[txt_only]])
        zi = zt = None
        if bool(both.any()):
            fi, ft = feats["image"][pos_img[both]], feats["text"][pos_txt[both]]
            logits[both] = self.heads["both"]((fi + ft) / 2)
            if return_pairs:
                zi = F.normalize(self.pair["image"](fi), dim=-1)
                zt = F.normalize(self.pair["text"](ft), dim=-1)
        if return_pairs:
            return logits, zi, zt
        return logits


class RoutedNet(nn.Module):
    """Several data sets' models behind one forward: each row goes to the model of the data
    set its modalities say it is from (paired -> ``multimodal``, image only -> ``image_only``,
    text only -> ``text_only``), falling back to the multimodal model when a kind is absent."""

    ROUTES = {"multimodal": "both", "image_only": "image", "text_only": "text"}

    def __init__(self, nets: dict[str, CoLaNet]) -> None:
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self.num_classes = next(iter(nets.values())).spec.num_classes

    def _net(self, group: str) -> CoLaNet:
        if group in self.nets:
            return self.nets[group]
        return self.nets["multimodal"] if "multimodal" in self.nets else next(iter(self.nets.values()))

    def forward(self, x_img, x_txt, m_img, m_txt) -> torch.Tensor:
        m_img, m_txt = m_img.bool(), m_txt.bool()
        rows = {"multimodal": m_img & m_txt, "image_only": m_img & ~m_txt, "text_only": m_txt & ~m_img}
        out = torch.zeros(len(m_img), self.num_classes, device=m_img.device)
        for group, sel in rows.items():
            if bool(sel.any()):
                xi = None if x_img is None else x_img[sel]
                xt = None if x_txt is None else x_txt[sel]
                out[sel] = self._net(group)(xi, xt, m_img[sel], m_txt[sel]).float()
        return out


def build_transformer(spec: TransformerSpec, seed: int) -> CoLaNet:
    """Same spec + same seed -> bit-identical initial weights on every machine."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CoLaNet(spec)


def param_modality(name: str) -> str | None:
    """The modality a parameter belongs to (``blocks.image.0...`` -> ``image``), None for
    parameters of the paired task (``heads.both``)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in ("image", "text"):
        return parts[1]
    return None


def is_attention(name: str) -> bool:
    """Self-attention weights of a block, the part FedCola shares across modalities."""
    return name.startswith("blocks.") and ".attn." in name
