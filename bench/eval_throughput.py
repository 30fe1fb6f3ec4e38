"""Evaluation throughput: images/s of each score model and of each benchmark stage, one line per stage.

Random-weight models are built in code (nothing downloaded) and wrapped in the project's own reward,
detector and scoring classes, so what is timed is the code `dmdr evaluate` runs:

    decode png          reading sample PNGs into tensors (the score loader's work, one process)
    score <name>        one score model: tensor preprocessing + image tower + text tower, batch --batch
    scores together     all four on the same batch (what `--bench scores` does per batch)
    geneval mask2former GenEval's detector + CLIP colour classifier (tiny on CPU)
    dpg scoring         DPG-Bench scoring of 2x2 grids with a constant VQA (the harness, not the VQA)
    world geneval       the shapes world's exact detector + GenEval's rules
    world dpg           the world's dense questions answered from detections
    world distance      world features of generated and real renders + the Fréchet distance

Usage:
  python bench/eval_throughput.py                           # CPU, tiny models (seconds)
  python bench/eval_throughput.py --device cuda --real-size # real architectures (ViT-H-14 x 2, ViT-L-14,
                                                            # CLIP-H), bf16, batch 64, 1024 px images;
                                                            # target: >= 50 images/s for the four together
"""

from __future__ import annotations

import argparse
import io
import json
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_ARCH = "dmdr-bench-tiny-clip"


def line(stage: str, images: int, seconds: float, note: str = "") -> None:
    print(f"{stage:<22} {images / seconds:9.1f} images/s   ({images} images in {seconds:.2f} s{note})", flush=True)


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


# ---------------------------------------------------------------------------------------------------
# Score models: the project's reward classes around random models of a tiny or a real architecture.

def letters_tokenizer():
    """A transformers CLIPTokenizer over single letters (tokenisation cost is not what this bench measures)."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase) + [
        c + "</w>" for c in string.ascii_lowercase]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def register_tiny_open_clip() -> None:
    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                              "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = Path(tempfile.mkdtemp()) / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


def pickscore_model(real: bool):
    from transformers import CLIPConfig, CLIPModel

    tokenizer = letters_tokenizer()
    ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=0, pad_token_id=1)
    if real:  # CLIP-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K, PickScore_v1's architecture)
        text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", **ids)
        vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                      image_size=224, patch_size=14, hidden_act="gelu")
        projection = 1024
    else:
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, max_position_embeddings=77, **ids)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=32, patch_size=8)
        projection = 16
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection,
                        logit_scale_init_value=4.6052)
    return CLIPModel(config).eval(), tokenizer


def score_models(real: bool, device: torch.device) -> dict:
    from dmdr_cli.rewards.aesthetic import AestheticHead, AestheticReward
    from dmdr_cli.rewards.openclip import OpenClipCosineReward, build_open_clip, open_clip_tokenizer
    from dmdr_cli.rewards.pickscore import PickScoreReward

    if not real:
        register_tiny_open_clip()
    hps_arch, clip_arch, aesthetic_arch = ("ViT-H-14", "ViT-H-14-quickgelu", "ViT-L-14") if real else (TINY_ARCH,) * 3
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def ready(model):  # each model leaves the CPU as soon as it is built: one at a time in host memory
        return model.to(device=device, dtype=dtype).freeze()

    def aesthetic():
        clip = build_open_clip(aesthetic_arch, quick_gelu=real)  # OpenAI's ViT-L/14 uses QuickGELU
        return AestheticReward.from_modules(clip.visual, AestheticHead(int(clip.visual.output_dim)))

    return {
        "clip": ready(OpenClipCosineReward.from_modules(build_open_clip(clip_arch), open_clip_tokenizer(clip_arch))),
        "aesthetic": ready(aesthetic()),
        "pick": ready(PickScoreReward.from_modules(*pickscore_model(real))),
        "hps": ready(OpenClipCosineReward.from_modules(build_open_clip(hps_arch), open_clip_tokenizer(hps_arch))),
    }


def bench_scores(args, device: torch.device) -> None:
    models = score_models(args.real_size, device)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    prompts = [f"a photo of a {w} on a table" for w in ("cat", "dog", "red car", "bowl of fruit")] * args.batch
    prompts = prompts[:args.batch]
    with torch.no_grad():
        for name, model in models.items():
            line(f"score {name}", args.batch, timed(lambda m=model: m(images, prompts), args.repeats, device),
                 f", batch {args.batch}, {args.size} px")
        together = timed(lambda: [m(images, prompts) for m in models.values()], args.repeats, device)
    line("scores together", args.batch, together, f", batch {args.batch}, {args.size} px")


def bench_decode(args) -> None:
    from PIL import Image

    from dmdr_cli.evaluate.sample_sets import load_tensor

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    n = max(8, args.batch)
    for k in range(n):  # smooth images compress like samples do, not like noise
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((args.size, args.size), Image.BICUBIC).save(folder / f"{k:05d}.png")
    seconds = timed(lambda: [load_tensor(folder / f"{k:05d}.png") for k in range(n)], 1, torch.device("cpu"))
    line("decode png", n, seconds, f", {args.size} px, one process")


# ---------------------------------------------------------------------------------------------------
# Benchmark stages.

def bench_geneval_detector(args) -> None:
    """GenEval's Mask2Former + CLIP colour path; random tiny models on CPU (real-size: Swin-S is not built)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from PIL import Image
    from transformers import (
        Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig,
    )

    from dmdr_cli.evaluate.geneval_detect import ClipColorClassifier, Mask2FormerDetector
    from dmdr_cli.evaluate.geneval_prompts import CLASSES, COCO_RENAMES
    from dmdr_cli.evaluate.geneval_score import score_image

    torch.manual_seed(0)
    coco_names = [{v: k for k, v in COCO_RENAMES.items()}.get(c, c) for c in CLASSES]
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=12, num_labels=80,
                               id2label=dict(enumerate(coco_names)))
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32)
    detect = Mask2FormerDetector(Mask2FormerForUniversalSegmentation(config).eval(), processor, min_score=0.0,
                                 max_per_image=20, shortest_edge=64)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                                 image_size=32),
                          text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    colors = ClipColorClassifier(clip, open_clip.image_transform(32, is_train=False),
                                 open_clip.get_tokenizer("ViT-L-14"))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(8)]
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "dog", "count": 1, "color": "blue"}], "prompt": "p"}

    def run():
        for image in images:
            score_image(meta, detect(image), colors.for_image(image))

    line("geneval mask2former", len(images), timed(run, 1, torch.device("cpu")), ", tiny random models, 64 px")


