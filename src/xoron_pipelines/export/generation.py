"""Export of the generators: safetensors + config of each (the :class:`Generator` directory,
loadable by :meth:`Generator.load`), and the image generator as a diffusers pipeline directory.

:class:`XoronImagePipeline` is a ``DiffusionPipeline`` whose components are our MoE-DiT (a
diffusers ``ModelMixin``, ``transformer``), the scheduler it was trained for
(``FlowMatchEulerDiscreteScheduler``, or ``DDPMScheduler`` for an epsilon model), the autoencoder
(``AutoencoderKL``; absent in pixel space), the frozen LLM (``text_encoder``, our
``XoronForCausalLM``) and its tokenizer. ``save_pretrained`` writes model_index.json with one
folder per component; ``XoronImagePipeline.from_pretrained(dir)`` loads it offline (the custom
classes are named by their module, so ``xoron_pipelines`` must be importable).

Not mapped: diffusers has no pipeline *class* for an LLM-conditioned MoE-DiT, so the generic
``DiffusionPipeline.from_pretrained`` needs this class (``custom_pipeline`` is not used: it
would load code from the directory); the video generator has no diffusers pipeline (its
block-causal 3D denoiser has no diffusers counterpart to map onto) and is exported as
safetensors + config only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from xoron_pipelines.training.flow import Codec, Generator, ddpm_scheduler, prompt_states, sample


class XoronImagePipeline(DiffusionPipeline):
    """Prompt -> images with the exported image generator; ``__call__`` returns uint8 (B, H, W, 3)."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(
        self,
        transformer,
        scheduler,
        text_encoder,
        tokenizer,
        vae=None,
        latent_scale: float = 1.0,
        latent_shift: float = 0.0,
        sample_size: list | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 20,
        max_prompt_tokens: int = 32,
        flow: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(vae, (list, tuple)):  # saved without one (pixel space): model_index holds [null, null]
            vae = None
        self.register_modules(
            transformer=transformer, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae
        )
        self.register_to_config(
            latent_scale=latent_scale,
            latent_shift=latent_shift,
            sample_size=list(sample_size or [32, 32]),
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            max_prompt_tokens=max_prompt_tokens,
            flow=flow,
        )

    @classmethod
    def from_generator(cls, generator: Generator, llm, tokenizer) -> XoronImagePipeline:
        m = generator.meta
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0) if m["flow"] else ddpm_scheduler()
        return cls(
            generator.dit,
            sched,
            llm,
            tokenizer,
            generator.codec.vae,
            latent_scale=generator.codec.scale,
            latent_shift=generator.codec.shift,
            sample_size=list(m["size"]),
            guidance_scale=float(m["cfg_scale"]),
            num_inference_steps=int(m["inference_steps"]),
            max_prompt_tokens=int(m["max_prompt_tokens"]),
            flow=bool(m["flow"]),
        )

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        c = self.config
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        context, mask = prompt_states(self.text_encoder, self.tokenizer, prompts, c.max_prompt_tokens)
        codec = Codec(self.vae, c.latent_scale, c.latent_shift)
        h, w = height or c.sample_size[0], width or c.sample_size[1]
        f = codec.factor()
        z = sample(
            self.transformer,
            (len(prompts), codec.channels(), h // f, w // f),
            context,
            mask,
            steps=num_inference_steps or c.num_inference_steps,
            cfg_scale=c.guidance_scale if guidance_scale is None else guidance_scale,
            flow=c.flow,
            generator=generator or torch.Generator().manual_seed(0),
            scheduler=self.scheduler,
        )
        return (codec.decode(z.cpu()).movedim(-3, -1) * 255).round().to(torch.uint8).numpy()


def export_generators(image: Generator, video: Generator, llm, tokenizer, out: Path) -> dict:
    """Write ``out/image_gen``, ``out/video_gen`` (generator directories), ``out/image_pipeline``
    (diffusers) and ``out/manifest.json``; returns the manifest."""
    out = Path(out)
    image.save(out / "image_gen")
    video.save(out / "video_gen")
    XoronImagePipeline.from_generator(image, llm, tokenizer).save_pretrained(str(out / "image_pipeline"))
    manifest = {
        "image_gen": {"format": "safetensors + config (Generator.load)", "space": image.codec.space},
        "video_gen": {"format": "safetensors + config (Generator.load)", "space": video.codec.space},
        "image_pipeline": {
            "format": "diffusers pipeline directory (XoronImagePipeline.from_pretrained)",
            "components": [
                "transformer (MoEDiT)",
                "scheduler",
                "vae" if image.codec.vae is not None else "vae: none (pixel space)",
                "text_encoder (XoronForCausalLM)",
                "tokenizer",
            ],
        },
        "not_mapped": "video generator: no diffusers pipeline (block-causal 3D MoE-DiT has no diffusers counterpart)",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
