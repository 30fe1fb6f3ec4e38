"""The detector path with tiny random models built in code (no download): plumbing, not accuracy."""

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from PIL import Image
from transformers import (
    Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor, SwinConfig,
)

from dmdr_cli.errors import DmdrError
from dmdr_cli.evaluate.geneval_detect import (
    BACKGROUND, ClipColorClassifier, Mask2FormerDetector, geneval_labels, instances_from_logits,
    load_clip_color_classifier, load_mask2former_detector, mask_box, masked_crop,
)
from dmdr_cli.evaluate.geneval_prompts import CLASSES, COCO_RENAMES, COLORS
from dmdr_cli.evaluate.geneval_score import score_image

COCO_NAMES = [{v: k for k, v in COCO_RENAMES.items()}.get(c, c) for c in CLASSES]


def random_image(h=40, w=56, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_mask2former():
    torch.manual_seed(0)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, num_queries=12, num_labels=80,
                               id2label=dict(enumerate(COCO_NAMES)))
    return Mask2FormerForUniversalSegmentation(config).eval()


def test_labels_map_coco_names_to_geneval():
    labels = geneval_labels({str(i): "TV" if n == "tv" else n for i, n in enumerate(COCO_NAMES)})
    assert labels == list(CLASSES)
    with pytest.raises(DmdrError, match="2 labels are not COCO's 80 instance classes.*'sky'"):
        geneval_labels({0: "person", 1: "sky"})
    panoptic = dict(enumerate(COCO_NAMES + ["sky"]))
    with pytest.raises(DmdrError, match="81 labels"):
        geneval_labels(panoptic)


def test_mask_box_is_right_bottom_exclusive():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3, 2, 9, 5)


def test_mask2former_end_to_end(tiny_mask2former):
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32)
    # min_score=0 so the random model's near-uniform class probabilities still yield detections
    detect = Mask2FormerDetector(tiny_mask2former, processor, min_score=0.0, max_per_image=40, shortest_edge=48)
    image = random_image()
    detections = detect(image)
    assert detections, "expected some detections from a random model with no score floor"
    assert [d["score"] for d in detections] == sorted((d["score"] for d in detections), reverse=True)
    for d in detections:
        assert d["class"] in CLASSES and 0.0 <= d["score"] <= 1.0
        assert d["mask"].shape == (40, 56) and d["mask"].dtype == bool
        assert d["box"] == mask_box(d["mask"])
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= 56 and 0 <= y0 < y1 <= 40
    score_image({"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "p"}, detections)


def test_post_processing_scores_and_unpads_masks():
    labels = ["cat", "dog"]
    class_logits = torch.tensor([[0.0, 9.0, 0.0],  # query 0: surely a dog
                                 [0.0, 0.0, 9.0]])  # query 1: surely nothing
    mask_logits = torch.full((2, 8, 8), -20.0)
    mask_logits[0, :, :2] = 20.0  # left half of the 4 valid columns...
    mask_logits[0, :, 4:] = 20.0  # ...and padding, which must be ignored
    dets = instances_from_logits(class_logits, mask_logits, labels, input_hw=(8, 8), valid_hw=(8, 4),
                                 image_hw=(16, 16), min_score=0.3)
    assert len(dets) == 1 and dets[0]["class"] == "dog"
    # class probability x mean mask probability (just under 1 where bilinear upsampling blurs the edge)
    assert 0.99 < dets[0]["score"] < torch.softmax(class_logits[0], 0)[1].item()
    assert dets[0]["box"] == (0, 0, 8, 16) and dets[0]["mask"].shape == (16, 16)
    assert instances_from_logits(class_logits, mask_logits, labels, (8, 8), (8, 4), (16, 16), min_score=0.9999) == []


def test_missing_detector_weights_name_the_download(tmp_path):
    with pytest.raises(DmdrError, match="facebook/mask2former-swin-small-coco-instance"):
        load_mask2former_detector(tmp_path / "no-such-model")


def test_masked_crop_puts_the_instance_on_grey():
    image = Image.new("RGB", (8, 6), (255, 0, 0))
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:5] = True
    mask[1, 2] = False  # a hole inside the box shows the background
    crop = masked_crop(image, {"box": (2, 1, 5, 4), "mask": mask})
    assert crop.size == (3, 3)
    assert crop.getpixel((0, 0)) == BACKGROUND and crop.getpixel((1, 1)) == (255, 0, 0)
    assert masked_crop(image, {"box": (0, 0, 4, 4)}).getpixel((0, 0)) == (255, 0, 0)  # no mask: plain crop


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8,
                                                                  image_size=32),
                           text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    return ClipColorClassifier(model, open_clip.image_transform(32, is_train=False),
                               open_clip.get_tokenizer("ViT-L-14"), batch_size=2)


def test_clip_colour_classifier(tiny_clip):
    weights = tiny_clip.text_weights("car")
    assert weights.shape == (16, len(COLORS))
    assert torch.allclose(weights.norm(dim=0), torch.ones(len(COLORS)))
    assert tiny_clip.text_weights("car") is weights  # cached per class
    image = random_image(32, 32)
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:20, 4:20] = True
    dets = [{"class": "car", "score": 0.9, "box": (4, 4, 20, 20), "mask": mask},
            {"class": "car", "score": 0.8, "box": (0, 0, 32, 32)},
            {"class": "car", "score": 0.7, "box": (8, 8, 30, 30)}]
    colors = tiny_clip.classify(image, dets, "car")  # 3 crops in batches of 2
    assert len(colors) == 3 and set(colors) <= set(COLORS)
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": colors[0]}], "prompt": "p"}
    assert score_image(meta, dets, tiny_clip.for_image(image)) == (True, "")


def test_missing_clip_weights_name_the_download(tmp_path):
    with pytest.raises(DmdrError, match="timm/vit_large_patch14_clip_224.openai"):
        load_clip_color_classifier(tmp_path / "ViT-L-14.bin")
