"""torchrun with 2 CPU processes (gloo): identical weights on both ranks, one complete run directory;
and the replica check itself, in a 2-process group, refusing replicas that differ."""

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch

from conftest import TINY_MLP


@pytest.mark.slow
@pytest.mark.parametrize("out", ["ddp", None], ids=["out", "numbered-folder"])
def test_two_processes_train_one_run(tmp_path, out):
    sets = [f"--set={key}={value}" for key, value in TINY_MLP.items() if key.startswith("model.")]
    # --standalone: torchrun's rendezvous takes a free port of its own, so parallel runs never collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "mnistgan", "train", "--preset", "mlp-gan", "--subset", "256", "--batch-size", "32", "--epochs", "2",
               "--set=train.sample_every=1", "--set=train.log_every=2", "--device", "cpu", "--no-progress", *sets,
               "--final-eval-samples", "200"]  # the final evaluation runs on the first process only
    if out is not None:
        command += ["--out", str(tmp_path / out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 processes hold identical weights" in result.stdout
    assert result.stdout.count("epoch    2/2") == 1  # rank 0 alone reports
    assert result.stdout.count("final evaluation of the generator on 200 samples") == 1
    assert "8 steps of 32 per epoch" in result.stdout  # 128 images per rank, 16 per rank and step
    folders = [tmp_path / out] if out is not None else list((tmp_path / "runs").iterdir())
    assert len(folders) == 1  # one run folder, whichever process looked for a free number
    run_dir = folders[0]
    for name in ("config.toml", "losses.csv", "loss_curves.png", "progress.gif", "generator.safetensors",
                 "checkpoints/last.pt", "samples/image_at_epoch_0001.png", "samples/image_at_epoch_0002.png"):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "losses.csv") as handle:
        assert len(handle.readlines()) == 1 + 2 * 4  # header + 2 epochs x (8 steps / log_every 2)
    if out is not None:  # a resume under torchrun: every process continues from the one checkpoint
        resume = command[: command.index("train") + 1] + ["--resume", str(run_dir), "--epochs", "3", "--no-progress"]
        result = subprocess.run(resume, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "all 2 processes hold identical weights" in result.stdout and "epoch    3/3" in result.stdout


# -- Distributed.check_replicas in a real 2-process gloo group ------------------------------------

PERTURBATION = 1e-3  # added to one weight on rank 1: a replica that drifted


def tiny_network() -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights in every process
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def perturb(network: torch.nn.Module) -> None:
    with torch.no_grad():
        network[0].weight[0, 0] += PERTURBATION


def sha256_of(network: torch.nn.Module) -> str:
    """The replicas' digest, computed here: SHA-256 of every parameter's float32 bytes in order."""
    digest = hashlib.sha256()
    for parameter in network.parameters():
        digest.update(parameter.detach().float().numpy().tobytes())
    return digest.hexdigest()


def _replica_worker(rank: int, store_file: str, results_dir: str) -> None:
    """One process of the group: the check with equal replicas, then with rank 1's weight perturbed."""
    import torch.distributed as dist

    from mnistgan.distributed import Distributed

    torch.set_num_threads(1)
    # A file store: no port to choose at all.
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    distributed = Distributed(rank=rank, world_size=2)
    network = tiny_network()
    outcome = {}
    for case in ("equal", "differ"):
        if case == "differ" and rank == 1:
            perturb(network)
        try:
            outcome[case] = {"digest": distributed.check_replicas(network), "error": None}
        except RuntimeError as error:
            outcome[case] = {"digest": None, "error": str(error)}
    with open(os.path.join(results_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(outcome, handle)
    distributed.close()


def test_the_replica_check_refuses_replicas_that_differ_and_passes_equal_ones(tmp_path):
    import torch.multiprocessing as mp

    context = mp.start_processes(_replica_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, "the 2-process group did not finish in 120 s"
    finally:
        for process in context.processes:  # only if the deadline passed: these are the two started above
            if process.is_alive():
                process.kill()
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    equal = tiny_network()
    drifted = tiny_network()
    perturb(drifted)
    assert sha256_of(equal) != sha256_of(drifted)  # the perturbation changes the bytes hashed

    # Equal replicas: both processes pass, with the digest of the weights they hold.
    assert [outcome["equal"] for outcome in outcomes] == [{"digest": sha256_of(equal), "error": None}] * 2

    # One weight differs on rank 1: both processes refuse (neither goes on as if all were well), and
    # the error names both differing weight digests, which are those computed here of each replica.
    for rank, outcome in enumerate(outcomes):
        error = outcome["differ"]["error"]
        assert error is not None, f"rank {rank} passed the check with differing replicas"
        assert "different weights" in error and "2 processes" in error, error
        assert sha256_of(equal) in error and sha256_of(drifted) in error, error
