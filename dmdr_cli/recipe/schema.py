"""The one recipe format, shared by every subcommand.

Every field has a type, a default where one makes sense, a range check and a help text; the README's
recipe reference is generated from these (`dmdr recipe reference`) and a test keeps the two in sync.
Defaults are the DMDR authors' values (ALGORITHM.md) where they do not depend on the model family;
family-specific values live in the shipped recipes.
"""

from __future__ import annotations

from typing import List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    family: Literal["sd", "sdxl", "sd3", "flux"] = Field(
        description="Model family adapter: sd (SD1.x/2.x UNet, eps or v), sdxl (UNet, two text encoders), "
                    "sd3 (MMDiT flow matching: SD3-Medium, SD3.5-Large/Medium), flux (FLUX.1-dev and -schnell: "
                    "flow matching, CLIP-L + T5, dev's guidance embedding).")
    pretrained: str = Field(
        description="Teacher weights: a local diffusers folder or a hub id (e.g. stabilityai/stable-diffusion-xl-base-1.0).")
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) of `pretrained`.")
    variant: Optional[str] = Field(None, description="Weight file variant in the folder, e.g. fp16.")
    single_file: Optional[str] = Field(
        None, description="A single-file .safetensors fine-tune to load with from_single_file; `pretrained` then "
                          "gives the config and the components the file lacks.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="dtype of the frozen networks on GPU (CPU always runs fp32).")
    resolution: int = Field(1024, ge=8, le=4096, description="Training and sampling resolution in pixels (square); "
                                                             "flux: a multiple of 16. flux's default student times "
                                                             "and its renoise times follow the resolution's shift.")
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = Field(
        "auto", description="UNet families only: override the scheduler config's prediction type.")
    max_text_tokens: Optional[int] = Field(
        None, ge=1, le=512, description="T5 prompt length for sd3 (DMDR: 128) and flux; None keeps the family "
                                        "default (sd3 256; flux 512 for dev, 256 for schnell, as FluxPipeline is "
                                        "called for each).")


class StudentSection(Section):
    steps: int = Field(4, ge=1, le=8, description="Number of student sampling steps (NFE, no CFG).")
    timesteps: Optional[list[float]] = Field(
        None, description="Explicit student times in [0, 1] (1 = noise), first fed pure noise; e.g. [0.399] for the "
                          "SDXL 1-step student. None: the family default (eps: 999, 749, ...; flow: shifted).")
    flow_shift: Optional[float] = Field(
        None, gt=0, description="sd3 and flux: shift of the student's times (SD3-Medium 3.0, SD3.5-Large 5.0); "
                                "None reads the scheduler config (flux-dev: the resolution's shift e^mu, as "
                                "FluxPipeline computes it: 1.88 at 512 px, 3.16 at 1024 px).")
    sampler: Literal["auto", "sde", "ode"] = Field(
        "auto", description="Rollout: sde (DMD2 backward simulation, fresh noise each step) or ode (deterministic "
                            "Euler; DMDR's SD3 scripts). auto: sde for eps/v families, ode for flow.")
    finetune: Literal["lora", "full"] = Field("full", description="Train the whole denoiser or a LoRA on it.")
    lora_rank: int = Field(64, ge=1, le=1024, description="Generator LoRA rank (DMDR SD3: 64).")
    lora_alpha: float = Field(128.0, gt=0, description="Generator LoRA alpha (DMDR SD3: 128).")
    lora_targets: Optional[list[str]] = Field(
        None, description="Module names the generator LoRA wraps; None: the family's default list.")
    init: Optional[str] = Field(
        None, description="Start the student from these weights instead of the teacher: a dmdr checkpoint, a "
                          "denoiser state dict (.safetensors) or a LoRA file.")
    embedded_guidance: Optional[float] = Field(
        None, ge=0.0, le=30.0,
        description="flux-dev only (a guidance-distilled denoiser, which takes the guidance value through its guidance "
                    "embedding): the value the student is given, in training and sampling; exports pass it as the "
                    "pipeline's guidance_scale. None: 3.5, FluxPipeline's default (FastGen gives its FLUX student "
                    "3.5 too). Other families' students run without guidance.")


class GuidanceSection(Section):
    scale: float = Field(7.0, ge=1.0, le=30.0, description="Real-score guidance w0: the CFG scale (SDXL/SD3-M 7.0, "
                                                           "SD3.5-L 4.0, DMD2 SD1.5 1.75); flux-dev: the value given "
                                                           "to the teacher's guidance embedding, one pass, no CFG "
                                                           "(dmdr's flux-dev recipes: 3.5).")
    jitter: float = Field(0.5, ge=0.0, le=10.0, description="w drawn per step from U[w0 - jitter, w0 + jitter] (the CFG "
                                                            "scale, or flux-dev's embedded value).")
    uncond: Literal["empty_prompt", "zeros"] = Field(
        "empty_prompt", description="CFG's unconditional input: the encoded \"\" (DMDR) or zero embeddings (DMD2 SDXL). "
                                    "The teacher baseline uses the same.")
    layout: Literal["shared_lora", "dmd2"] = Field(
        "shared_lora", description="shared_lora: real and fake score are one frozen teacher + one LoRA (DynaDG); "
                                   "dmd2: a separate full fake-score copy, no DynaDG, fake-score times uniform over "
                                   "the whole training range as in DMD2 (for comparison).")
    lora_rank: int = Field(32, ge=1, le=1024, description="Guidance (fake-score) LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="Guidance LoRA alpha.")
    lora_targets: Optional[list[str]] = Field(None, description="Guidance LoRA modules; None: the family's default list.")
    fake_lora_scale: float = Field(2.0, ge=0.0, le=10.0, description="LoRA scale s_f at which the guidance network is the fake score.")
    fake_embedded_guidance: Optional[float] = Field(
        None, ge=0.0, le=30.0,
        description="flux-dev only: the guidance value the fake score is given. It models the student's samples, so "
                    "None gives it the student's value (student.embedded_guidance), as CFG families run the fake "
                    "score unguided like their student.")


class DmdSection(Section):
    fake_updates_per_generator_update: int = Field(
        5, ge=1, le=100, description="TTUR: fake-score updates per generator update (DMD2/DMDR: 5).")
    t_min: float = Field(0.001, ge=0.0, lt=1.0, description="Lower end of renoise times (DMDR 0.001, DMD2 0.02).")
    t_max: float = Field(1.0, gt=0.0, le=1.0, description="Upper end of renoise times (DMDR 1.0, DMD2 0.98).")
    weight: float = Field(1.0, ge=0.0, description="Weight of L_dmd in the generator loss.")

    @model_validator(mode="after")
    def _range(self):
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be below t_max ({self.t_max})")
        return self


class GanSection(Section):
    """A GAN term, DMD2 / FastGen style (opt-in, needs data.images): a small classifier head on the bottleneck
    features of the teacher or the fake score at noised real and generated images, trained to tell them apart,
    and a generator loss for fooling it. DMD2 (arXiv 2405.14867) puts the head on the fake score's bottleneck:
    ImageNet-64 FID 2.61 without it, 1.51 with; SDXL 4-step FID 26.90 without, 19.32 with. NVlabs/FastGen
    puts it on the frozen teacher's features (more stable, its maintainers found), GAN weight 1e-3 to 0.03."""

    weight: float = Field(
        0.0, ge=0, description="Weight of the generator's GAN loss softplus(-D(x_g)) in the generator loss (0: off). "
                               "DMD2: 5e-3 (SDXL), 3e-3 (ImageNet); FastGen: 1e-3 to 0.03.")
    head_weight: float = Field(
        1e-2, gt=0, description="Weight of the head's loss softplus(-D(real)) + softplus(D(fake)), trained at every "
                                "fake-score update (DMD2: 1e-2). With features: fake it also trains the fake score's "
                                "adapter (as in DMD2), so it weighs against the fake-score loss there.")
    features: Literal["teacher", "fake"] = Field(
        "teacher", description="Whose bottleneck the head reads (UNets: the mid block's output; MMDiT: the image "
                               "tokens after the middle block): the frozen teacher (FastGen) or the fake score "
                               "(DMD2). The generator's gradient flows through that network into its samples.")
    lr: Optional[float] = Field(
        None, gt=0, le=1, description="The head's AdamW learning rate; None: the fake score's (DMD2 trains the head "
                                      "with the fake score's optimizer).")
    head_width: Optional[int] = Field(
        None, ge=8, le=4096, description="Channels of the head's stride-2 convolutions; None: the feature width "
                                         "(DMD2's head keeps the bottleneck's 1280).")
    t_min: float = Field(0.0, ge=0.0, lt=1.0, description="Lowest noise level t the head's images are renoised to.")
    t_max: float = Field(1.0, gt=0.0, le=1.0, description="Highest noise level t; real and generated images each get "
                                                          "t ~ U[t_min, t_max] (DMD2: timesteps 0..999).")

    @model_validator(mode="after")
    def _range(self):
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min}) must be below t_max ({self.t_max})")
        return self


