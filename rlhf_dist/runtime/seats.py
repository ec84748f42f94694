"""A seat: holds one tensor-parallel worker's GPU share on its bundle where the engine's TP workers are not Ray
actors (the CPU build runs them as child processes of the engine actor), so the pool is reserved exactly as on
GPUs, where vLLM's Ray workers take these bundles themselves. Its own module without torch: a seat's process
starts in about a second instead of the four a torch import takes on two cores."""


class BundleSeat:
    def __init__(self, role: str, rank: int, bundle: int):
        self.where = {"role": role, "rank": rank, "bundle": bundle}

    def gpus(self) -> dict:
        """Where the seat is: its bundle's GPU ids and the node it runs on."""
        import ray

        return {**self.where, "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "node": ray.get_runtime_context().get_node_id()}
