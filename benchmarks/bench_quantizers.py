"""Which quantizer makes the best tokenizer and the best generator (issue 19): every ``quantizer.kind`` at equal
training time and equal codebook size, a codebook-size sweep, and the growing codebook against a fixed one.

    pip install scikit-image                                    # benchmark-only (the colour folder's photos)
    python benchmarks/bench_quantizers.py --part sweep          # 20 runs x --sweep-steps steps (~30 min on one core)
    python benchmarks/bench_quantizers.py --part kinds          # 6 kinds x 2 seeds on Fashion-MNIST + 6 on a colour folder, --steps each
    python benchmarks/bench_quantizers.py --part generators     # latent diffusion and a masked prior on each kind's seed-0 tokenizer
    python benchmarks/bench_quantizers.py --part growing        # grow 16 -> K against fixed K, at equal steps

The parts split over cores: ``--part kinds --dataset fashion-mnist`` on one and ``--dataset colour`` on the
other, ``--only vq,fsq`` for a subset of kinds (kinds, generators, sweep), ``--sizes 65536`` for part of the
sweep (a subset leaves the sweep's plot alone), ``--seed 1 --seeds 1`` for one seed of ``growing``.

Every autoencoder is the ``fashion-mnist`` preset (32 px, f4: 8x8 positions of 4 channels) with the
adversarial term off (``loss.disc_weight=0``: the runs are shorter than its start) and a constant learning
rate after warm-up; only the quantizer changes. One torch thread per run. Equal time: every tokenizer trains
for the same ``--steps``, because at 256 codebook rows the step costs the same whatever the kind (the
convolutions dominate; each table prints the measured s/step, so the claim is checked, not assumed) -- a
step budget stays fair when the machine is shared, where a wall-clock budget (``train.max_seconds``) would
hand the runs that met a busy moment fewer steps.
Equal size: 256 codebook rows in all -- vq / simvq / fsq K = 256 (fsq levels [4, 4, 4, 4]), residual and
hierarchical 2 stages of 128 (residual: 2 codes per position; hierarchical: a 4x4 top grid over the 8x8 one).

Measured per tokenizer, on held-out images the run never trained on:

* rFID of 1,000 reconstructions vs their originals in the shipped detail-sensitive features, with the
  calibration rows of ``vqldm evaluate autoencoder`` (real-vs-real floor, the originals blurred by 0.5 /
  1 px, with noise) -- the colour folder is read in those features as luma, so its rFID is colour-blind and
  PSNR (on RGB) carries colour; PSNR;
* codebook usage, perplexity and dead codes over the whole held-out split (an epoch of it; residual and
  hierarchical count each stage's K codes apart);
* NMI(codes; classes) (``evaluate autoencoder``'s) and a linear probe: multinomial logistic regression on each
  image's normalised histogram of codes, fitted on 5,000 training images, accuracy on 1,000 held-out
  (chance 10%): how much the codes say about the class.

``generators``: on each kind's seed-0 Fashion-MNIST tokenizer, ``vqldm train-diffusion --config fashion-mnist``
and ``vqldm train-prior --kind masked --config fashion-mnist`` for ``--gen-seconds`` each, then
``vqldm evaluate generation`` (FD of ``--samples`` class-conditional samples vs as many held-out images, with
its calibration rows; the generators do use the wall clock, ``train.max_seconds``, since a prior over the
residual kind's 128 tokens costs more per step than over 64). ``growing``: ``quantizer.grow_from=16`` up to K
against fixed K, both for ``--steps`` (the growing run's steps are cheaper while its table is small, so equal
steps favours the fixed codebook, if anything).

Prints markdown tables; writes OUT/<part>.json and docs plots (``--plot-dir``). Finished runs and their
evaluations are reused (delete OUT/runs/NAME to redo one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import cpu_name, prepare_out, run_main  # noqa: E402

BASE = ["loss.disc_weight=0", "train.lr_schedule=constant", "train.progress=false", "train.scaling_max_images=2000",
        "train.eval_max_images=500", "train.image_every=1000000", "train.checkpoint_every=1000000", "data.num_workers=0"]
KINDS = {  # name -> overrides at equal size (256 codebook rows)
    "vq": ["model.codebook_size=256"],
    "vq+rotation": ["model.codebook_size=256", "quantizer.gradient=rotation"],
    "simvq": ["model.codebook_size=256", "quantizer.kind=simvq"],
    "fsq": ["model.codebook_size=256", "quantizer.kind=fsq"],
    "residual": ["model.codebook_size=128", "quantizer.kind=residual", "quantizer.stages=2"],
    "hierarchical": ["model.codebook_size=128", "quantizer.kind=hierarchical", "quantizer.stages=2"],
}
SWEEP_KINDS = ("vq", "vq+rotation", "fsq", "simvq")
SWEEP_SIZES = (2**8, 2**10, 2**12, 2**14, 2**16)
COLOUR = ["data.channels=3", "data.image_size=32", "data.fit=resize", "data.holdout_fraction=0.1"]


def quiet(fn, log: Path):
    """Run ``fn()`` with its console lines in ``log`` (not in the tables)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn()
    log.write_text(buf.getvalue())
    return result