def bench_dpg_harness() -> None:
    from PIL import Image

    from dmdr_cli.evaluate.dpg import DpgItem, DpgQuestion, evaluate_dpg

    questions = tuple(DpgQuestion(k + 1, (1,) if k else (), f"entity - whole (thing {k})", f"Is there thing {k}?")
                      for k in range(10))
    items = [DpgItem(f"item{i}", "a prompt", questions) for i in range(16)]
    grids = {item.item_id: Image.new("RGB", (128, 128), (i, 0, 0)) for i, item in enumerate(items)}
    seconds = timed(lambda: evaluate_dpg(items, grids, lambda image, q: "yes"), 1, torch.device("cpu"))
    line("dpg scoring", 4 * len(items), seconds, ", 10 questions per tile, constant VQA")


def bench_world() -> None:
    from dmdr_cli.world import bench as world_bench
    from dmdr_cli.evaluate.frechet import frechet_between
    from dmdr_cli.world.features import feature_matrix

    records, _ = world_bench.world_geneval_metadata(24, 128)
    renders = world_bench.reference_renders(records, 24, seed=0)
    cpu = torch.device("cpu")
    line("world geneval", len(renders), timed(lambda: world_bench.geneval_results(renders, records), 1, cpu),
         ", 24 px, exact detector")
    from PIL import Image

    items, _ = world_bench.world_dpg_items(24, 32)
    grids = {item["item_id"]: Image.fromarray(tile)
             for item, tile in zip(items, world_bench.reference_renders(items, 24, seed=0))}
    line("world dpg", len(grids), timed(lambda: world_bench.dpg_report(items, grids, rows=1, cols=1), 1, cpu),
         ", 24 px, questions answered from detections")
    real = world_bench.reference_renders(records, 24, seed=1)
    seconds = timed(lambda: frechet_between(feature_matrix(renders), feature_matrix(real)), 1, cpu)
    line("world distance", len(renders), seconds, ", features of generated + real renders, Fréchet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--real-size", action="store_true", help="real architectures (GPU: bf16)")
    parser.add_argument("--batch", type=int, default=None, help="default 64 with --real-size, else 16")
    parser.add_argument("--size", type=int, default=None, help="image side; default 1024 with --real-size, else 64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    args.batch = args.batch or (64 if args.real_size else 16)
    args.size = args.size or (1024 if args.real_size else 64)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)}", flush=True)
    bench_decode(args)
    bench_scores(args, device)
    if not args.real_size:
        bench_geneval_detector(args)
        bench_dpg_harness()
        bench_world()


if __name__ == "__main__":
    with torch.inference_mode():
        main()
