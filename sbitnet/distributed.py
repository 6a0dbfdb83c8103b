"""Multi-process start-up through `jax.distributed`: under SLURM, from plain environment variables,
or not at all for a single process; then a check that every allocated device is visible.

SLURM (inside `srun`): one task per GPU lets JAX give each process the GPU of its local task id;
one task per node hands each process all of its node's GPUs (`SLURM_GPUS_ON_NODE`) explicitly.
Elsewhere (`python -m launch.local`, other schedulers) set:

  SBITNET_COORDINATOR      host:port of process 0, reachable by every process
  SBITNET_NUM_PROCESSES    the number of processes
  SBITNET_PROCESS_ID       this process's id, 0 .. SBITNET_NUM_PROCESSES - 1
  SBITNET_LOCAL_DEVICE_IDS optional: comma-separated accelerator ids this process owns
"""

from __future__ import annotations

import dataclasses
import os

import jax


class DistributedError(ValueError):
  """The processes or devices found do not match the allocation."""


@dataclasses.dataclass(frozen=True)
class Allocation:
  """What the launcher promised: processes, and devices per process if it says (None: any)."""
  source: str
  num_processes: int
  process_id: int
  coordinator: str | None = None
  local_device_ids: tuple[int, ...] | None = None
  devices_per_process: int | None = None


def _int_env(env: dict[str, str], name: str) -> int:
  if name not in env:
    raise DistributedError(f"{name} is not set; it is needed with the other variables set here "
                           "(a SLURM job step, or SBITNET_* from launch.local).")
  value = env[name]
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f"{name}={value!r} is not an integer.") from None


def allocation_from_env(env: dict[str, str] | None = None) -> Allocation:
  """Reads the allocation from SLURM's or sbitnet's variables; one process when neither is set."""
  env = dict(os.environ if env is None else env)
  if "SBITNET_NUM_PROCESSES" in env:
    missing = [k for k in ("SBITNET_COORDINATOR", "SBITNET_PROCESS_ID") if k not in env]
    if missing:
      raise DistributedError(f"SBITNET_NUM_PROCESSES is set but {', '.join(missing)} is not; set "
                             "SBITNET_COORDINATOR (host:port of process 0), SBITNET_NUM_PROCESSES "
                             "and SBITNET_PROCESS_ID together, or none of them for one process.")
    ids = env.get("SBITNET_LOCAL_DEVICE_IDS")
    try:
      ids = tuple(int(i) for i in ids.split(",")) if ids else None
    except ValueError:
      raise DistributedError(f"SBITNET_LOCAL_DEVICE_IDS={ids!r} is not a comma-separated list of "
                             "device ids (e.g. 0,1).") from None
    return Allocation("environment", _int_env(env, "SBITNET_NUM_PROCESSES"),
                      _int_env(env, "SBITNET_PROCESS_ID"), env["SBITNET_COORDINATOR"], ids,
                      len(ids) if ids else None)
  if "SLURM_STEP_NODELIST" in env and "SLURM_NTASKS" in env:
    tasks, nodes = _int_env(env, "SLURM_NTASKS"), _int_env(env, "SLURM_STEP_NUM_NODES")
    gpus = _int_env(env, "SLURM_GPUS_ON_NODE") if "SLURM_GPUS_ON_NODE" in env else None
    rank = _int_env(env, "SLURM_PROCID")
    if tasks == nodes:  # one process per node owns all of its node's GPUs
      if tasks > 1 and not gpus:
        raise DistributedError(
            f"SLURM runs one task on each of {nodes} nodes but SLURM_GPUS_ON_NODE is not set, so "
            "the GPUs each process owns are unknown. Request them with --gpus-per-node=G, or run "
            "one task per GPU (--ntasks-per-node=G).")
      return Allocation("slurm", tasks, rank, local_device_ids=tuple(range(gpus or 0)) or None,
                        devices_per_process=gpus)
    # one process per GPU: JAX gives each the GPU of its SLURM_LOCALID
    per_node = tasks // nodes
    if gpus and (tasks % nodes or per_node != gpus):
      raise DistributedError(
          f"SLURM runs {tasks} tasks on {nodes} nodes with {gpus} GPUs each: run one task per GPU "
          f"(--ntasks-per-node={gpus}) or one per node (--ntasks-per-node=1), so that no GPU sits "
          "idle.")
    return Allocation("slurm", tasks, rank, devices_per_process=1 if gpus else None)
  return Allocation("single process", 1, 0)


def initialize(env: dict[str, str] | None = None) -> Allocation:
  """Starts `jax.distributed` for the allocation in the environment (a no-op for one process)
  and checks the devices JAX then sees. Call before any other JAX work. Raises DistributedError."""
  alloc = allocation_from_env(env)
  if alloc.num_processes > 1:
    if not 0 <= alloc.process_id < alloc.num_processes:
      raise DistributedError(f"process id {alloc.process_id} is outside [0, "
                             f"{alloc.num_processes}) ({alloc.source}).")
    # Under SLURM, JAX reads the coordinator (first node, a port from the job id), the count and
    # the rank itself; local_device_ids overrides its one-GPU-per-task default.
    jax.distributed.initialize(
        coordinator_address=alloc.coordinator,
        num_processes=alloc.num_processes if alloc.source == "environment" else None,
        process_id=alloc.process_id if alloc.source == "environment" else None,
        local_device_ids=list(alloc.local_device_ids) if alloc.local_device_ids else None)
  check_devices(alloc)
  return alloc


def check_devices(alloc: Allocation) -> None:
  """Raises DistributedError unless JAX sees `alloc`'s processes and, where known, devices."""
  if jax.process_count() != alloc.num_processes:
    raise DistributedError(f"JAX sees {jax.process_count()} processes but the {alloc.source} "
                           f"allocation has {alloc.num_processes}.")
  local = jax.local_device_count()
  if alloc.devices_per_process is not None and local != alloc.devices_per_process:
    raise DistributedError(
        f"Process {alloc.process_id} sees {local} {jax.default_backend()} devices but the "
        f"{alloc.source} allocation gives it {alloc.devices_per_process}. Check the GPUs requested "
        "(--gpus-per-node / --gpus-per-task), CUDA_VISIBLE_DEVICES and SBITNET_LOCAL_DEVICE_IDS.")
  if jax.device_count() != alloc.num_processes * local:
    raise DistributedError(
        f"JAX sees {jax.device_count()} devices over {alloc.num_processes} processes, but this "
        f"process has {local}: every process must hold the same number of devices.")
