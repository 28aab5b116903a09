"""Run the Flower digits app under secagg and under Flower's own strategies; tabulate.

Starts a secagg deployment (server A, server B, dealer; TLS) and a Flower federation on
loopback with Flower's deployment engine (one SuperLink, ``--nodes`` SuperNodes, the
last ``--byzantine`` of them attackers), then runs the app once per configuration with
``flwr run`` and records the global model's test accuracy after every round:

* ``secagg-multi-krum``, ``secagg-bulyan``: secagg.flower's strategy, Gaussian attack;
* ``flower-fedavg``, ``flower-multikrum``: Flower's plaintext FedAvg and MultiKrum,
  same attack;
* ``flower-secaggplus-krum``: Flower's SecAgg+ workflow with Flower's Krum (legacy
  API, ``secaggplus/``), same attack: Krum receives the unmasked mean as every
  client's parameters, so it cannot exclude anyone;
* ``flower-fedavg-no-attack``: the reference without attackers.

Usage (from the repository root; about 10-20 minutes on 2 cores)::

    .venv/bin/python examples/flower-digits/run.py [--rounds 15] [--out DIR]

Outputs in ``--out`` (default ``examples/flower-digits/results``): ``results.md``,
``results.csv``, ``history.json`` and ``accuracy.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from secagg.flower.local import LocalFlower  # noqa: E402
from servers.launcher import LocalDeployment  # noqa: E402

#: label -> (app directory, mode, secagg rule, attack)
CONFIGS: dict[str, tuple[Path, str, str, str]] = {
    "secagg-multi-krum": (HERE, "secagg", "multi-krum", "gaussian"),
    "secagg-bulyan": (HERE, "secagg", "bulyan", "gaussian"),
    "flower-fedavg": (HERE, "fedavg", "", "gaussian"),
    "flower-multikrum": (HERE, "multikrum", "", "gaussian"),
    "flower-secaggplus-krum": (HERE / "secaggplus", "secaggplus", "", "gaussian"),
    "flower-fedavg-no-attack": (HERE, "fedavg", "", "none"),
}


def secret_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def write_results(
    out: Path, history: dict[str, dict[int, float]], args: argparse.Namespace
) -> None:
    rounds = list(range(0, args.rounds + 1))
    shown = rounds[1 :: max(1, args.rounds // 5)]
    nan = float("nan")
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["config", *[f"round{r}" for r in rounds]])
        for label, h in history.items():
            w.writerow([label, *[f"{h.get(r, float('nan')):.4f}" for r in rounds]])
    lines = [
        f"# Flower digits: n = {args.nodes} SuperNodes, {args.byzantine} Byzantine "
        f"(Gaussian N(0, 200²) updates), {args.rounds} rounds",
        "",
        "Test accuracy of the global model (held-out digits). Flower's deployment engine "
        "(SuperLink + SuperNodes on loopback, `flwr run`); secagg rows aggregate through "
        "server A, server B and the dealer with TLS. Command: "
        "`.venv/bin/python examples/flower-digits/run.py`.",
        "",
        "| config | " + " | ".join(f"r{r}" for r in shown) + " | final |",
        "|---|" + "---|" * (len(shown) + 1),
    ]
    for label, h in history.items():
        cells = [f"{h.get(r, nan):.3f}" for r in shown] + [f"{h.get(args.rounds, nan):.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "history.json").write_text(json.dumps(history, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, h in history.items():
        xs = sorted(h)
        ax.plot(xs, [h[x] for x in xs], marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"digits, n={args.nodes}, {args.byzantine} Byzantine (Gaussian)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--nodes", type=int, default=19)
    ap.add_argument("--byzantine", type=int, default=4)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    why = LocalFlower.available()
    if why:
        raise SystemExit(f"cannot run the Flower example: {why}")
    args.out.mkdir(parents=True, exist_ok=True)
    workers = [f"w{i:02d}" for i in range(args.nodes)]
    byz = set(workers[args.nodes - args.byzantine :])
    history: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="flower-digits-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        print(f"[flower-digits] starting secagg (A, B, dealer) for {args.nodes} workers ...")
        dep = LocalDeployment(work / "secagg", workers, tls=True)
        dep.start()
        try:
            secrets = work / "secrets"
            secrets.mkdir(mode=0o700)
            nodes = [
                {
                    "partition-id": i,
                    "secagg-worker-id": wid,
                    "secagg-token-file": str(secret_file(secrets / wid, dep.tokens[wid])),
                    "byzantine": wid in byz,
                }
                for i, wid in enumerate(workers)
            ]
            record = work / "record"
            record.mkdir()
            print(f"[flower-digits] starting a SuperLink and {args.nodes} SuperNodes ...")
            # the SecAgg+ app imports flower_digits.task from here
            path = os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])
            with LocalFlower(work / "flower", nodes, env={"PYTHONPATH": path}) as fl:
                for label in args.configs:
                    app_dir, mode, rule, attack = CONFIGS[label]
                    run_config = {
                        "num-server-rounds": args.rounds,
                        "num-nodes": args.nodes,
                        "mode": mode,
                        "label": label,
                        "attack": attack,
                        "record-dir": str(record),
                        "secagg-server-a": dep.addr_a,
                        "secagg-server-b": dep.addr_b,
                        "secagg-admin": dep.control_a,
                        "secagg-pki-dir": str(dep.pki),
                        "secagg-f": args.byzantine,
                        **({"secagg-rule": rule} if rule else {}),
                    }
                    t0 = time.perf_counter()
                    run = fl.run(app_dir, run_config, timeout_s=3600)
                    path = record / f"history-{label}.json"
                    if not run.completed or not path.exists():
                        print(run.logs[-4000:])
                        raise SystemExit(f"[flower-digits] {label}: run {run.status}")
                    history[label] = {int(k): v for k, v in json.loads(path.read_text()).items()}
                    print(
                        f"[flower-digits] {label}: final accuracy "
                        f"{history[label][args.rounds]:.3f} ({time.perf_counter() - t0:.0f} s)"
                    )
                    write_results(args.out, history, args)
        finally:
            dep.stop()
    print(f"[flower-digits] wrote {args.out}/results.md, results.csv, accuracy.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
