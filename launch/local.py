"""Starts N cooperating processes of one command on this machine, joined through `jax.distributed`.

  python -m launch.local --num_processes=2 [--devices_per_process=1] [--platform=cpu] -- \\
      python -m sbitnet.train --config.mesh.fsdp=2 ...

Each process gets SBITNET_COORDINATOR / SBITNET_NUM_PROCESSES / SBITNET_PROCESS_ID (read by
`sbitnet.distributed.initialize`) and its own devices: on CPU `devices_per_process` host devices
each, on GPU the ids `[i * devices_per_process, (i + 1) * devices_per_process)`. Output is streamed
line by line with a `[i]` prefix. If any process fails, the others are stopped and the launcher
exits with the failed process's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

POLL_SECONDS = 0.2
# Stop requests (preemption, a time limit) that the launcher passes on to its processes.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(rank: int, num_processes: int, devices_per_process: int, platform: str,
                port: int, base: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of process `rank`: coordinator, rank, and the devices it owns."""
  env = dict(os.environ if base is None else base)
  env.update(SBITNET_COORDINATOR=f"127.0.0.1:{port}", SBITNET_NUM_PROCESSES=str(num_processes),
             SBITNET_PROCESS_ID=str(rank), PYTHONUNBUFFERED="1")
  if platform == "cpu":
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
  else:
    first = rank * devices_per_process
    env["SBITNET_LOCAL_DEVICE_IDS"] = ",".join(map(str, range(first, first + devices_per_process)))
  return env


def _stream(rank: int, proc: subprocess.Popen) -> None:
  for line in proc.stdout:
    sys.stdout.write(f"[{rank}] {line}")
    sys.stdout.flush()


def launch(command: list[str], num_processes: int, devices_per_process: int = 1,
           platform: str = "cpu") -> int:
  """Runs `command` as `num_processes` processes; returns 0, or the first non-zero exit code."""
  port = free_port()
  procs = [subprocess.Popen(command, env=process_env(rank, num_processes, devices_per_process,
                                                     platform, port),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for rank in range(num_processes)]
  streams = [threading.Thread(target=_stream, args=(rank, p)) for rank, p in enumerate(procs)]
  for t in streams:
    t.start()

  def forward(signum, frame):  # a stop request to the launcher goes to every process
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
  try:
    codes = [p.poll() for p in procs]
    while not any(codes) and None in codes:
      time.sleep(POLL_SECONDS)
      codes = [p.poll() for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      p.wait()
    for t in streams:
      t.join()
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return next((c for c in codes if c), 0)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    raise SystemExit("usage: python -m launch.local --num_processes=N [--devices_per_process=K] "
                     "[--platform=cpu|gpu] -- COMMAND ...")
  split = argv.index("--")
  parser = argparse.ArgumentParser(prog="python -m launch.local")
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  args = parser.parse_args(argv[:split])
  command = argv[split + 1:]
  if args.num_processes < 1 or args.devices_per_process < 1 or not command:
    parser.error(f"--num_processes={args.num_processes} and --devices_per_process="
                 f"{args.devices_per_process} must be >= 1, and a command must follow '--'.")
  return launch(command, args.num_processes, args.devices_per_process, args.platform)


if __name__ == "__main__":
  sys.exit(main())
