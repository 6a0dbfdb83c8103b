"""Reading the allocation from SLURM or sbitnet's variables, and the device-count check."""

import jax
import pytest

from sbitnet.distributed import (Allocation, DistributedError, allocation_from_env, check_devices,
                                 initialize)

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[001-002]", "SLURM_PROCID": "3",
         "SLURM_LOCALID": "1"}


def test_one_process_without_launcher_variables():
  assert allocation_from_env({}) == Allocation("single process", 1, 0)
  alloc = initialize({})  # a no-op that still checks the devices: 8 fake CPUs, one process
  assert alloc.num_processes == 1 and jax.process_count() == 1


def test_slurm_one_process_per_gpu():
  env = {**SLURM, "SLURM_NTASKS": "8", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"}
  assert allocation_from_env(env) == Allocation("slurm", 8, 3, devices_per_process=1)
  with pytest.raises(DistributedError, match="4 tasks on 2 nodes with 8 GPUs each.*"
                                             "--ntasks-per-node=8"):
    allocation_from_env({**env, "SLURM_NTASKS": "4", "SLURM_GPUS_ON_NODE": "8"})
  with pytest.raises(DistributedError, match="SLURM_STEP_NUM_NODES is not set"):
    allocation_from_env({k: v for k, v in env.items() if k != "SLURM_STEP_NUM_NODES"})


def test_slurm_one_process_per_node_owns_all_its_gpus():
  env = {**SLURM, "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4",
         "SLURM_PROCID": "1"}
  assert allocation_from_env(env) == Allocation("slurm", 2, 1, local_device_ids=(0, 1, 2, 3),
                                                devices_per_process=4)
  del env["SLURM_GPUS_ON_NODE"]
  with pytest.raises(DistributedError, match="--gpus-per-node"):
    allocation_from_env(env)


def test_plain_environment_variables():
  env = {"SBITNET_COORDINATOR": "10.0.0.1:1234", "SBITNET_NUM_PROCESSES": "4",
         "SBITNET_PROCESS_ID": "2", "SBITNET_LOCAL_DEVICE_IDS": "4,5"}
  assert allocation_from_env(env) == Allocation("environment", 4, 2, "10.0.0.1:1234", (4, 5), 2)
  with pytest.raises(DistributedError, match="SBITNET_COORDINATOR"):
    allocation_from_env({"SBITNET_NUM_PROCESSES": "2", "SBITNET_PROCESS_ID": "0"})
  with pytest.raises(DistributedError, match="SBITNET_PROCESS_ID='one'"):
    allocation_from_env({**env, "SBITNET_PROCESS_ID": "one"})
  with pytest.raises(DistributedError, match="SBITNET_LOCAL_DEVICE_IDS='0;1' is not"):
    allocation_from_env({**env, "SBITNET_LOCAL_DEVICE_IDS": "0;1"})


def test_device_count_must_match_the_allocation():
  check_devices(Allocation("slurm", 1, 0, devices_per_process=8))
  with pytest.raises(DistributedError, match="sees 8 cpu devices but the slurm allocation gives "
                                             "it 4"):
    check_devices(Allocation("slurm", 1, 0, devices_per_process=4))
  with pytest.raises(DistributedError, match="JAX sees 1 processes but the environment "
                                             "allocation has 2"):
    check_devices(Allocation("environment", 2, 0, "localhost:1"))
