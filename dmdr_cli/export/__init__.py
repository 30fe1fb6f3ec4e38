"""`dmdr export`: a trained student as safetensors, a diffusers pipeline folder, a diffusers LoRA or a ComfyUI LoRA.

source.py     the checkpoint, its recipe and state, the run's evaluation results (cheap, checked first)
student.py    the teacher's denoiser + the generator weights (a LoRA merged with diffusers' fuse_lora)
scheduler.py  the diffusers scheduler and pipeline call that sample the student as dmdr_cli.sampling does
kohya.py      kohya / ComfyUI LoRA key names (sgm UNet names for SDXL, lora_transformer_ for SD3)
formats.py    one writer per format
model_card.py the README.md next to the weights
output.py     --out written through a staging folder and renamed at the end

The command itself is engines/export.py.
"""
