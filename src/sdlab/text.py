"""The text path of Stable Diffusion in miniature: tokenizer, text encoder, text-conditioned U-Net.

SD v1 turns a prompt into 77 token ids with CLIP's BPE tokenizer (a start token, the words, an
end token, then padding to the fixed length; longer prompts are truncated), runs CLIP ViT-L/14's
text transformer over them, and hands the 77 x 768 token states to every cross-attention layer
of the U-Net. The empty prompt "" (start and end token only) is the unconditional input of
classifier-free guidance. Ours keeps each of those steps at toy scale:

    Tokenizer      words of the training captions -> ids; [BOS, w_1, ..., w_n, EOS, PAD, ...]
                   of fixed length (context_length), truncated to it; "" -> [BOS, EOS, PAD, ...]
    TextEncoder    token + position embeddings -> pre-norm transformer layers -> LayerNorm,
                   (B, L) ids -> (B, L, width) token states; padding keys are masked
    TextConditionedUNet  the encoder trained jointly with a U-Net whose transformer blocks
                   cross-attend to its token states (`unet.UNet`, context_dim = width)

The tokenizer's vocabulary is stored in every checkpoint, so a checkpoint alone samples from a
prompt. A word the vocabulary lacks becomes <unk> (`Tokenizer.unknown` lists them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .config import option, require, require_finite
from .transformer import TransformerBlock
from .unet import UNet, UNetConfig

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID = 0
WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@dataclass(frozen=True)
class TextConfig:
    text_cond: bool = option(False, "condition the U-Net on captions through cross-attention (caption "
                                    "dropout: --cond-drop-prob)")
    context_length: int = option(16, "tokens per prompt, start and end token included (SD: 77)")
    text_width: int = option(128, "width of the text encoder's token states (SD v1: 768)")
    text_layers: int = option(2, "transformer layers of the text encoder (SD v1: 12)")
    text_heads: int = option(4, "attention heads of the text encoder")

    def __post_init__(self):
        require_finite(self)
        require(self.context_length >= 3, "context_length",
                f"must be >= 3 (start, one word, end; got {self.context_length})")
        for name in ("text_width", "text_layers", "text_heads"):
            require(getattr(self, name) >= 1, name, f"must be >= 1 (got {getattr(self, name)})")
        require(self.text_width % self.text_heads == 0, "text_heads",
                f"{self.text_heads} heads do not divide --text-width {self.text_width}")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: "A red disc." -> ["a", "red", "disc", "."]."""
    return WORD.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer with SD's fixed-length layout (see the module docstring)."""

    def __init__(self, vocab: list[str], length: int):
        if list(vocab[:len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"a vocabulary starts with {SPECIALS}")
        self.vocab, self.length = list(vocab), length
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, captions, length: int) -> "Tokenizer":
        """The vocabulary of `captions` (sorted words after the special tokens)."""
        return cls([*SPECIALS, *sorted({w for c in captions for w in words(c)})], length)

    @classmethod
    def from_state(cls, state: dict) -> "Tokenizer":
        return cls(state["vocab"], state["length"])

    def state(self) -> dict:
        return {"vocab": self.vocab, "length": self.length}

    def unknown(self, text: str) -> list[str]:
        """The words of `text` the vocabulary lacks (they would become <unk>)."""
        return [w for w in words(text) if w not in self.ids]

    def encode(self, texts: str | list[str]) -> torch.Tensor:
        """Prompts -> ids (B, length) int64: BOS, words (truncated), EOS, then PAD."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), self.length), PAD_ID, dtype=torch.int64)
        unk = self.ids[UNK]
        for row, text in enumerate(texts):
            ids = [self.ids.get(w, unk) for w in words(text)][: self.length - 2]
            out[row, : len(ids) + 2] = torch.tensor([self.ids[BOS], *ids, self.ids[EOS]])
        return out

    def decode(self, ids: torch.Tensor) -> str:
        """One row of ids -> the words between BOS and EOS, space-separated."""
        tokens = [self.vocab[i] for i in ids.tolist()]
        end = tokens.index(EOS) if EOS in tokens else len(tokens)
        return " ".join(t for t in tokens[1:end] if t != PAD)


class TextEncoder(nn.Module):
    """(B, L) token ids -> (B, L, width) token states; padding tokens are masked as keys."""

    def __init__(self, cfg: TextConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.token = nn.Embedding(vocab_size, cfg.text_width)
        self.position = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        nn.init.normal_(self.position, std=0.01)
        self.layers = nn.ModuleList(TransformerBlock(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers))
        self.norm = nn.LayerNorm(cfg.text_width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD_ID
        h = self.token(ids) + self.position[: ids.shape[1]]
        for layer in self.layers:
            h = layer(h, self_mask=mask)
        return self.norm(h)


class TextConditionedUNet(nn.Module):
    """A text encoder and a cross-attention U-Net trained together: (x_t, t, ids) -> output."""

    def __init__(self, unet_cfg: UNetConfig, text_cfg: TextConfig, vocab_size: int):
        super().__init__()
        if unet_cfg.context_dim != text_cfg.text_width:
            raise ValueError(f"the U-Net's context_dim {unet_cfg.context_dim} must equal the text "
                             f"encoder's width {text_cfg.text_width}")
        self.text_encoder = TextEncoder(text_cfg, vocab_size)
        self.unet = UNet(unet_cfg)

    @property
    def cfg(self) -> UNetConfig:
        return self.unet.cfg

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> the U-Net's context: token states (B, L, width) and the mask of real tokens."""
        return self.text_encoder(ids), ids != PAD_ID

    def denoise(self, x: torch.Tensor, t: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The U-Net on encoded prompts (sampling encodes them once, `conditioning.TextCondition`)."""
        return self.unet(x, t, context=context)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.denoise(x, t, self.encode(ids))

    def cross_attentions(self) -> list:
        """The U-Net's cross-attention layers, down path to up path."""
        return [m.cross_attention for m in self.unet.modules() if hasattr(m, "cross_attention")]
