"""Data-parallel training: real processes on loopback (gloo), real Fashion-MNIST, real files.

The fast tests pin the pieces (backend choice, how a batch is shard, the config's checks);
the slow ones launch two processes with `slimserve train --nproc 2` and with the
documented `torchrun` line, and compare what they write with one process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest
import safetensors.torch
import torch
import yaml
from conftest import free_port
from rich.console import Console
from test_kubernetes import KUBERNETES_VERSIONS, cpu_quantity

from slimserve.errors import SlimserveError
from training.checkpoint import METADATA_FILE, WEIGHTS_FILE
from training.config import TrainConfig
from training.distributed import World, backend_for, launched_world, state_digest, threads_per_process
from training.tensors import ImageTensors, batches, shard_of
from training.train import STATE_FILE, train

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = {METADATA_FILE, WEIGHTS_FILE, STATE_FILE}
# Two processes average two half-batch gradients instead of one batch's: the same step up
# to float rounding, so on 2000 test images the accuracies agree to within 1 point.
ACCURACY_TOLERANCE = 0.01
SMALL_CNN = '{"widths": [8, 16], "hidden": 32}'


# ------------------------------------------------------------------ pieces


def test_backend_is_nccl_on_gpus_and_gloo_on_cpu():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"


def test_sharded_batches_are_the_one_process_batches_split_by_rank():
    data = ImageTensors(torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1), torch.arange(103))
    whole = list(batches(data, 8, generator=torch.Generator().manual_seed(5), drop_last=True))
    parts = [
        list(batches(data, 8, generator=torch.Generator().manual_seed(5), drop_last=True, shard=(rank, 2)))
        for rank in range(2)
    ]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 12
    for (images, labels), (a, la), (b, lb) in zip(whole, *parts, strict=True):
        assert len(la) == len(lb) == 4
        assert torch.equal(torch.cat([la, lb]), labels)
        assert torch.equal(torch.cat([a, b]), images)
    test_parts = [shard_of(data, rank, 2).labels for rank in range(2)]
    assert torch.equal(torch.cat(test_parts), data.labels)


def test_world_comes_from_the_launchers_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched_world() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    world = launched_world()
    assert world == World(rank=3, size=4, local_rank=1, local_size=2)
    assert not world.is_main and world.shard == (3, 4)
    assert threads_per_process(world) == max(1, (os.cpu_count() or 1) // 2)


def test_global_batch_must_split_evenly_between_processes():
    with pytest.raises(SlimserveError, match="multiple of --nproc 3"):
        TrainConfig.from_recipe("cnn", "fast", batch_size=128, nproc=3)
    assert TrainConfig.from_recipe("cnn", "fast", nproc=2).batch_size == 128


def test_distillation_refuses_several_processes(tmp_path):
    config = TrainConfig.from_recipe("mlp", "fast", nproc=2, limit=100)
    with pytest.raises(SlimserveError, match="distillation trains in one process"):
        train(config, tmp_path / "run", distillation=object(), console=Console(quiet=True))  # type: ignore[arg-type]


# ------------------------------------------------------------------ real processes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_args(run_dir: Path, *options: str) -> list[str]:
    return ["train", "--limit", "2000", "--epochs", "2", "--threads", "1", "--out", str(run_dir), *options]


def _slimserve(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "commands.main", *args]
    result = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metadata(run_dir: Path) -> dict:
    return json.loads((run_dir / METADATA_FILE).read_text())


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run_dir / WEIGHTS_FILE))


def _assert_ranks_identical(run_dir: Path) -> None:
    """Each rank hashed its own state dict; all equal, and equal to what rank 0 saved."""
    record = _metadata(run_dir)["distributed"]
    assert record["processes"] == 2 and record["backend"] == "gloo"
    assert record["rank_weight_sha256"] == [state_digest(_weights(run_dir))] * 2


@pytest.mark.slow
def test_two_processes_reach_the_accuracy_of_one_with_identical_replicas(tmp_path):
    """MLP, no augmentation, fp32: two processes with the same global batch train the same
    model as one (up to rounding), and the run folder is rank 0's alone."""
    options = ("--model", "mlp", "--recipe", "fast", "--amp", "off")
    one = train(
        TrainConfig.from_recipe("mlp", "fast", amp="off", epochs=2, limit=2000, threads=1),
        tmp_path / "one",
        console=Console(quiet=True),
    )
    result = _slimserve(tmp_path, *_train_args(tmp_path / "two", *options, "--nproc", "2"))
    assert "in each of 2 processes (gloo)" in result.stdout
    assert "per process" in result.stdout
    two = _metadata(tmp_path / "two")
    assert one.accuracy > 0.7
    assert abs(two["metrics"]["test_accuracy"] - one.accuracy) <= ACCURACY_TOLERANCE
    assert two["metrics"]["test_images"] == 2000
    _assert_ranks_identical(tmp_path / "two")
    assert {p.name for p in (tmp_path / "two").iterdir()} == RUN_FILES  # no stray temp files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    history = torch.load(tmp_path / "two" / STATE_FILE, weights_only=True)["history"]
    assert len(history[-1]["images_per_second_per_process"]) == 2


