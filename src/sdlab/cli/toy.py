"""`sdlab-toy`: a diffusion model on 2-D points, trained in seconds, drawn step by step.

    sdlab-toy --data ring --out outputs/toy             # the mixture: also checked against its exact score
    sdlab-toy --data spiral --steps 5000 --nfe 20 --out outputs/toy-spiral

Writes OUT/forward_process.png (the data noised to x_t), OUT/sampler_paths.png (every sampler's
x_t paths with the trained MLP at about --nfe network evaluations) and, for the ring of
Gaussians, OUT/score_fields.png (trained against exact score), OUT/sampler_paths_exact.png
(the samplers with the exact denoiser: pure solver behaviour, no learning error) and
OUT/guidance.png (classifier-free guidance toward one half of the ring, exact denoisers).
"""

from __future__ import annotations

import time

from ..diffusion import SAMPLERS, SamplerConfig
from ..figures import sampler_paths_2d, toy_forward_process, toy_guidance, toy_score_fields
from ..outputs import writable_dir
from ..toy import GaussianMixture, ToyConfig, draw_toy, eps_error, train_toy
from .flags import Parser, add_config_flags, build_configs
from .session import user_errors


def build_parser() -> Parser:
    parser = Parser(prog="sdlab-toy", description="Train a diffusion model on 2-D points and draw it.")
    parser.add_argument("--out", default="outputs/toy", help="folder for the figures")
    parser.add_argument("--nfe", type=int, default=10, help="network evaluations per sample in the sampler "
                        "figure (DDPM always takes all T)")
    add_config_flags(parser, ToyConfig, "toy model")
    return parser


@user_errors
def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nfe < 1:
        parser.error(f"--nfe must be >= 1 (got {args.nfe})")
    cfg = build_configs(parser, args, {"toy": ToyConfig})["toy"]
    out = writable_dir(args.out, "--out")
    start = time.perf_counter()
    trained = train_toy(cfg)
    print(f"trained on {cfg.data} for {cfg.steps} steps in {time.perf_counter() - start:.1f} s; "
          f"final loss {sum(trained.losses[-100:]) / len(trained.losses[-100:]):.4f}")
    data = draw_toy(cfg.data, 2000)
    configs = {"ddpm": SamplerConfig(sampler="ddpm", clip=False)}
    for name in ("ddim", "euler_a", "heun", "dpmpp_2m"):
        configs[name] = SamplerConfig(sampler=name, sample_steps=SAMPLERS[name].steps_for(args.nfe), clip=False)
    toy_forward_process(data, trained.schedule, out / "forward_process.png")
    drawn = {"trained": sampler_paths_2d(trained.model, trained.schedule, data, configs, out / "sampler_paths.png")}
    written = ["forward_process.png", "sampler_paths.png"]
    if cfg.data == "ring":
        ring = GaussianMixture.ring()
        errors = {t: eps_error(trained.model, ring, trained.schedule, t) for t in (50, 200, 500)}
        print("relative error of the trained eps (= score) against the exact one: "
              + ", ".join(f"t = {t}: {e:.3f}" for t, e in errors.items()))
        drawn["exact"] = sampler_paths_2d(ring.denoiser(trained.schedule), trained.schedule, data, configs,
                                          out / "sampler_paths_exact.png")
        toy_score_fields(trained.model, ring, trained.schedule, out / "score_fields.png")
        toy_guidance(ring, trained.schedule, out / "guidance.png")
        written += ["sampler_paths_exact.png", "score_fields.png", "guidance.png"]
        for name, sampler in configs.items():            # the samples of the figures, scored
            for label, samples in drawn.items():
                print(f"  {sampler.describe(trained.schedule):36s} {label:7s} denoiser: "
                      f"{ring.near_modes(samples[name]):6.1%} of samples within 3 std of a mode")
    print(f"wrote {out}: " + ", ".join(written))


if __name__ == "__main__":
    main()
