"""RL branch of stage 2: losses added to L_dmd (ReFL, Diffusion-DPO, GRPO)."""