def _interrupt_after_first_epoch(process: subprocess.Popen, state: Path) -> None:
    """SIGTERM the launcher (torchrun stops its workers) once epoch 1 is saved."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] == 1:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
            return
        time.sleep(0.05)
    pytest.fail(f"torchrun exited ({process.returncode}) or timed out before epoch 1 was saved")


@pytest.mark.slow
def test_torchrun_run_interrupted_and_resumed_ends_where_an_uninterrupted_run_does(tmp_path):
    """A CNN (BatchNorm: rank 0's statistics are broadcast) under the documented torchrun
    line, stopped after epoch 1, then `slimserve train --resume`, which relaunches the two
    processes itself: the same weights, bit for bit, as a straight `--nproc 2` run."""
    options = ("--model", "cnn", "--recipe", "fast", "--arch-kwargs", SMALL_CNN)
    _slimserve(tmp_path, *_train_args(tmp_path / "straight", *options, "--nproc", "2"))
    resumed = tmp_path / "resumed"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "commands.main",
        *_train_args(resumed, *options),
    ]
    process = subprocess.Popen(
        torchrun,
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _interrupt_after_first_epoch(process, resumed / STATE_FILE)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert _metadata(resumed)["epoch"] == 1
    result = _slimserve(tmp_path, "train", "--resume", str(resumed))
    assert f"Resuming {resumed} from epoch 1" in result.stdout
    assert "in each of 2 processes (gloo)" in result.stdout
    straight, again = _weights(tmp_path / "straight"), _weights(resumed)
    assert straight.keys() == again.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, again[name]), name
    assert _metadata(resumed)["metrics"] == _metadata(tmp_path / "straight")["metrics"]
    _assert_ranks_identical(resumed)


# ------------------------------------------------------------------ the Kubeflow PyTorchJob

TRAINING_MANIFESTS = REPO_ROOT / "deploy" / "kubernetes" / "training"


def _rendered_training_manifests() -> list[dict]:
    from test_kubernetes import _kustomize_command

    command = _kustomize_command(TRAINING_MANIFESTS)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_pytorchjob_manifests_are_valid_and_run_what_slimserve_and_torchrun_accept(version):
    """kubernetes-validate has no schema for the operator's CRD: the PVC and the pod
    template are validated strictly as core objects, the PyTorchJob's own fields by hand,
    and the container's command by torchrun's and slimserve's real parsers."""
    docs = {doc["kind"]: doc for doc in _rendered_training_manifests()}
    assert set(docs) == {"PyTorchJob", "PersistentVolumeClaim"}
    pvc, job = docs["PersistentVolumeClaim"], docs["PyTorchJob"]
    assert kubernetes_validate.validate(pvc, version, strict=True) == version.rsplit(".", 1)[0]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # two nodes mount it

    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    assert set(spec) <= {"nprocPerNode", "elasticPolicy", "runPolicy", "pytorchReplicaSpecs"}
    assert set(spec["runPolicy"]) <= {"backoffLimit", "cleanPodPolicy", "ttlSecondsAfterFinished"}
    assert set(spec["pytorchReplicaSpecs"]) == {"Worker"}  # elastic jobs have no Master
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    assert set(worker) == {"replicas", "restartPolicy", "template"}
    elastic = spec["elasticPolicy"]
    assert set(elastic) <= {"rdzvBackend", "minReplicas", "maxReplicas", "maxRestarts"}
    assert elastic["rdzvBackend"] == "c10d"
    assert elastic["minReplicas"] == elastic["maxReplicas"] == worker["replicas"] == 2
    assert isinstance(spec["nprocPerNode"], str) and spec["nprocPerNode"].isdigit()  # a string in the CRD

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "worker"},
        "spec": worker["template"]["spec"],
    }
    assert kubernetes_validate.validate(pod, version, strict=True) == version.rsplit(".", 1)[0]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "pytorch"  # what the operator injects its variables into

    command = container["command"]
    assert command[0] == "torchrun"
    module = command.index("-m")
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser().parse_args(command[1:])
    assert launcher.module and launcher.training_script == "commands.main"
    assert launcher.max_restarts == elastic["maxRestarts"] == 0
    from commands.main import build_parser

    args = build_parser().parse_args(command[module + 2 :])
    assert args.command == "train"
    from training.cli import train_config_from_args

    config = train_config_from_args(args, args.model)
    processes = worker["replicas"] * int(spec["nprocPerNode"])
    assert config.batch_size % processes == 0
    assert config.threads == cpu_quantity(container["resources"]["limits"]["cpu"]) // int(
        spec["nprocPerNode"]
    )

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert set(claims.values()) == {pvc["metadata"]["name"]}
    shared = Path(mounts[next(iter(claims))])
    env = {item["name"]: item["value"] for item in container["env"]}
    assert Path(env["SLIMSERVE_FASHION_MNIST_DIR"]).is_relative_to(shared)
    assert Path(args.out).is_relative_to(shared)  # rank 0 writes where a resumed worker reads
    assert {"/tmp", "/dev/shm"} <= set(mounts.values())  # the root filesystem is read-only
