"""The conditioning module: one owner for unconditional, class and text conditioning."""

import pytest
import torch

from sdlab.conditioning import ClassCondition, ConditionError, TextCondition, Unconditional, for_run, from_config
from sdlab.config import ConfigError
from sdlab.diffusion import NoiseSchedule
from sdlab.diffusion.guidance import GuidanceConfig, guided
from sdlab.pipeline import DiffusionPipeline
from sdlab.text import TextConfig
from sdlab.unet import UNet, UNetConfig

from test_text import CAPTIONS, TEXT, tiny_model


def text_condition() -> tuple[torch.nn.Module, TextCondition]:
    model, tokenizer = tiny_model()
    return model, TextCondition(TEXT, tokenizer, tuple(CAPTIONS), ("disc", "square"))


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_text_denoiser_encodes_once_and_equals_guidance_on_token_ids(scale):
    model, cond = text_condition()
    prompts, negative = CAPTIONS[:2], ["a green cross", ""]
    ids, neg_ids = cond.request(2, prompt=prompts, negative_prompt=negative, device=torch.device("cpu"))
    calls = []
    model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        denoiser = cond.denoiser(model, ids, neg_ids, scale)
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        outs = [denoiser(x, torch.full((2,), t), None) for t in (40, 20, 5)]
        assert len(calls) == 1                    # the prompt's token states serve every step
        reference = guided(model, ids, scale, neg_ids)   # the model re-encoding its ids per call
        for t, out in zip((40, 20, 5), outs):
            torch.testing.assert_close(out, reference(x, torch.full((2,), t), None), atol=1e-6, rtol=1e-5)


def test_requests_a_model_cannot_take_are_refused_with_the_reason():
    model, text = text_condition()
    classes = ClassCondition(("cat", "dog"))
    with pytest.raises(ConditionError, match="text-conditioned: give prompts"):
        text.request(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ConditionError, match="2 prompts for 3 images"):
        text.request(3, prompt=CAPTIONS[:2])
    with pytest.raises(ConditionError, match="not text-conditioned"):
        classes.request(2, prompt="a cat")
    with pytest.raises(ConditionError, match="not class-conditional"):
        Unconditional().request(2, labels=torch.tensor([0, 1]))
    with pytest.raises(ConditionError, match="--class: this checkpoint is not class-conditional"):
        text.ask(2, classes=["cat"])
    with pytest.raises(ConditionError, match="--class 'horse': choose one of cat, dog"):
        classes.ask(2, classes=["horse"])
    with pytest.raises(ConditionError, match="--prompt: this checkpoint is not text-conditioned"):
        classes.ask(2, negative_prompt="blurry")
    with pytest.raises(ConditionError, match="needs a {}"):
        text.balanced(4, "a photo")
    with pytest.raises(ConfigError, match="not both"):
        for_run(GuidanceConfig(class_cond=True), TextConfig(text_cond=True))


def test_what_users_grids_and_evaluations_ask_for():
    _, text = text_condition()
    classes = ClassCondition(("cat", "dog", "eel"))
    assert classes.ask(5, classes=["dog", "0"])["labels"].tolist() == [1, 0, 1, 0, 1]
    assert classes.examples(4)["labels"].tolist() == [0, 1, 2, 0] and classes.grid_columns == 3
    asked, labels = classes.balanced(4)
    assert torch.equal(asked["labels"], labels) and labels.tolist() == [0, 1, 2, 0]
    assert text.ask(3, prompts=["a", "b"], negative_prompt="c") == {"prompts": ["a", "b", "a"],
                                                                   "negative_prompt": "c"}
    assert text.examples(4)["prompt"] == [*CAPTIONS, CAPTIONS[0]]
    asked, labels = text.balanced(3, "a photo of a {}")
    assert asked == {"prompt": ["a photo of a disc", "a photo of a square", "a photo of a disc"]}
    assert labels.tolist() == [0, 1, 0]
    assert Unconditional(("cat",)).balanced(4) == ({}, None) and Unconditional().examples(4) == {}
    with pytest.raises(ConditionError, match="stores no sample prompts"):
        TextCondition(TEXT, text.tokenizer).examples(2)


def test_training_input_drops_to_the_null_condition_and_validation_draws_nothing():
    _, text = text_condition()
    classes = ClassCondition(("cat", "dog"))
    ids = text.tokenizer.encode(CAPTIONS[:2])
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(text.train_input(ids, 0.0, g), ids) and torch.equal(g.get_state(), state)
    assert torch.equal(text.train_input(ids, 1.0, g), text.null(2, torch.device("cpu")))
    assert text.null(2, torch.device("cpu"))[0].tolist() == text.tokenizer.encode("")[0].tolist()
    assert classes.train_input(torch.tensor([0, 1]), 1.0, g).tolist() == [2, 2]
    assert Unconditional().train_input(torch.tensor([0, 1]), 1.0, g) is None


def test_a_run_config_stores_the_conditioning_and_rebuilds_it():
    _, text = text_condition()
    unet = {"num_classes": 0}
    back = from_config({"unet": unet, "text": vars(TEXT), "classes": ["disc", "square"], **text.stored()})
    assert isinstance(back, TextCondition) and back.sample_prompts == text.sample_prompts
    assert back.tokenizer.vocab == text.tokenizer.vocab and back.class_names == ("disc", "square")
    back = from_config({"unet": {"num_classes": 2}, "classes": ["cat", "dog"]})
    assert isinstance(back, ClassCondition) and back.classes == ("cat", "dog")
    back = from_config({"unet": unet, "classes": ["cat", "dog"]})
    assert back.kind == "unconditional" and back.classes == () and back.class_names == ("cat", "dog")


def test_the_pipeline_samples_through_its_conditioning():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=3, base_channels=8, channel_mults=(1,), attention_resolutions=(),
                          image_size=8, num_classes=2)).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)     # zero-initialised: every class would agree
    pipe = DiffusionPipeline(net, NoiseSchedule.create("linear", 10), conditioning=ClassCondition(("a", "b")))
    draw = lambda **kw: pipe(2, sampler="ddim", sample_steps=3, generator=torch.Generator().manual_seed(1), **kw)
    # at w = 0 every class gives the unconditional sample; at w = 3 the classes differ
    torch.testing.assert_close(draw(labels=torch.tensor([0, 0]), guidance_scale=0.0),
                               draw(labels=torch.tensor([1, 1]), guidance_scale=0.0))
    assert not torch.allclose(draw(labels=torch.tensor([0, 0]), guidance_scale=3.0),
                              draw(labels=torch.tensor([1, 1]), guidance_scale=3.0))
    with pytest.raises(ConditionError, match="not text-conditioned"):
        draw(prompt="a")
