"""The run record: configs + data facts + a resumed checkpoint -> the run, without training."""

import dataclasses

import pytest
import torch

from sdlab.conditioning import ClassCondition, TextCondition, Unconditional
from sdlab.config import ConfigError, config_dict
from sdlab.data import DataConfig
from sdlab.diffusion import DiffusionConfig
from sdlab.diffusion.guidance import GuidanceConfig
from sdlab.latent import LatentConfig
from sdlab.pipeline import DiffusionPipeline
from sdlab.recipes.diffusion import DataFacts, DiffusionRun, final_run, resolve_run
from sdlab.record import DiffusionRecord
from sdlab.text import TextConfig, Tokenizer
from sdlab.unet import UNetConfig

TEXT = TextConfig(text_cond=True, context_length=8, text_width=16, text_layers=1, text_heads=2)
SMALL = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(8,), heads=2)


def record_of(run: DiffusionRun, extras: dict) -> DiffusionRecord:
    return DiffusionRecord.from_config({**config_dict(vars(run)), **extras})


def test_a_new_run_takes_its_image_size_from_the_data_and_its_condition_input_from_the_conditioning():
    run = resolve_run(DiffusionRun(data=DataConfig(image_size=16), unet=SMALL,
                                   guidance=GuidanceConfig(class_cond=True)), None)
    assert run.unet.image_size == 16
    final, extras = final_run(run, DataFacts(3, ("cat", "dog", "eel"), True), ClassCondition(("cat", "dog", "eel")))
    assert final.unet.num_classes == 3 and final.data.hflip
    assert extras == {"kind": "diffusion", "classes": ["cat", "dog", "eel"]}
    record = record_of(final, extras)
    assert record.unet == final.unet and record.class_cond and record.scale_factor == 1.0
    assert isinstance(record.conditioning, ClassCondition) and record.conditioning.classes == ("cat", "dog", "eel")


def test_captions_naming_sides_turn_flips_off_and_the_tokenizer_is_stored():
    tokenizer = Tokenizer.build(["a red disc at the left", "a blue square"], TEXT.context_length)
    conditioning = TextCondition(TEXT, tokenizer, ("a blue square",), ("disc", "square"))
    run = resolve_run(DiffusionRun(data=DataConfig(image_size=16), unet=SMALL, text=TEXT), None)
    final, extras = final_run(run, DataFacts(3, ("disc", "square"), False), conditioning)
    assert not final.data.hflip and final.unet.context_dim == TEXT.text_width
    back = record_of(final, extras).conditioning
    assert isinstance(back, TextCondition) and back.sample_prompts == ("a blue square",)
    assert back.tokenizer.vocab == tokenizer.vocab and back.class_names == ("disc", "square")


def test_latent_facts_set_the_geometry_of_a_new_run_but_not_of_a_resumed_one():
    latent = {"geometry": {"in_channels": 4, "image_size": 8, "attention_resolutions": (4,)},
              "info": {"vae_sha256": "ab" * 32, "scale_factor": 0.5, "downsampling": 4, "vae_image_size": 32}}
    run = resolve_run(DiffusionRun(unet=SMALL, latent=LatentConfig(latent=True, vae_checkpoint="vae.pt")), None)
    final, extras = final_run(run, DataFacts(4, ("a",), True, latent), Unconditional(("a",)))
    assert (final.unet.in_channels, final.unet.image_size, final.unet.attention_resolutions) == (4, 8, (4,))
    assert not final.data.hflip and extras["latent_vae"]["vae_checkpoint"] == "vae.pt"
    record = record_of(final, extras)
    assert record.scale_factor == 0.5 and record.latent_vae["vae_sha256"] == "ab" * 32
    # resumed: the stored U-Net stays as it was, whatever this command's flags say
    again = resolve_run(DiffusionRun(unet=dataclasses.replace(SMALL, base_channels=64),
                                     diffusion=DiffusionConfig(num_timesteps=10)), record)
    assert again.unet == record.unet and again.diffusion == record.diffusion
    assert again.latent == LatentConfig(latent=True, vae_checkpoint="vae.pt")
    resumed, _ = final_run(again, DataFacts(4, ("a",), True, latent), record.conditioning, resumed=True)
    assert resumed.unet == record.unet


def test_a_resumed_run_keeps_its_conditioning_and_text_encoder():
    tokenizer = Tokenizer.build(["a red disc"], TEXT.context_length)
    run = resolve_run(DiffusionRun(unet=SMALL, text=TEXT), None)
    final, extras = final_run(run, DataFacts(3, ("disc",), True), TextCondition(TEXT, tokenizer, ("a red disc",)))
    stored = record_of(final, extras)
    again = resolve_run(DiffusionRun(guidance=GuidanceConfig(class_cond=True)), stored)
    assert again.text == TEXT and not again.guidance.class_cond


def test_channels_that_do_not_match_the_data_are_refused_naming_the_flag():
    run = resolve_run(DiffusionRun(unet=SMALL), None)
    with pytest.raises(ConfigError, match="--in-chans 1"):
        final_run(run, DataFacts(1, ("a",), True), Unconditional())


def test_the_pipeline_of_a_record_samples_with_the_stored_schedule_and_conditioning():
    run = resolve_run(DiffusionRun(data=DataConfig(image_size=8), unet=dataclasses.replace(SMALL, attention_resolutions=()),
                                   diffusion=DiffusionConfig(num_timesteps=20), guidance=GuidanceConfig(class_cond=True)), None)
    final, extras = final_run(run, DataFacts(3, ("a", "b"), True), ClassCondition(("a", "b")))
    record = record_of(final, extras)
    pipe = DiffusionPipeline.from_record(record, record.network().eval())
    assert pipe.schedule.num_timesteps == 20 and pipe.classes == ("a", "b") and pipe.image_size == 8
    images = pipe(2, labels=torch.tensor([0, 1]), guidance_scale=2.0, sampler="ddim", sample_steps=2)
    assert images.shape == (2, 3, 8, 8)
