"""The built-in miniature shapes world: a text-to-image world small enough to train, distill and
evaluate on a laptop CPU.

    scene.py     vocabulary (shapes, palette), resolutions, scene specs and random layouts
    geometry.py  GenEval's position rule (left of / right of / above / below)
    render.py    flat-colour rasteriser
    prompts.py   GenEval's six tasks as prompts + metadata, scenes that satisfy them, training pairs
    dense.py     DPG-style dense prompts with question graphs
    detect.py    exact detector (colour segmentation, connected components, shape templates)
    answer.py    DPG-style answers from detections (GenEval: evaluate/geneval_score.py)
    teacher*.py  the pixel-space teacher: tokenizer, model, training (`dmdr world teacher`), GenEval
    reward*.py   world-clip, the learned reward (`dmdr world reward`), and its blind-spot probe
    builtin_prompts.py  prompt sets builtin:world and builtin:world-val
    report.py    the teacher-vs-student table that ends a world distillation
    weights/     the shipped teacher and reward, with the recipes and logs that trained them
"""
