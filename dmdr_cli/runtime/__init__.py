"""Run machinery shared by the engines: checkpoints, logging, precision, optimizers, run folders."""
