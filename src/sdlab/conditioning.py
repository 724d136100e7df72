"""What a diffusion model is conditioned on, owned in one place.

Three types share one small interface, so sampling, evaluation, figures and recipes never ask
"text or class?":

    Unconditional     eps(x_t, t)
    ClassCondition    eps(x_t, t, y): y a class id (B,); the null class is the extra id K
    TextCondition     eps(x_t, t, c): c a prompt's token ids (B, L), encoded by the text
                      encoder into token states; the null condition is the empty prompt ""

Each one says, for its kind of model:
    prepare(splits)         the dataset's conditions (class ids, or captions' token ids) in the
                            `labels` slot, and the condition-specific facts learnt from the data
    configure, network      the U-Net config it needs (classes or context width) and the network
    train_input             a training batch's conditions after dropout to the null condition
                            (classifier-free guidance, Ho & Salimans 2022, sec. 3.2)
    request, denoiser       a sampling call: (condition, what guidance pushes away from), encoded
                            once before the sampler's loop (SD encodes the prompt once), combined
                            by `diffusion.guidance.guided`
    ask, examples, balanced what a user, a sample grid or an evaluation asks for
    stored, from_config     what a checkpoint's run config keeps of it, and back

A new conditioning type is a class here, its network input (`unet.UNet`'s embedding or context),
and a test.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import torch
from torch import nn

from .captions import with_captions
from .config import ConfigError, from_stored
from .data import ImageSet, Splits
from .diffusion.guidance import GuidanceConfig, drop_labels, guided
from .errors import UserError
from .text import TextConditionedUNet, TextConfig, Tokenizer, words
from .unet import UNet, UNetConfig


class ConditionError(UserError, ValueError):
    """A request the model cannot take (a class for a text model, an unknown class name, ...)."""


class Unconditional:
    """eps(x_t, t): nothing to ask for, nothing to guide toward."""

    kind = "unconditional"
    tokenizer: Tokenizer | None = None

    def __init__(self, class_names: tuple[str, ...] = ()):
        self.class_names = tuple(class_names)     # the training data's classes (scoring names them)

    # ------------------------------------------------------------ the model and its data
    @property
    def classes(self) -> tuple[str, ...]:
        """The classes a user can ask for (none)."""
        return ()

    def prepare(self, splits: Splits, seed: int = 0) -> tuple[Splits, "Unconditional"]:
        """The splits with their conditions in the labels slot, and the conditioning that knows
        the data (classes, vocabulary)."""
        return splits, type(self)(splits.train.classes)

    def allows_hflip(self, train: ImageSet) -> bool:
        """Whether mirroring an image keeps its condition true."""
        return True

    def configure(self, unet: UNetConfig) -> UNetConfig:
        """The U-Net config with the input this condition needs."""
        return unet

    def network(self, unet: UNetConfig) -> nn.Module:
        return UNet(unet)

    def describe(self) -> str:
        """A phrase for the run's summary line ("" or ", class-conditional", ...)."""
        return ""

    def stored(self) -> dict:
        """What the run config keeps beyond its sections (tokenizer, sample prompts)."""
        return {}

    # ------------------------------------------------------------ training
    def train_input(self, labels: torch.Tensor, drop_prob: float = 0.0, generator=None) -> torch.Tensor | None:
        """The network's condition for a batch of dataset conditions, each replaced by the null
        condition with probability `drop_prob` (0: no dropout, no random numbers drawn)."""
        return None

    def null(self, num: int, device: torch.device) -> torch.Tensor | None:
        """The null condition for `num` images (the unconditional model)."""
        return None

    # ------------------------------------------------------------ sampling
    def request(self, num: int, labels=None, prompt=None, negative_prompt=None, device=None):
        """(condition, what guidance pushes away from) for `num` images from the pipeline's
        arguments; ConditionError for an input this model does not take."""
        if labels is not None:
            raise ConditionError("this model is not class-conditional (train with --class-cond)")
        if prompt is not None or negative_prompt is not None:
            raise ConditionError("this model is not text-conditioned (train with --text-cond); it takes no prompt")
        return None, None

    def denoiser(self, model: nn.Module, cond, uncond, scale: float):
        """callable(x_t, t, _) for the sampler: the model, guided toward `cond` at scale w."""
        return model

    def class_ids(self, names: list[str]) -> list[int]:
        raise ConditionError("--class: this checkpoint is not class-conditional (train with --class-cond)")

    def ask(self, num: int, classes: list[str] = (), prompts: list[str] = (), negative_prompt: str | None = None) -> dict:
        """`draw_samples` keywords for a user's --class / --prompt / --negative-prompt, cycled
        over `num` images."""
        if prompts or negative_prompt is not None:
            raise ConditionError("--prompt: this checkpoint is not text-conditioned (train with --text-cond)")
        if not classes:
            return {}
        ids = torch.tensor(self.class_ids(list(classes)))
        return {"labels": ids.repeat(-(-num // len(ids)))[:num]}

    def examples(self, num: int, prompts=()) -> dict:
        """Pipeline keywords for a sample grid of `num` images: every class or prompt in turn
        (`prompts`, default the run's sample prompts)."""
        if prompts:
            raise ConditionError("--prompt: this checkpoint is not text-conditioned (train with --text-cond)")
        return {"labels": torch.arange(num) % len(self.classes)} if self.classes else {}

    @property
    def grid_columns(self) -> int:
        """Columns of a sample grid (one per class or prompt)."""
        return 8

    def balanced(self, num: int, template: str = "a photo of a {}") -> tuple[dict, torch.Tensor | None]:
        """What evaluation draws: (pipeline keywords with one condition per image, the class each
        image asks for, or None)."""
        return {}, None

    def describe_balanced(self, template: str) -> str:
        """How `balanced` chose the conditions, for an evaluation's record."""
        return "unconditional"


class ClassCondition(Unconditional):
    """eps(x_t, t, y) with y in 0..K-1, or the null class K (the unconditional model)."""

    kind = "class"

    @property
    def classes(self) -> tuple[str, ...]:
        return self.class_names

    def configure(self, unet: UNetConfig) -> UNetConfig:
        return dataclasses.replace(unet, num_classes=len(self.classes))

    def describe(self) -> str:
        return ", class-conditional"

    def train_input(self, labels, drop_prob=0.0, generator=None):
        return drop_labels(labels, drop_prob, len(self.classes), generator)

    def null(self, num, device):
        return torch.full((num,), len(self.classes), dtype=torch.long, device=device)

    def request(self, num, labels=None, prompt=None, negative_prompt=None, device=None):
        super().request(num, None, prompt, negative_prompt)
        return None if labels is None else torch.as_tensor(labels, device=device), len(self.classes)

    def denoiser(self, model, cond, uncond, scale):
        return model if cond is None else guided(model, cond, scale, uncond)

    def class_ids(self, names: list[str]) -> list[int]:
        """Class names or numeric ids -> ids; ConditionError naming the allowed classes."""
        ids = []
        for name in names:
            if name.isdigit() and int(name) < len(self.classes):
                ids.append(int(name))
            elif name in self.classes:
                ids.append(self.classes.index(name))
            else:
                raise ConditionError(f"--class {name!r}: choose one of {', '.join(self.classes)} "
                                     f"or an id 0-{len(self.classes) - 1}")
        return ids

    @property
    def grid_columns(self) -> int:
        return len(self.classes)

    def balanced(self, num, template="a photo of a {}"):
        labels = torch.arange(num) % len(self.classes)
        return {"labels": labels}, labels

    def describe_balanced(self, template):
        return f"classes 0-{len(self.classes) - 1} in turn"


class TextCondition(Unconditional):
    """eps(x_t, t, c) with c a prompt's token ids; the text encoder turns them into the token
    states the U-Net cross-attends to (`text.TextConditionedUNet`). Null: the empty prompt."""

    kind = "text"

    def __init__(self, text: TextConfig, tokenizer: Tokenizer | None = None, sample_prompts: tuple[str, ...] = (),
                 class_names: tuple[str, ...] = ()):
        super().__init__(class_names)
        self.text, self.tokenizer, self.sample_prompts = text, tokenizer, tuple(sample_prompts)

    def prepare(self, splits, seed=0):
        """Captions (the dataset's, or templates over its class names, `captions.with_captions`)
        tokenized into the labels slot; the tokenizer is the stored one of a resumed run, else
        built from the training captions; the sample prompts are the first distinct validation
        captions."""
        train, test = with_captions(splits.train, seed), with_captions(splits.test, seed + 1)
        tokenizer = self.tokenizer or Tokenizer.build(train.captions, self.text.context_length)
        tokenize = lambda s: ImageSet(s.images, tokenizer.encode(list(s.captions)), s.classes, s.captions)
        prompts = self.sample_prompts or tuple(dict.fromkeys(test.captions))[:8]
        return Splits(tokenize(train), tokenize(test)), TextCondition(self.text, tokenizer, prompts, train.classes)

    def allows_hflip(self, train):
        """Not when a caption names left or right: a mirrored image would contradict it."""
        return not any(w in ("left", "right") for c in train.captions for w in words(c))

    def configure(self, unet):
        return dataclasses.replace(unet, context_dim=self.text.text_width)

    def network(self, unet):
        return TextConditionedUNet(unet, self.text, len(self.tokenizer.vocab))

    def describe(self):
        return f", text-conditioned ({len(self.tokenizer.vocab)} tokens)"

    def stored(self):
        return {"tokenizer": self.tokenizer.state(), "sample_prompts": list(self.sample_prompts)}

    @functools.cached_property
    def empty_prompt(self) -> torch.Tensor:
        """The empty prompt's ids (L,): the null condition."""
        return self.tokenizer.encode("")[0]

    def train_input(self, labels, drop_prob=0.0, generator=None):
        return drop_labels(labels, drop_prob, self.empty_prompt, generator)

    def null(self, num, device):
        return self.empty_prompt.to(device).expand(num, -1)

    def tokens(self, prompts: str | list[str] | None, num: int, device) -> torch.Tensor:
        """Prompt ids (num, L): one prompt for all, or one per image; None is the empty prompt.
        A prompt the model would misread (a word outside its vocabulary, more words than its
        context holds) is a ConditionError naming the word, never an untrained <unk> or a cut."""
        prompts = [prompts or ""] * num if prompts is None or isinstance(prompts, str) else list(prompts)
        if len(prompts) != num:
            raise ConditionError(f"got {len(prompts)} prompts for {num} images; give one, or one per image")
        for prompt in dict.fromkeys(prompts):
            self.check_prompt(prompt)
        return self.tokenizer.encode(prompts).to(device)

    def check_prompt(self, prompt: str) -> None:
        """ConditionError unless every word of `prompt` is in the vocabulary and all fit the context."""
        unknown = self.tokenizer.unknown(prompt)
        if unknown:
            word, known = unknown[0], [w for w in self.tokenizer.vocab if not w.startswith("<")]
            near = difflib.get_close_matches(word, known, n=3)
            raise ConditionError(f"prompt {prompt!r}: {word!r} is not in this model's vocabulary (the words of its "
                                 f"training captions){'; nearest: ' + ', '.join(near) if near else ''}")
        room = self.tokenizer.length - 2
        if len(words(prompt)) > room:
            raise ConditionError(f"prompt {prompt!r} has {len(words(prompt))} words; this model reads at most {room} "
                                 f"(its context of {self.tokenizer.length} tokens holds a start and an end token too)")

    def request(self, num, labels=None, prompt=None, negative_prompt=None, device=None):
        if labels is not None:
            raise ConditionError("this model is text-conditioned: give prompts, not class labels")
        return self.tokens(prompt, num, device), self.tokens(negative_prompt, num, device)

    def denoiser(self, model, cond, uncond, scale):
        """The prompt and the negative (or empty) prompt go through the text encoder once, here
        (in one batch; at w = 0 or 1 only the one guidance uses); every step of the sampler reuses
        their token states."""
        if scale in (0.0, 1.0):
            only = model.encode(uncond if scale == 0.0 else cond)
            return guided(model.denoise, only, scale, only)
        states, mask = model.encode(torch.cat([cond, uncond]))
        (states_c, states_u), (mask_c, mask_u) = states.chunk(2), mask.chunk(2)
        return guided(model.denoise, (states_c, mask_c), scale, (states_u, mask_u))

    def ask(self, num, classes=(), prompts=(), negative_prompt=None):
        if classes:
            self.class_ids(list(classes))
        texts = list(prompts) or [""]
        asked = {"prompts": [texts[i % len(texts)] for i in range(num)]}
        return asked if negative_prompt is None else {**asked, "negative_prompt": negative_prompt}

    def examples(self, num, prompts=()):
        prompts = list(prompts) or list(self.sample_prompts)
        if not prompts:
            raise ConditionError("this checkpoint stores no sample prompts; give them with --prompt")
        return {"prompt": [prompts[i % len(prompts)] for i in range(num)]}

    @property
    def grid_columns(self) -> int:
        return len(self.sample_prompts) or 8

    def balanced(self, num, template="a photo of a {}"):
        """The template filled with the training data's class names in turn (the labels name the
        class each prompt asks for, for scoring)."""
        if "{}" not in template:
            raise ConditionError(f"--prompt-template {template!r} needs a {{}} for the class name")
        labels = torch.arange(num) % len(self.class_names)
        return {"prompt": [template.format(self.class_names[y].replace("_", " ")) for y in labels.tolist()]}, labels

    def describe_balanced(self, template):
        return f"prompts {template!r} over {len(self.class_names)} classes in turn"


def for_run(guidance: GuidanceConfig, text: TextConfig) -> Unconditional:
    """The conditioning a new run's configs ask for, before it has seen its data (a resumed run
    takes its checkpoint's, `record.DiffusionRecord.conditioning`)."""
    if text.text_cond and guidance.class_cond:
        raise ConfigError("text_cond", "choose --text-cond or --class-cond, not both")
    if text.text_cond:
        return TextCondition(text)
    return ClassCondition() if guidance.class_cond else Unconditional()


def from_config(config: dict) -> Unconditional:
    """The conditioning of a diffusion run config (config.json, or a checkpoint's "config")."""
    names = tuple(config.get("classes") or ())
    if (config.get("text") or {}).get("text_cond"):
        return TextCondition(from_stored(TextConfig, config["text"]), Tokenizer.from_state(config["tokenizer"]),
                             tuple(config.get("sample_prompts") or ()), names)
    return ClassCondition(names) if config["unet"]["num_classes"] else Unconditional(names)

