"""Starts a Ray worker node bound to 127.0.0.1 and joins it to the head at argv[1], then exits
(the node's processes stay, as after ``ray start --address``). ``ray start --address`` cannot do
it here: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what keeps 127.0.0.1 as the node's address
instead of the machine's outward one) the command refuses to start a worker node; this starts
the same node through the class the command itself uses (as ray.cluster_utils does)."""

import sys

import ray._private.node
import ray._private.parameter

params = ray._private.parameter.RayParams(
    node_ip_address="127.0.0.1", gcs_address=sys.argv[1], num_cpus=1, num_gpus=0,
    include_log_monitor=False,  # type: ignore[arg-type]  # Ray annotates it as str
    node_manager_port=0, min_worker_port=0, max_worker_port=0,
    object_store_memory=200 * 1024 * 1024, temp_dir=sys.argv[2])
node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
print("worker node", node.node_id, flush=True)
