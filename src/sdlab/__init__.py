"""sdlab: understand and train the components of Stable Diffusion on small images.

Modules (imports point down):
    errors      UserError, the base of every failure a user can fix
    config      ConfigError and the `require` checks used by every config dataclass
    images      ImageSet, Splits, DataError: what every dataset is decoded into
    scenes      captioned synthetic scenes and the checker that reads them back
    captions    captions from scenes, class-name templates or a folder's metadata.jsonl
    data        datasets -> in-memory uint8 tensors -> batches in [-1, 1]
    runtime     device, precision ("auto" resolved), memory format, autocast: chosen in one place
    distributed the torchrun job: rank, world size, process group, what rank 0 alone does
    randomness  a loss's random draws, the same for an image at any number of processes
    kernels     CPU fast paths (GroupNorm, conv, dropout, attention) with PyTorch's state-dict keys
    layers      blocks shared by the VAE and the U-Net
    likelihood  Gaussian KL and the discretized Gaussian likelihood (bits/dim)
    vae         VAEConfig, DiagonalGaussian, VAE, vae_loss
    perceptual  Watson's perceptual distance in DFT space (no download)
    discriminator the PatchGAN of SD's autoencoder loss, sized for 32x32
    autoencoder_loss SD's autoencoder loss: NLL form, KL 1e-6, adaptive adversarial weight
    transformer attention and transformer blocks (self- and cross-attention, masks)
    unet        UNetConfig, UNet (class- or text-conditioned)
    text        tokenizer, text encoder, the text-conditioned U-Net
    diffusion   noise schedules, training loss, samplers, guidance (never imports a network)
    latent      encode a dataset once with a frozen VAE, cache and scale the latents
    conditioning unconditional, class or text: data, dropout, requests, guidance input, storage
    trained     trained checkpoints read back (kind, EMA weights, the VAE a latent model carries)
    pipeline    U-Net + scheduler (+ VAE decoder, + guidance, + prompts, img2img, inpainting) -> images
    classifier  the small classifier of the offline quality metric
    quality     FID / KID (torchmetrics, torch-fidelity's Inception) and classifier features
    checkpoint  atomic save, weights-only load, leftover temporaries, weight digests
    outputs     output folders and files, checked before the work that fills them
    ema         exponential moving average of weights
    trainer     fit / evaluate / early stopping / checkpoints / TensorBoard, on 1 or N processes
    visualize   image grids and plots (matplotlib Agg)
    figures     the figures that explain each component
    recipes     train_vae / train_diffusion / train_classifier, their evaluation and sample scoring
    cli         argparse from dataclass configs and the entry points (flags -> recipes)
"""

__version__ = "0.1.0"