class DynaDGSection(Section):
    enabled: bool = Field(True, description="Dynamic distribution guidance: real score = teacher + LoRA at a decaying scale.")
    scale: float = Field(0.5, ge=0.0, le=10.0, description="Initial real-score LoRA scale s_r0 (authors: 0.5).")
    steps: int = Field(2000, ge=1, description="Generator steps K_dg over which s_r decays (cosine) to 0.")


class DynaRSSection(Section):
    enabled: bool = Field(True, description="Dynamic renoise sampling: t ~ Beta(1 + 3c, 1 + 0.5c), c decaying 1 -> 0.")
    steps: int = Field(2000, ge=1, description="Generator steps K_rs after which renoise times are uniform.")
    alpha_boost: float = Field(3.0, ge=0.0, description="Beta's alpha = 1 + alpha_boost * c (authors: 3).")
    beta_boost: float = Field(0.5, ge=0.0, description="Beta's beta = 1 + beta_boost * c (authors: 0.5).")


class ColdstartSection(Section):
    steps: int = Field(0, ge=0, description="Generator steps of stage 1 (DMD + DynaDG + DynaRS, no RL): the stage boundary.")
    dynadg: DynaDGSection = Field(default_factory=DynaDGSection, description="DynaDG schedule.")
    dynars: DynaRSSection = Field(default_factory=DynaRSSection, description="DynaRS schedule.")
    lr_generator: float | None = Field(
        None, gt=0, le=1, description="Generator learning rate of the cold start's steps (None: train.lr_generator). "
                                      "The authors' cold start runs at 2x their RL stage's (ALGORITHM.md): one "
                                      "`dmdr distill` then follows both stages' schedules.")
    lr_guidance: float | None = Field(
        None, gt=0, le=1, description="Fake-score learning rate of the cold start's steps (None: train.lr_guidance).")


