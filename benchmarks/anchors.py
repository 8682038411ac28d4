"""The two reference points ``benchmarks/speed.py`` measures adamodal against, on one job:
Flower 1.41's own FedAvg (``flwr.serverapp.strategy.FedAvg``) in Flower's simulation engine,
and a plain single-process torch loop with no FL framework.

Both train a plain LeNet (conv6-conv16-fc120-fc84-fc10, the network ``towers=small model=cnn``
builds for an image-only data set) with SGD on exactly the rows adamodal's clients train on:
``speed.py`` writes them (and the server's test set) to one ``.npz`` from adamodal's own
prepared scenario, so all three runs see the same partition, splits and test rows. Each is
run as its own process, so its wall time counts its start-up like ``adamodal run``'s does:

    python benchmarks/anchors.py flower DATA.npz OUT.json --rounds 3 --epochs 2
    python benchmarks/anchors.py plain  DATA.npz OUT.json --rounds 3 --epochs 2

Flower runs its fastest way here: ``run_simulation`` with one CPU per virtual client
(``client_resources num_cpus=1``: as many clients at once as there are cores), one torch
thread per client, each client's rows read once per worker process and kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LR, MOMENTUM, BATCH = 0.01, 0.9, 64


def lenet(in_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> nn.Module:
    c, h, w = in_shape
    fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * fh * fw, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes),
    )


def _unit(x: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> [-1, 1], the scaling adamodal's small towers use."""
    return (torch.from_numpy(np.ascontiguousarray(x)).float().div(255.0) - 0.5) / 0.5


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> None:
    """Plain mini-batch SGD with momentum: a fresh optimizer per round, as FedAvg clients do."""
    g = torch.Generator().manual_seed(seed)
    xt, yt = _unit(x), torch.from_numpy(np.asarray(y, dtype=np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=g)
        for s in range(0, len(yt), BATCH):
            rows = order[s:s + BATCH]
            loss = nn.functional.cross_entropy(model(xt[rows]), yt[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.inference_mode()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = torch.cat([model(_unit(x[s:s + 2048])).argmax(1) for s in range(0, len(x), 2048)])
    return float((pred.numpy() == np.asarray(y)).mean())


_DATA: dict[str, Any] = {}


def client_rows(path: str, cid: int) -> tuple[np.ndarray, np.ndarray]:
    """One client's training rows, read once per process (Flower's worker processes live on)."""
    if path not in _DATA:
        _DATA[path] = np.load(path, allow_pickle=False)
    z = _DATA[path]
    return z[f"x{cid}"], z[f"y{cid}"]


def plain(data: str, rounds: int, epochs: int, seed: int = 0) -> float:
    """FedAvg as a bare loop: every client trains from the global weights, the server averages
    the state dicts weighted by the clients' row counts."""
    torch.manual_seed(seed)
    model = lenet()
    z = np.load(data, allow_pickle=False)
    n_clients = int(z["clients"])
    for rnd in range(rounds):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        total, acc = 0, {k: torch.zeros_like(v, dtype=torch.float64) for k, v in start.items()}
        for cid in range(n_clients):
            x, y = client_rows(data, cid)
            model.load_state_dict(start)
            train_local(model, x, y, epochs, seed=1000 * rnd + cid)
            for k, v in model.state_dict().items():
                acc[k] += v.double() * len(y)
            total += len(y)
        model.load_state_dict({k: (v / total).to(start[k].dtype) for k, v in acc.items()})
    return accuracy(model, z["x_test"], z["y_test"])


def flower(data: str, rounds: int, epochs: int, seed: int = 0) -> float:
    """Flower's FedAvg strategy and a Message-API ClientApp in Flower's simulation engine."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    z = np.load(data, allow_pickle=False)
    n_clients = int(z["clients"])
    result: dict[str, float] = {}
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        cid = int(context.node_config["partition-id"])
        cfg = msg.content["config"]
        x, y = client_rows(str(cfg["data"]), cid)
        model = lenet()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        train_local(model, x, y, int(cfg["epochs"]), seed=1000 * int(cfg["server-round"]) + cid)
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(y)})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(seed)
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_clients,
                          min_available_nodes=n_clients)

        def final_eval(rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
            if rnd != rounds:
                return None
            model = lenet()
            model.load_state_dict(arrays.to_torch_state_dict())
            result["accuracy"] = accuracy(model, z["x_test"], z["y_test"])
            return MetricRecord({"accuracy": result["accuracy"]})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(lenet().state_dict()), num_rounds=rounds,
                       train_config=ConfigRecord({"data": str(Path(data).resolve()), "epochs": epochs}),
                       evaluate_fn=final_eval)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=n_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return result.get("accuracy", float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["flower", "plain"])
    p.add_argument("data", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    acc = (flower if args.which == "flower" else plain)(str(args.data), args.rounds, args.epochs)
    args.out.write_text(json.dumps({"accuracy": acc, "inner_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