def cli(argv: list[str], log: Path) -> None:
    from vqldm.cli.main import main as vqldm_main

    code = quiet(lambda: vqldm_main(argv), log)
    if code:
        raise SystemExit(f"vqldm {' '.join(argv)} failed with exit code {code} (see {log})")


def train_ae(run: Path, data: str, overrides: list[str], args) -> dict:
    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.autoencoder.train import train_autoencoder

    if (run / "metrics.json").is_file() and (run / "vqvae").is_dir():
        return json.loads((run / "metrics.json").read_text())
    resume = run.is_dir()  # a run stopped part-way (its checkpoints) continues instead of stopping the benchmark
    cfg = load_autoencoder_config("fashion-mnist", [*BASE, *overrides])
    print(f"+ train-autoencoder --data {data} --out {run} " + " ".join(f"--set {o}" for o in overrides), flush=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    return quiet(lambda: train_autoencoder(cfg, run, data=data, resume=resume), run.parent / f"{run.name}.train.log")


def code_histograms(vq, split, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode the first ``n`` images of ``split`` (no decoding): per-image code histograms (normalised),
    labels, and the code counts over all of them (global indices: each stage's K codes apart)."""
    from vqldm.autoencoder.model import code_vocabulary, encode_indices, global_codes

    v = code_vocabulary(vq)
    n = min(n, len(split))
    feats, labels, counts = [], [], torch.zeros(v)
    for x, y in split.batches(500, n, False, "codes"):
        with torch.no_grad():
            _, idx = encode_indices(vq, vq.encode(x).latents)
        idx = global_codes(vq, idx).reshape(x.shape[0], -1)
        hist = torch.zeros(x.shape[0], v).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
        counts += hist.sum(0)
        feats.append(hist / idx.shape[1])
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).long(), counts


def linear_probe(train: tuple, test: tuple, seed: int) -> float:
    """Held-out accuracy of multinomial logistic regression on code histograms (full batch, Adam, 300 steps)."""
    (xtr, ytr), (xte, yte) = train, test
    if int(ytr.min()) < 0 or int(yte.min()) < 0:
        return float("nan")
    torch.manual_seed(seed)
    classes = int(ytr.max()) + 1
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    opt = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(300):  # weight decay keeps 2^16-wide histograms from memorising
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((xte @ w + b).argmax(1) == yte).float().mean())


def measure_ae(run: Path, data: str, args, seed: int, probe: bool = True) -> dict:
    """rFID (+ calibration, NMI), usage over the held-out split, the linear probe (``probe``: the sweep prints
    none, and at K = 2^16 its logistic regression on 65,536-bin histograms takes hours); cached in RUN/bench.json."""
    from vqldm.autoencoder.config import AutoencoderRunConfig
    from vqldm.autoencoder.metrics import codebook_stats
    from vqldm.autoencoder.model import load_vqvae
    from vqldm.data.sources import load_datasets
    from vqldm.plumbing.config import load_config

    cached = run / "bench.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    out = run / "eval"
    cli(["evaluate", "autoencoder", "--model", str(run), "--data", data, "--max-images", str(args.max_images),
         "--out", str(out), "--seed", "0", "--no-progress", "--device", "cpu"], run / "eval.log")
    report = json.loads((out / "report.json").read_text())
    ae = load_vqvae(run)
    cfg = load_config(AutoencoderRunConfig, run / "config.yaml")
    data_cfg = cfg.data
    if Path(data).is_dir():  # the colour folder's class subfolders: labels for the probe (stage 1 trains without)
        data_cfg = dataclasses.replace(data_cfg, labels="folders")
    ds = load_datasets(data, data_cfg, log=lambda m: None, progress=False)
    test_x, test_y, counts = code_histograms(ae.vqvae, ds.holdout, len(ds.holdout))  # usage: the whole held-out split
    epoch = {"images": len(ds.holdout), **codebook_stats(counts.long())}
    probe = linear_probe(code_histograms(ae.vqvae, ds.train, 5000)[:2], (test_x[:1000], test_y[:1000]), seed) if probe else None
    metrics = json.loads((run / "metrics.json").read_text())
    row = {"rfid": report["rfid"], "rfid_scale": report["rfid_scale"], "calibration": report["calibration"],
           "psnr": report["psnr"], "nmi": (report.get("per_class") or {}).get("nmi"),
           "usage": epoch["codebook_usage"], "perplexity": epoch["perplexity"], "dead_codes": epoch["dead_codes"],
           "codes": epoch["codes_used"] + epoch["dead_codes"], "holdout_images": epoch["images"],
           "probe": probe, "steps": metrics["step"],
           "train_seconds": metrics["train_seconds"]}
    cached.write_text(json.dumps(row, indent=2))
    return row


def selected(args) -> list[str]:
    """The kinds this invocation covers (``--only``), in the tables' order."""
    return [k for k in KINDS if args.only is None or k in args.only]


def print_table(headers: list[str], lines) -> None:
    """A markdown table: the header row, its rule, then one row per list of cells."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for cells in lines:
        print("| " + " | ".join(str(c) for c in cells) + " |")


def calibration_line(rows: list[dict]) -> str:
    cal = rows[0]["calibration"]
    return "calibration (same features, images and count): " + ", ".join(f"{c['name']} {c['fd']:.2f}" for c in cal)


# ----------------------------------------------------------------------------- parts
def part_sweep(args) -> dict:
    rows = []
    kinds = [k for k in SWEEP_KINDS if args.only is None or k in args.only]
    for kind in kinds:
        for k in args.sizes:
            name = f"sweep-{kind}-k{k}"
            sets = [o for o in KINDS[kind] if not o.startswith("model.codebook_size")]
            sets += [f"model.codebook_size={k}", f"train.max_steps={args.sweep_steps}", f"train.seed={args.seed}"]
            run = args.out / "runs" / name
            train_ae(run, "fashion-mnist", sets, args)
            rows.append({"kind": kind, "codebook_size": k, **measure_ae(run, "fashion-mnist", args, args.seed, probe=False)})
            r = rows[-1]
            print(f"  {kind} K={k}: usage {r['usage']:.1f}%, rFID {r['rfid']:.2f}, PSNR {r['psnr']:.2f}, "
                  f"{r['train_seconds'] / r['steps']:.2f} s/step", flush=True)
    print(f"\nCodebook-size sweep: Fashion-MNIST, {args.sweep_steps} steps each, one thread, {cpu_name()}; usage over the "
          f"{rows[0]['holdout_images']} held-out images; rFID on {args.max_images}.\n")
    print_table(["kind", "K", "usage", "dead codes", "perplexity", "rFID", "PSNR (dB)", "s/step"],
                ([r["kind"], f"2^{r['codebook_size'].bit_length() - 1}", f"{r['usage']:.1f}%", r["dead_codes"],
                  f"{r['perplexity']:.0f}", f"{r['rfid']:.2f}", f"{r['psnr']:.2f}", f"{r['train_seconds'] / r['steps']:.2f}"]
                 for r in rows))
    print("\n" + calibration_line(rows))
    held = [r["kind"] for r in rows if r["codebook_size"] == SWEEP_SIZES[-1] and r["usage"] >= 95]
    if SWEEP_SIZES[-1] in args.sizes:
        print(f"kinds holding >= 95% usage at 2^16: {', '.join(held) or 'none'}")
    if len(kinds) == len(SWEEP_KINDS) and set(args.sizes) == set(SWEEP_SIZES):  # a subset leaves the full plot alone
        plot_sweep(rows, args.plot_dir / "quantizer_sweep.png")
    return {"rows": rows}


def plot_sweep(rows, path: Path) -> None:
    from vqldm.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind in SWEEP_KINDS:
        pts = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["codebook_size"])
        ks = [r["codebook_size"] for r in pts]
        axes[0].plot(ks, [r["usage"] for r in pts], marker="o", label=kind)
        axes[1].plot(ks, [r["rfid"] for r in pts], marker="o", label=kind)
    for cal in rows[0]["calibration"]:
        axes[1].axhline(cal["fd"], color="gray", linestyle=":", linewidth=1)
        axes[1].annotate(cal["name"], (1.0, cal["fd"]), xycoords=("axes fraction", "data"), ha="right", fontsize=7, color="gray")
    for ax, label in zip(axes, ["held-out codebook usage (%)", "rFID (log; dotted: calibration rows)"]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size K")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def part_kinds(args) -> dict:
    from make_colour_folder import make_folder

    colour = args.out / "colour_classes"
    if not colour.is_dir():
        make_folder(colour, 2000, classes=True, seed=0)
    result = {}
    sets_of = {"fashion-mnist": ("fashion-mnist", [], args.seeds), "colour": (str(colour), COLOUR, 1)}
    for data, data_sets, seeds in (sets_of[d] for d in (sets_of if args.dataset == "both" else [args.dataset])):
        rows = []
        tag = "fmnist" if data == "fashion-mnist" else "colour"
        for seed in range(args.seed, args.seed + seeds):  # every kind's first seed first: the generators part needs those
            for kind in selected(args):
                run = args.out / "runs" / f"{tag}-{kind}-s{seed}-n{args.steps}"
                train_ae(run, data, [*KINDS[kind], *data_sets, f"train.max_steps={args.steps}", f"train.seed={seed}"], args)
                rows.append({"kind": kind, "seed": seed, **measure_ae(run, data, args, seed)})
                r = rows[-1]
                print(f"  {tag} {kind} seed {seed}: rFID {r['rfid']:.2f}, usage {r['usage']:.1f}%, "
                      f"{r['train_seconds'] / r['steps']:.2f} s/step", flush=True)
        result[tag] = rows
        print(f"\nQuantizers at equal time ({args.steps} steps of batch 64 each, one thread, {cpu_name()}) and equal size "
              f"(256 codebook rows) on {'Fashion-MNIST' if tag == 'fmnist' else 'a colour folder (2,000 crops of 8 photos, 32 px RGB; class = photo)'}; "
              f"mean over {seeds} seed(s); ± is half the range (max - min) over the seeds.\n")
        print("| kind | s/step | rFID | PSNR (dB) | usage | perplexity | dead | NMI | linear probe |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind in selected(args):
            rs = [r for r in rows if r["kind"] == kind]

            def cell(key, fmt="{:.2f}", pct=False):
                vals = [r[key] for r in rs if r[key] is not None]
                if not vals:
                    return "-"
                m = statistics.mean(vals)
                s = fmt.format(m * (100 if pct else 1)) + ("%" if pct else "")
                return s + (f" ± {fmt.format((max(vals) - min(vals)) * (100 if pct else 1) / 2)}" if len(vals) > 1 else "")
            print(f"| {kind} | {statistics.mean(r['train_seconds'] / r['steps'] for r in rs):.2f} | {cell('rfid')} | {cell('psnr')} | "
                  f"{cell('usage', '{:.1f}')}% | {cell('perplexity', '{:.0f}')} | {cell('dead_codes', '{:.0f}')} | "
                  f"{cell('nmi', '{:.3f}')} | {cell('probe', '{:.1f}', pct=True)} |")
        print("\n" + calibration_line(rows))
    return result


def part_generators(args) -> dict:
    rows = []
    common = ["--data", "fashion-mnist", "--set", "train.progress=false", "--set", f"train.max_seconds={args.gen_seconds}",
              "--set", "train.max_steps=100000", "--set", "train.image_every=1000000", "--set", "train.checkpoint_every=1000000",
              "--set", "data.num_workers=0"]
    for kind in selected(args):
        ae = args.out / "runs" / f"fmnist-{kind}-s{args.seed}-n{args.steps}"
        waited = 0
        while args.wait and not (ae / "metrics.json").is_file() and waited < 3600:  # another process is training it
            time.sleep(20)
            waited += 20
        if not (ae / "metrics.json").is_file():
            raise SystemExit(f"{ae} is missing; run --part kinds --steps {args.steps} first")
        row = {"kind": kind}
        for gen, argv, model in (
                ("diffusion", ["train-diffusion", "--config", "fashion-mnist"], "pipeline"),
                ("prior", ["train-prior", "--kind", "masked", "--config", "fashion-mnist"], "prior")):
            out = args.out / "gen" / f"{gen}-{kind}"
            if not (out / model).is_dir():
                print(f"+ {' '.join(argv)} --autoencoder {ae} --out {out}", flush=True)
                cli([*argv, "--autoencoder", str(ae), "--out", str(out), *common], out.parent / f"{out.name}.train.log")
            ev = out / "eval"
            if not (ev / "report.json").is_file():
                steps = ["--steps", "20"] if gen == "diffusion" else []  # the prior: its own default rounds
                cli(["evaluate", "generation", "--model", str(out / model), "--data", "fashion-mnist", "--num-samples",
                     str(args.samples), *steps, "--out", str(ev), "--seed", "0", "--no-progress", "--device", "cpu"],
                    out.parent / f"{out.name}.eval.log")
            rep = json.loads((ev / "report.json").read_text())
            metrics = json.loads((out / "metrics.json").read_text())
            acc = rep.get("class_accuracy") or {}
            row[gen] = {"fd": rep["fid"], "calibration": rep.get("calibration"), "steps": metrics["step"],
                        "seconds": metrics["train_seconds"],
                        "class_accuracy": acc.get("class_accuracy"), "real_class_accuracy": acc.get("classifier_accuracy_on_real")}
        rows.append(row)
    print(f"\nGenerators at equal time ({args.gen_seconds:.0f} s of training each, one thread, {cpu_name()}) on each kind's "
          f"seed-{args.seed} Fashion-MNIST tokenizer; FD of {args.samples} class-conditional samples (diffusion: 20 steps of its default sampler; "
          f"masked prior: its default rounds) vs held-out images in the shipped detail-sensitive features.\n")
    print_table(["tokenizer", "diffusion steps", "diffusion FD", "class acc", "prior steps", "prior FD", "class acc"],
                ([r["kind"], r["diffusion"]["steps"], f"{r['diffusion']['fd']:.2f}", f"{100 * r['diffusion']['class_accuracy']:.1f}%",
                  r["prior"]["steps"], f"{r['prior']['fd']:.2f}", f"{100 * r['prior']['class_accuracy']:.1f}%"] for r in rows))
    print(f"real held-out images: class recognised in {100 * rows[0]['diffusion']['real_class_accuracy']:.1f}%")
    cal = rows[0]["diffusion"]["calibration"] or []
    print("\ncalibration: " + ", ".join(f"{c['name']} {c['fd']:.2f}" for c in cal))
    for gen in ("diffusion", "prior"):
        best = min(rows, key=lambda r: r[gen]["fd"])
        print(f"best {gen} FD: {best['kind']} ({best[gen]['fd']:.2f})")
    return {"rows": rows}


def part_growing(args) -> dict:
    rows = []
    k = args.grow_k
    for name, sets in (("fixed", []), ("growing", ["quantizer.grow_from=16", f"quantizer.grow_every={args.grow_every}"])):
        for seed in range(args.seed, args.seed + args.seeds):
            run = args.out / "runs" / f"grow-{name}-k{k}-s{seed}-n{args.steps}"
            train_ae(run, "fashion-mnist", [f"model.codebook_size={k}", *sets, f"train.max_steps={args.steps}",
                                            f"train.seed={seed}"], args)
            metrics = json.loads((run / "metrics.json").read_text())
            rows.append({"name": name, "seed": seed, "active_codes": metrics.get("active_codes", k),
                         **measure_ae(run, "fashion-mnist", args, seed)})
    print(f"\nGrowing codebook (16 codes, doubled every {args.grow_every} steps, up to K = {k}) vs fixed K = {k}, "
          f"{args.steps} steps of batch 64 each, one thread, {cpu_name()}, Fashion-MNIST.\n")
    print_table(["codebook", "seed", "train s", "active codes", "rFID", "PSNR (dB)", "usage", "dead"],
                ([r["name"], r["seed"], f"{r['train_seconds']:.0f}", r["active_codes"], f"{r['rfid']:.2f}", f"{r['psnr']:.2f}",
                  f"{r['usage']:.1f}%", r["dead_codes"]] for r in rows))
    print("\n" + calibration_line(rows))
    return {"rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["sweep", "kinds", "generators", "growing"], required=True)
    p.add_argument("--out", type=Path, default=Path("bench_out/quantizers"))
    p.add_argument("--plot-dir", type=Path, default=Path("docs"))
    p.add_argument("--steps", type=int, default=300, help="training steps per autoencoder (kinds, growing)")
    p.add_argument("--dataset", choices=["both", "fashion-mnist", "colour"], default="both", help="kinds: which dataset(s)")
    p.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help="kinds, generators, sweep: these kinds only (comma-separated)")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(SWEEP_SIZES),
                   help="sweep: these codebook sizes only (comma-separated; default 2^8..2^16 in steps of 4x)")
    p.add_argument("--wait", action="store_true", help="generators: wait for tokenizers another process is still training")
    p.add_argument("--gen-seconds", type=float, default=90.0, help="training seconds per generator")
    p.add_argument("--sweep-steps", type=int, default=100)
    p.add_argument("--seeds", type=int, default=2, help="seeds per Fashion-MNIST setting (the spread)")
    p.add_argument("--samples", type=int, default=500, help="generated images per FD")
    p.add_argument("--max-images", type=int, default=1000, help="held-out reconstructions per rFID")
    p.add_argument("--grow-k", type=int, default=1024)
    p.add_argument("--grow-every", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    prepare_out(args.out, args.threads)
    print(f"bench_quantizers --part {args.part}: {cpu_name()}, {torch.get_num_threads()} torch thread(s)", flush=True)
    unknown = set(args.only or []) - set(KINDS)
    if unknown:
        p.error(f"--only: unknown kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    if args.part == "sweep" and not set(args.only or SWEEP_KINDS) <= set(SWEEP_KINDS):
        p.error(f"--only: the sweep covers {', '.join(SWEEP_KINDS)} only")
    if any(k < 2 for k in args.sizes):
        p.error("--sizes: codebook sizes must be >= 2, e.g. --sizes 256,65536")
    result = {"sweep": part_sweep, "kinds": part_kinds, "generators": part_generators, "growing": part_growing}[args.part](args)
    tag = "".join(f"-{t}" for t in ([args.dataset] if args.part == "kinds" and args.dataset != "both" else []) + (args.only or []))
    if args.part == "sweep" and set(args.sizes) != set(SWEEP_SIZES):
        tag += "".join(f"-k{k}" for k in args.sizes)
    if args.part == "growing" and (args.seed, args.seeds) != (0, 2):
        tag += f"-s{args.seed}-n{args.seeds}"
    (args.out / f"{args.part}{tag}.json").write_text(json.dumps({"cpu": cpu_name(), "args": {k: str(v) for k, v in vars(args).items()},
                                                            **result}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    run_main(main)