class RewardSpec(Section):
    name: str = Field(description="hps, pickscore, clip, aesthetic, world-clip or custom.")
    weight: float = Field(1.0, description="Weight of this reward's loss in L_rl.")
    path: Optional[str] = Field(None, description="Local weights file or folder, or a hub id; None: the reward's default.")
    margin: Optional[float] = Field(None, description="Hinge margin in the reward's own units; None: its default.")
    loss: Literal["hinge", "linear"] = Field("hinge", description="hinge: relu(margin - r); linear: -r.")
    prompt_prefix: Optional[str] = Field(None, description="Prepended to prompts for this reward (authors: HPS 'Realistic photo').")
    options: dict = Field(default_factory=dict, description="Reward-specific knobs (e.g. clip architecture, custom module:function).")


class DPOSection(Section):
    samples_per_prompt: int = Field(2, ge=2, le=16, description="K samples per prompt; best and worst by reward form the pair.")
    beta: float = Field(500.0, gt=0, description="Diffusion-DPO beta; errors are measured in x0 space (see docs).")
    reference: Literal["rl_start", "teacher"] = Field(
        "rl_start", description="Frozen reference: the generator as it was when RL started, or the teacher (cheaper for full fine-tunes).")


class GRPOSection(Section):
    group_size: int = Field(4, ge=2, le=64, description="K trajectories per prompt; advantages normalised within the group.")
    clip: float = Field(0.2, gt=0, le=1, description="PPO clip range of the likelihood ratio.")
    kl_weight: float = Field(0.0, ge=0, description="Weight of the KL to the reference policy (0: off).")
    epochs: int = Field(1, ge=1, le=16, description="Optimisation epochs per batch of rollouts (do not advance k).")
    noise_level: float = Field(1.0, gt=0, description="Scale of the sde transition std used for log-probabilities.")


