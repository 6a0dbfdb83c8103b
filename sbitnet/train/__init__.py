"""Training: state, pure steps, optimizer and schedules, the host loop; `python -m sbitnet.train`."""
