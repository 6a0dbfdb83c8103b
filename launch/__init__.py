"""Launchers: SLURM sbatch templates (`launch/slurm/`) and `python -m launch.local`."""