class RLSection(Section):
    algorithm: Literal["none", "refl", "dpo", "grpo"] = Field("none", description="RL branch added to L_dmd.")
    start_step: Optional[int] = Field(None, ge=0, description="Generator step the RL branch starts at; None: coldstart.steps.")
    weight: float = Field(1.0, ge=0, description="Weight of L_rl against L_dmd.")
    rewards: list[RewardSpec] = Field(default_factory=list, description="Rewards with their weights.")
    decoder: Optional[str] = Field(
        None, description="ReFL decoder: None = the family's VAE; a path/hub id of a diffusers AutoencoderTiny (TAESD) to save memory.")
    decode_resolution: Optional[int] = Field(None, ge=8, description="Downscale decoded images to this size before the reward (saves memory).")
    dpo: DPOSection = Field(
        default_factory=DPOSection,
        description="DPO knobs. Winner and loser are renoised at a student time after the first, the inputs the "
                    "sampler feeds the student (the first gets pure noise), so DPO needs student.steps >= 2.")
    grpo: GRPOSection = Field(
        default_factory=GRPOSection,
        description="GRPO knobs. GRPO rolls out and optimises sde transitions, so it needs student.sampler sde "
                    "(auto is ode for sd3); distill refuses any other sampler before models load.")

    @model_validator(mode="after")
    def _rewards_needed(self):
        if self.algorithm != "none" and not self.rewards:
            raise ValueError(f"rl.algorithm is {self.algorithm!r} but rl.rewards is empty: add at least one reward")
        return self


class DataSection(Section):
    prompts: str = Field(
        "builtin:demo", description="Training prompts: a text file (one per line), a .csv / .tsv / .jsonl / .parquet "
                                    "file (its prompt column), hf:REPO[:SPLIT] (a Hugging Face dataset through the "
                                    "datasets library and its cache, or a local dataset folder) or builtin:NAME.")
    validation_prompts: Optional[str] = Field(None, description="Held-out prompts for validation and grids (same forms as prompts); None: the first training prompts.")
    prompt_column: Optional[str] = Field(
        None, description="Column of prompts in a table or dataset; None: 'prompt', 'text' or 'caption', whichever "
                          "comes first, or the only column. Ignored for text files and built-in sets.")
    deduplicate: bool = Field(False, description="Drop repeated prompts (first kept); repeats are counted either way "
                                                 "(--dry-run shows them).")
    num_validation: int = Field(8, ge=1, le=1024, description="Validation prompts used (also the sample-grid size).")
    cache_embeddings: bool = Field(True, description="Encode all prompts once and free the text encoders.")
    images: Optional[str] = Field(
        None, description="Real images, for the opt-in GAN term only (gan.weight > 0; DMDR itself is image-free): a "
                          "folder (searched recursively for .png, .jpg, .jpeg, .webp; each centre-cropped and resized "
                          "to model.resolution, then encoded by the family's VAE) or builtin:NAME (builtin:world-renders: "
                          "fresh renders of builtin:world's prompts). An image's caption is the same-stem .txt file "
                          "beside it; without one it is conditioned on the unconditional input (guidance.uncond).")


class TrainSection(Section):
    steps: int = Field(4000, ge=1, description="Total generator steps (cold start included).")
    batch_size: int = Field(4, ge=1, le=1024, description="Prompts per process per inner step.")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per update (the fake/generator ratio is kept).")
    lr_generator: float = Field(1e-6, gt=0, le=1, description="Generator learning rate.")
    lr_guidance: float = Field(5e-7, gt=0, le=1, description="Fake-score (guidance LoRA) learning rate. It must let the fake score track the generator: "
                                "watch `fake_to_teacher_loss` (below 1 when it does); the shapes world runs 50x "
                                "lr_generator, chosen on validation (docs/results.md).")
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description="AdamW (fused on CUDA) or bitsandbytes 8-bit AdamW.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm (0: no clipping).")
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="auto: bf16 on CUDA, fp32 on CPU. fp16 is refused: without loss scaling the DMD "
                            "gradient (about grad / numel per element) underflows in fp16.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    compile: bool = Field(False, description="torch.compile the denoiser (minutes of warm-up; for long runs).")
    sharding: Literal["none", "optimizer", "full"] = Field(
        "none", description="Data-parallel sharding across processes. none: every process holds all trainable "
                            "state, gradients all-reduced in buckets during the backward. optimizer: ZeRO-2 style "
                            "with torch's ZeroRedundancyOptimizer: each process keeps the AdamW state of 1/N of "
                            "the trainable parameters and, after the reduction, only their gradients; gradient "
                            "buckets are reduced to their owner during the backward. full: ZeRO-3 with torch's "
                            "FSDP2 (fully_shard per transformer/resnet block): each process keeps 1/N of every "
                            "weight (frozen teacher, adapters, trainable copies), of its gradient and AdamW state, "
                            "and gathers one block at a time for each forward and backward (in bf16 under "
                            "autocast); checkpoints are gathered whole, readable at any process count. Not with "
                            "train.compile, adamw8bit, the GAN term, DPO/GRPO or ode_regression. One process: no "
                            "effect.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of all randomness (noise is keyed by global sample index).")
    log_every: int = Field(10, ge=1, description="Generator steps between log lines.")
    sample_every: int = Field(500, ge=0, description="Generator steps between sample grids (0: off).")
    validate_every: int = Field(0, ge=0, description="Generator steps between validations (0: off).")
    checkpoint_every: int = Field(500, ge=0, description="Generator steps between checkpoints (0: only at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Checkpoints kept (oldest removed).")
    max_nonfinite_steps: int = Field(5, ge=1, description="Consecutive non-finite updates before the run stops.")
    report_to: List[Literal["tensorboard", "wandb"]] = Field(
        ["tensorboard"], description="Dashboards the log is mirrored to besides log.jsonl: tensorboard (where "
                                     "installed), wandb (pip install 'dmdr[wandb]': scalars, sample and validation "
                                     "grids, the recipe as config; --resume continues the same W&B run; "
                                     "WANDB_MODE=offline writes RUN/wandb/ for `wandb sync`).")
    wandb_project: str = Field("dmdr", min_length=1, description="W&B project of the run (its name: the run folder's).")

    @model_validator(mode="after")
    def _no_fp16(self):
        if self.mixed_precision == "fp16":
            raise ValueError("mixed_precision fp16 is not supported: without loss scaling the DMD gradient (about "
                             "grad / numel per element) underflows in fp16; use bf16, or no for fp32")
        return self


