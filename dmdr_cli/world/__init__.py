"""The built-in miniature shapes world: a text-to-image world small enough to train, distill and
evaluate on a laptop CPU.

    scene.py     vocabulary (shapes, palette), resolutions, scene specs and random layouts
    geometry.py  GenEval's position rule (left of / right of / above / below)
    render.py    flat-colour rasteriser
    prompts.py   GenEval's six tasks as prompts + metadata, scenes that satisfy them, training pairs
    dense.py     DPG-style dense prompts with question graphs
    detect.py    exact detector (colour segmentation, connected components, shape templates)
    answer.py    DPG-style answers from detections (GenEval: evaluate/geneval_score.py)
"""