class ODERegressionSection(Section):
    """Regression onto the teacher's own samples, image-free: a warm start of a (1-step) student before the cold
    start (DMD2 / DMDR SDXL 1-step), and/or a weighted term in every generator update (DMD's regression loss,
    CausVid's ODE regression) that keeps a mode-seeking DMD student from dropping what the teacher draws."""

    steps: int = Field(0, ge=0, description="Regression steps before generator step 0 (0: off).")
    weight: float = Field(
        0.0, ge=0, description="Weight of the regression term added to the generator loss at every generator update "
                               "(0: off; the DMDR authors use none). Its rows: a pair's noise at the student's first "
                               "time, or the pair's teacher sample renoised to a later student time, each regressed "
                               "onto the teacher's sample. DMD (arXiv 2311.18828) weighs its regression loss 0.25.")
    pairs: int = Field(1024, ge=1, description="(noise, teacher ODE output) pairs generated from the training prompts.")
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="Seed of the pairs' noise and prompts; None: "
                                                                     "train.seed. Fix it to share one cache across seeds.")
    cache: Optional[str] = Field(
        None, description="The pair file (safetensors) to share between runs; None: ode_pairs.safetensors in the run "
                          "folder (kept by a run that fails early; made again when it does not match). Made once, "
                          "it records what made it and is reused by any run whose model section, training prompts, "
                          "pairs, seed, teacher steps and CFG match; a mismatching file is refused, never "
                          "overwritten.")
    teacher_steps: int = Field(25, ge=1, le=1000, description="Teacher sampling steps per pair (its own scheduler).")
    cfg: Optional[float] = Field(None, ge=1.0, description="Teacher CFG for the pairs; None: guidance.scale.")
    loss: Literal["mse", "lpips"] = Field("mse", description="mse in the denoiser's space, or LPIPS on decoded images "
                                                             "(needs the lpips package and its weights).")
    lr: Optional[float] = Field(None, gt=0, description="Learning rate; None: train.lr_generator.")


class EMASection(Section):
    """An exponential moving average of the generator (opt-in; the DMDR authors use none). When on, validation,
    sample grids, end-of-run reports, `dmdr sample`, `dmdr evaluate` and `dmdr export` use the averaged weights;
    checkpoints hold both, and `--resume` continues both exactly."""

    decay: float = Field(0.0, ge=0, lt=1, description="EMA decay per generator update (0: off). Self-Forcing: 0.99.")
    start_step: int = Field(0, ge=0, description="Generator step from which the average starts (before it, the EMA "
                                                 "is the live weights). Self-Forcing: 200.")


class SampleSection(Section):
    steps: Optional[int] = Field(None, ge=1, description="Teacher sampling steps for `dmdr sample` of the recipe's "
                                                         "teacher; None: 25. A student always samples at its own steps "
                                                         "and times unless --steps says otherwise.")
    cfg: Optional[float] = Field(None, ge=1.0, description="Teacher CFG for `dmdr sample` of a teacher; None: guidance.scale.")
    batch_size: int = Field(4, ge=1, description="Images per forward pass.")
    per_prompt: int = Field(1, ge=1, description="Images per prompt.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Base seed; image i of prompt p uses a seed derived from (seed, p, i).")


class PushSection(Section):
    """Upload the student to the Hugging Face Hub when `dmdr distill` ends (as `dmdr export --push-to-hub` does)."""

    repo_id: Optional[str] = Field(
        None, description="Model repo NAMESPACE/NAME, created if needed; None: no upload. The token of `hf auth "
                          "login` or HF_TOKEN is checked before training starts.")
    private: bool = Field(False, description="Create the repo as private.")
    format: Literal["auto", "safetensors", "diffusers", "lora", "comfyui", "single-file"] = Field(
        "auto", description="What to export into RUN/export and upload; auto: lora for a LoRA generator, else "
                            "diffusers.")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("fp16", description="dtype of the uploaded weights.")


class OutputSection(Section):
    dir: str = Field("runs/dmdr", description="Run folder: checkpoints, logs, grids, resolved recipe.")
    push: PushSection = Field(default_factory=PushSection, description="Upload to the Hub at the end of the run.")


class WorldTeacherSection(Section):
    """`dmdr world teacher`: the built-in world's pixel-space teacher (UNet + CLIP text encoder, from scratch)."""

    steps: int = Field(2000, ge=1, le=1_000_000, description="Training steps (one batch each).")
    batch_size: int = Field(32, ge=1, le=1024, description="Images per step.")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak AdamW learning rate (UNet and text encoder alike).")
    warmup_steps: int = Field(100, ge=0, le=100_000, description="Linear learning-rate warm-up steps.")
    final_lr_fraction: float = Field(
        0.05, ge=0, le=1, description="Cosine decay ends at this fraction of `lr` (1: constant after warm-up).")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, ge=0, le=1000, description="Max gradient norm (0: no clipping).")
    ema_decay: float = Field(
        0.998, ge=0, lt=1, description="EMA of the weights that get exported (0: export the raw weights).")
    min_snr_gamma: float = Field(
        5.0, ge=0, le=1000, description="Min-SNR loss weighting min(SNR, gamma) / SNR of the eps loss (0: plain MSE).")
    prompt_dropout: float = Field(
        0.1, ge=0, le=1, description="Fraction of prompts replaced by \"\" so the teacher learns the unconditional "
                                     "score for CFG.")
    dense_fraction: float = Field(
        0.2, ge=0, le=1, description="Fraction of each batch drawn from the dense (DPG-style) training prompts; the "
                                     "rest are GenEval-style prompts in GenEval's task proportions.")
    beta_schedule: Literal["scaled_linear", "linear"] = Field(
        "scaled_linear", description="Betas over 1000 steps: SD's scaled_linear (0.00085 .. 0.012; x0 estimates stay "
                                     "well conditioned at t = 999) or DDPM's linear (1e-4 .. 0.02; near zero terminal "
                                     "SNR, where an eps model's x0 estimate is 158x its eps error: clip when sampling).")
    channels: list[int] = Field(
        [32, 64, 64], min_length=2, max_length=4,
        description="UNet block widths, one level per entry (each a multiple of 8, 8 to 512); every level but the "
                    "first has cross-attention to the prompt.")
    layers_per_block: int = Field(1, ge=1, le=4, description="ResNet layers per UNet level.")
    attention_heads: int = Field(8, ge=1, le=64, description="Attention heads per UNet transformer block.")
    text_width: int = Field(64, ge=8, le=1024, description="Text encoder width (= the UNet's cross-attention width).")
    text_layers: int = Field(2, ge=1, le=24, description="Text encoder transformer layers.")
    text_heads: int = Field(4, ge=1, le=64, description="Text encoder attention heads.")
    max_tokens: int = Field(64, ge=16, le=512, description="Prompt length in tokens (dense world prompts need 51).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the initial weights, the scenes, the noise and the dropout.")
    threads: int = Field(
        1, ge=0, le=256, description="CPU threads for torch (0: torch's default). One thread per run is fastest on a "
                                     "shared machine: two oversubscribed threads ran 5x slower there.")
    log_every: int = Field(10, ge=1, le=100_000, description="Steps between JSONL log lines.")
    checkpoint_every: int = Field(
        200, ge=0, le=1_000_000, description="Steps between checkpoints in output.dir, each also exported to "
                                             "model.pretrained (0: only at the end).")
    eval_prompts: int = Field(
        0, ge=0, le=5000, description="World-GenEval prompts sampled after training (sample.steps, CFG sample.cfg or "
                                      "guidance.scale); 0: no evaluation.")

    @model_validator(mode="after")
    def _widths(self):
        for width in self.channels:
            if width % 8 or not 8 <= width <= 512:
                raise ValueError(f"channels: each width must be a multiple of 8 between 8 and 512, not {width}")
            if width % self.attention_heads:
                raise ValueError(f"channels: width {width} does not split into {self.attention_heads} attention heads")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} does not split into {self.text_heads} heads")
        return self


class WorldRewardSection(Section):
    """`dmdr world reward`: world-clip, a small CLIP-like image-text model trained contrastively."""

    out: str = Field("dmdr_cli/world/weights/reward", description="Folder the trained reward is written to.")
    steps: int = Field(800, ge=1, le=1_000_000, description="Training steps (one batch each).")
    batch_size: int = Field(96, ge=2, le=4096, description="Image-prompt pairs per step (the in-batch negatives).")
    lr: float = Field(2e-3, gt=0, le=1, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(50, ge=0, le=100_000, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.05, ge=0, le=1, description="AdamW weight decay.")
    embed_dim: int = Field(64, ge=8, le=1024, description="Width of the shared image-text embedding.")
    image_channels: list[int] = Field(
        [32, 64, 96], min_length=1, max_length=5,
        description="Image tower: one 3x3 conv stage per entry, each after the first halving the resolution.")
    text_width: int = Field(64, ge=8, le=1024, description="Text tower width.")
    text_layers: int = Field(2, ge=1, le=24, description="Text tower transformer layers.")
    text_heads: int = Field(4, ge=1, le=64, description="Text tower attention heads.")
    max_tokens: int = Field(64, ge=16, le=512, description="Prompt length in tokens.")
    dense_fraction: float = Field(0.2, ge=0, le=1, description="Fraction of each batch drawn from dense prompts.")
    null_fraction: float = Field(
        0.0, ge=0, le=1, description="Null canvases (background, or one 1-3 px speck) added per batch, as a fraction "
                                     "of batch_size: negatives of every prompt, so the reward stops paying for an "
                                     "empty canvas (0: none, as the shipped world-clip was trained).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the weights and the training scenes.")
    threads: int = Field(1, ge=0, le=256, description="CPU threads for torch (0: torch's default).")
    log_every: int = Field(10, ge=1, le=100_000, description="Steps between JSONL log lines.")
    probe_prompts: int = Field(
        300, ge=0, le=100_000, description="Held-out prompts per task for the blind-spot report written next to the "
                                           "weights (0: none).")

    @model_validator(mode="after")
    def _widths(self):
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} does not split into {self.text_heads} heads")
        if any(not 8 <= c <= 512 for c in self.image_channels):
            raise ValueError(f"image_channels must each be between 8 and 512, not {self.image_channels}")
        return self


class WorldSection(Section):
    validation_per_task: int = Field(
        20, ge=1, le=80, description="Training-time validation of a world run: GenEval-style prompts per task from "
                                     "builtin:world-val, 1 image each (80: every prompt of the smallest task). 20 has "
                                     "a standard error of about 0.04 on world-GenEval; 80 about 0.02 (docs/results.md).")
    validation_dense_items: int = Field(12, ge=1, le=200, description="Dense items (x 4 tiles) of the world run's "
                                                                      "validation, from builtin:world-val.")
    teacher: WorldTeacherSection = Field(default_factory=WorldTeacherSection,
                                         description="Training the built-in world's teacher.")
    reward: WorldRewardSection = Field(default_factory=WorldRewardSection,
                                       description="Training the built-in world's world-clip reward.")


class Recipe(Section):
    """A dmdr recipe."""

    model: ModelSection = Field(description="The teacher and its family.")
    student: StudentSection = Field(default_factory=StudentSection, description="The few-step generator.")
    guidance: GuidanceSection = Field(default_factory=GuidanceSection, description="Real/fake scores and CFG.")
    dmd: DmdSection = Field(default_factory=DmdSection, description="Distribution matching loss and TTUR.")
    coldstart: ColdstartSection = Field(default_factory=ColdstartSection, description="Stage 1: DynaDG and DynaRS.")
    rl: RLSection = Field(default_factory=RLSection, description="Stage 2: reinforcement-learning branch.")
    gan: GanSection = Field(default_factory=GanSection, description="GAN term on real images (opt-in).")
    data: DataSection = Field(default_factory=DataSection, description="Prompts (and real images for the opt-in GAN term).")
    train: TrainSection = Field(default_factory=TrainSection, description="Optimisation and run machinery.")
    ode_regression: ODERegressionSection = Field(default_factory=ODERegressionSection,
                                                 description="Regression onto teacher samples: warm start and/or term.")
    ema: EMASection = Field(default_factory=EMASection, description="Generator EMA (opt-in).")
    sample: SampleSection = Field(default_factory=SampleSection, description="Defaults for `dmdr sample`.")
    output: OutputSection = Field(default_factory=OutputSection, description="Where results go.")
    world: WorldSection = Field(default_factory=WorldSection, description="The built-in shapes world: its teacher and reward (dmdr world ...).")

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.student.timesteps is not None:
            if len(self.student.timesteps) != self.student.steps:
                raise ValueError(f"student.timesteps has {len(self.student.timesteps)} entries but student.steps is "
                                 f"{self.student.steps}")
            if any(not 0 < t <= 1 for t in self.student.timesteps):
                raise ValueError("student.timesteps must lie in (0, 1]")
        embedded = {"student.embedded_guidance": self.student.embedded_guidance,
                    "guidance.fake_embedded_guidance": self.guidance.fake_embedded_guidance}
        for key, value in embedded.items():
            if value is not None and self.model.family != "flux":
                raise ValueError(f"{key} applies to denoisers that embed the guidance value (flux: FLUX.1-dev); "
                                 f"{self.model.family} students and fake scores run without guidance: remove it")
        if self.coldstart.steps > self.train.steps:
            raise ValueError(f"coldstart.steps ({self.coldstart.steps}) exceeds train.steps ({self.train.steps})")
        if self.rl.algorithm == "grpo" and self.student.steps < 2:
            raise ValueError("rl.algorithm grpo needs a multi-step student (student.steps >= 2): a 1-step student has "
                             "no stochastic transition to take log-probabilities of; use refl")
        if self.rl.algorithm == "dpo" and self.student.steps < 2:
            raise ValueError("rl.algorithm dpo needs a multi-step student (student.steps >= 2): a 1-step student is "
                             "only ever fed pure noise, never the renoised samples DPO trains on; use refl")
        return self

    @model_validator(mode="after")
    def _full_sharding(self):
        """What FSDP-sharded networks cannot run (runtime/sharding.py says why each)."""
        if self.train.sharding != "full":
            return self
        refused = {
            "train.compile": (self.train.compile, "set train.compile=false"),
            "train.optimizer adamw8bit": (self.train.optimizer == "adamw8bit",
                                          "set train.optimizer=adamw (its state is divided by the process count "
                                          "already)"),
            "the GAN term": (self.gan.weight > 0, "set gan.weight=0"),
            f"rl.algorithm {self.rl.algorithm}": (self.rl.algorithm in ("dpo", "grpo"), "use refl"),
            "ode_regression": (bool(self.ode_regression.steps or self.ode_regression.weight),
                               "set ode_regression.steps=0 and ode_regression.weight=0"),
        }
        for what, (present, fix) in refused.items():
            if present:
                raise ValueError(f"train.sharding full does not support {what}: {fix}, or use train.sharding "
                                 f"optimizer")
        return self

    @property
    def rl_start(self) -> int:
        return self.coldstart.steps if self.rl.start_step is None else self.rl.start_step

    def learning_rates(self, k: int) -> tuple[float, float]:
        """(generator, fake score) learning rates of the update that makes generator step k + 1: the cold
        start's own for its steps where set, else train's."""
        cold = k < self.coldstart.steps
        own = (self.coldstart.lr_generator, self.coldstart.lr_guidance) if cold else (None, None)
        return (self.train.lr_generator if own[0] is None else own[0],
                self.train.lr_guidance if own[1] is None else own[1])

    @model_validator(mode="after")
    def _gan_needs_images(self):
        if self.gan.weight > 0 and not self.data.images:
            raise ValueError("gan.weight > 0 needs real images: set data.images to a folder of images (or "
                             "builtin:world-renders for the shapes world), or gan.weight=0")
        return self
