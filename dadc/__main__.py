"""Command line: python -m dadc {data, train, eval, export, import, migrate, simulate, rollback, retrain, trainer} ... (see docs/GUIDE.md).

Every command is a function cmd_NAME(args, settings), registered in parser() with its arguments;
main() runs it and turns any error into one `error: ...` line (DADC_DEBUG=1 shows the traceback)."""
import argparse
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import fields

from . import config


def cmd_data(args, settings):
    from .model import mnist as data

    arrays = data.fetch(settings.home, log=lambda m: print(m, file=sys.stderr))
    print(f"MNIST ok: {len(arrays['train_y'])} train / {len(arrays['test_y'])} test at {data.cache_path(settings.home)}")


def cmd_train(args, settings):
    """A training run (dadc/model/recipe.py): the checkpoint to --out, its summary as one JSON line."""
    from .model import recipe

    summary = recipe.run(args, settings.home, "python -m dadc " + " ".join(sys.argv[1:]),
                         log=lambda m: print(m, file=sys.stderr))
    if summary is not None:  # under torchrun, rank 0 alone reports
        print(json.dumps(summary))
        print(f"saved {args.out}", file=sys.stderr)


def cmd_eval(args, settings):
    from .model import checkpoint
    from .model import mnist as data
    from .model import evaluate

    if args.eps < 0:
        raise ValueError(f"--eps must be >= 0, got {args.eps}")
    if args.n < 1 or args.steps < 1 or args.restarts < 1:
        raise ValueError("--n, --steps and --restarts must be >= 1")
    model, cfg, _ = checkpoint.load(args.checkpoint)
    if args.drawings:  # canvases through the app's preprocessing, not MNIST
        start = time.perf_counter()
        res = evaluate.drawings_accuracy(model, args.drawings)
        result = {"checkpoint": str(args.checkpoint), "net": cfg["net"], "drawings": str(args.drawings),
                  "n": res["all"]["n"], "acc": res["all"]["acc"], "by_family": res["by_family"],
                  "by_style": res["by_style"], "by_label": res["by_label"],
                  "seconds": round(time.perf_counter() - start, 1)}
        if args.json:
            print(json.dumps(result))
            return
        print(f"{args.checkpoint} on {args.drawings}, through the app's preprocessing")
        for group in ("by_family", "by_style") if args.styles else ("by_family",):
            print(f"\n{group[3:]:<20}{'n':>7}{'accuracy':>10}")
            for name, r in res[group].items():
                print(f"{name:<20}{r['n']:>7}{r['acc']:>10.2%}")
        print(f"\n{'all':<20}{res['all']['n']:>7}{res['all']['acc']:>10.2%}")
        if not args.styles and len(res["by_style"]) > 1:
            worst = sorted(res["by_style"].items(), key=lambda kv: kv[1]["acc"])[:3]
            print(f"{len(res['by_style'])} styles; the weakest: "
                  + ", ".join(f"{name} {r['acc']:.1%} (n={r['n']})" for name, r in worst) + " (--styles: all)")
        return
    x, y = data.load(settings.home, "test", log=lambda m: print(m, file=sys.stderr))
    x, y = x[:args.n], y[:args.n]
    result = {"checkpoint": str(args.checkpoint), "net": cfg["net"], "n": len(x), "attack": args.attack,
              "norm": args.norm, "eps": args.eps, "clean_acc": evaluate.accuracy(model, x, y)}
    start = time.perf_counter()
    if args.attack == "pgd":
        alpha = args.alpha if args.alpha is not None else 2.5 * args.eps / args.steps
        result.update(steps=args.steps, alpha=alpha, restarts=args.restarts)
        result["robust_acc"] = evaluate.robust_accuracy(
            model, x, y, args.eps, args.steps, alpha, args.restarts, args.norm,
            progress=None if args.json else lambda i, n: print(f"\r{i}/{n}", end="", file=sys.stderr))
    else:
        attacks = [a for a in args.aa_attacks.split(",") if a] if args.aa_attacks else None
        aa = evaluate.autoattack(model, x, y, args.eps, "Linf" if args.norm == "linf" else "L2", attacks)
        result.update(robust_acc=aa["robust_acc"], attacks=aa["attacks"], after=aa["after"],
                      version="standard" if attacks is None else "custom")
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(result))
    else:
        print(file=sys.stderr)
        for k, v in result.items():
            print(f"{k:>11}: {v:.4f}" if isinstance(v, float) else f"{k:>11}: {v}")


def cmd_export(args, settings):
    from .campaign.export import export_dataset

    counts = export_dataset(settings.home, args.out)
    print(f"exported {sum(counts.values())} flagged examples to {args.out} "
          f"(train {counts['train']}, validation {counts['validation']}; parquet, loads with datasets.load_dataset)")


def cmd_import(args, settings):
    """Drawings (PNGs + labels.csv) or another campaign's parquet export into this home's store,
    refused while an app serves the home; last stdout line JSON (see dadc/campaign/importer.py)."""
    from .campaign.importer import run

    print(json.dumps(run(args.source, settings.home, max_flags=settings.max_flags)))


def cmd_migrate(args, settings):
    """Rewrite DADC_DATASET_REPO from the earlier layout (two files a flag) into parquet shards, in
    one commit (dadc/hub/migrate.py); downloads go to a scratch folder under DADC_HOME."""
    import shutil
    import tempfile
    from pathlib import Path

    from huggingface_hub import HfApi

    from .hub.migrate import migrate

    if not settings.hub_enabled:
        raise ValueError("migrate needs HF_TOKEN and DADC_DATASET_REPO (the dataset repo to rewrite)")
    settings.home.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="migrate-", dir=settings.home)
    try:
        done = migrate(HfApi(token=settings.hf_token), settings.dataset_repo, Path(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not done["replicas"]:
        print(f"nothing to migrate: {settings.dataset_repo} has no folders of the earlier layout")
        return
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(done["skipped"].items())) or "none"
    print(f"migrated {settings.dataset_repo} in one commit: {done['replicas']} replica folders, "
          f"{done['flags']} flags and {done['votes']} votes into {done['shards']} parquet shards; "
          f"{done['deleted']} files of the earlier layout deleted; bad rows left out: {skipped}")


def cmd_rollback(args, settings):
    """With a model repo (HF_TOKEN, DADC_MODEL_REPO): its CURRENT, which every following replica
    serves within DADC_FOLLOW_EVERY. Else this home's: a running app keeps its model until it
    restarts (roll back from its dashboard to switch at once)."""
    if settings.hf_token and settings.model_repo:
        import tempfile

        from huggingface_hub import HfApi

        from .hub import model_repo

        with tempfile.TemporaryDirectory(dir=settings.home if settings.home.is_dir() else None) as tmp:
            model_repo.rollback(HfApi(token=settings.hf_token), settings.model_repo, args.round,
                                "python -m dadc rollback", tmp)
        print(f"{settings.model_repo}: rounds/CURRENT now names {args.round}: replicas that follow it "
              f"(DADC_TRAINER=remote) serve it within DADC_FOLLOW_EVERY seconds")
        return
    from .rounds.registry import Registry

    registry = Registry(settings.home)
    registry.rollback(args.round, why="python -m dadc rollback")
    print(f"{registry.root / 'CURRENT'} now names {args.round}: the app serves it from its next start")


def cmd_trainer(args, settings):
    """The trainer role (hub/trainer.py): rounds from every replica's flags, promoted on the model
    repo. --once: one pass, its summary as the last stdout line (JSON); else a pass every --every s."""
    if args.device == "cpu":
        config.hide_gpus()  # before torch first looks for a GPU
    from .hub.trainer import Trainer

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no GPU here")
    progress = RoundProgress()
    trainer = Trainer(settings, on_stage=progress, log=progress.write)
    while True:
        try:
            print(json.dumps(trainer.once(force=args.force)), flush=True)
        except Exception as e:
            if args.once:
                raise
            print(f"error: the pass failed, trying again in {args.every:g} s: {e}", file=sys.stderr)
        finally:
            progress.close()
        if args.once:
            return
        time.sleep(args.every)


class RoundProgress:
    """A round's stages on stderr: "loading data", then a tqdm bar of the training steps done/total
    (as the trainer reports them), whose label turns to the gate's stage while both rounds are measured."""

    def __init__(self):
        self.bar = None

    def __call__(self, status):
        from tqdm.auto import tqdm

        if self.bar is None and status.stage != "training":
            print(f"{status.stage} ...", file=sys.stderr)
            return
        if self.bar is None:
            self.bar = tqdm(desc="training", total=status.total or None, unit="step", file=sys.stderr)
        elif status.stage == "training":
            if status.total:
                self.bar.total = status.total
            self.bar.n = status.done
            self.bar.refresh()
        else:
            self.bar.set_description_str(status.stage)

    def write(self, message):
        print(message, file=sys.stderr) if self.bar is None else self.bar.write(message, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None  # the trainer's next pass starts a new bar


def cmd_retrain(args, settings):
    """One round now, in the foreground, on every eligible flagged example whatever the threshold:
    the app's round (same RoundConfig, gate and history entry), under the home's train lock. The
    gate's verdict is a result (exit 0 either way); bad input is an error (exit 1)."""
    from .model import mnist as data
    from . import files
    from .examples import eligible
    from .rounds.registry import Predictor, Registry
    from .rounds.retrain import TRAIN_LOCK, RetrainJob
    from .store import FlagStore

    home = settings.home
    if home.exists() and not home.is_dir():
        raise ValueError(f"DADC_HOME {home} is not a directory")
    cfg = config.RoundConfig.from_env()
    lock = home / "rounds" / TRAIN_LOCK
    with ExitStack() as stack:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            held = stack.enter_context(files.try_locked(lock))
        except OSError as e:
            raise ValueError(f"cannot use DADC_HOME {home}: {e.strerror or e}") from None
        if held is None:
            raise RuntimeError(f"a round is already training on this home (lock {lock})")
        registry = Registry(home)
        store = FlagStore(home)
        predictor = Predictor(registry)
        flagged = store.examples()
        usable = eligible(flagged, cfg)
        train_n = sum(not e.held_out for e in usable)
        left_out = f"; {len(flagged) - len(usable)} flagged but not eligible" if len(flagged) > len(usable) else ""
        if train_n == 0:  # a round on MNIST alone learns nothing from people: run none (as `train --human`)
            why = (f"all {len(usable)} eligible are held out for the gate" if usable else
                   f"none of the {len(flagged)} flagged is eligible"
                   + (" (DADC_VERIFIED_ONLY: verified ones only)" if cfg.verified_only else "") if flagged else
                   f"nothing flagged under {home}")
            raise ValueError(f"no human examples to train on ({why}): no round run, {predictor.round} still serves")
        print(f"retraining {predictor.round} on {train_n} human examples ({len(usable) - train_n} held out "
              f"for the gate{left_out}) and {cfg.mnist_n} MNIST examples", file=sys.stderr)
        progress = RoundProgress()
        job = RetrainJob(registry, predictor, store, settings.threshold, cfg, on_stage=progress,
                         mnist=lambda: data.fetch(home, log=progress.write))
        try:
            entry = job.run_round(len(usable))  # claimed: a running app does not start a round on these again
        finally:
            progress.close()
    if entry["passed"]:
        print(f"promoted {entry['round']} (rounds/CURRENT names it). An app already running on this home "
              f"keeps serving {entry['base']} until it restarts", file=sys.stderr)
    else:
        print("rejected by the gate: " + "; ".join(entry["reasons"]) + f". Still serving {entry['base']}.",
              file=sys.stderr)
    print(json.dumps({"round": entry.get("round"), "passed": entry["passed"], "reasons": entry["reasons"],
                      "seconds": entry["seconds"], "serving": registry.current()}))


def cmd_simulate(args, settings):
    """python -m dadc simulate --drawings DIR --rounds R [--threshold T] [--make-drawings N] (campaign/simulate.py)."""
    from .campaign import simulate
    from .rounds.registry import ROUND0
    from .synth import drawings

    if args.make_drawings:
        if args.mnist_canvases:
            simulate.make_drawings(args.drawings, args.make_drawings, settings.home, seed=args.seed)
            what = f"{args.make_drawings} MNIST test digits on canvases"
        elif args.generator == "pen":  # the second generator, kept out of all tuning
            from .synth import pen

            pen.make(args.drawings, args.make_drawings, seed=args.seed)
            what = f"{args.make_drawings} pen-model drawings in all (seed {args.seed})"
        else:
            families = args.families.split(",") if args.families else None
            if args.total:
                if [f for f in families or () if f not in drawings.FAMILIES]:
                    drawings.make(args.drawings, 0, families=families)  # its error names the unknown ones
                simulate.make_total(args.drawings, args.make_drawings, args.seed, families)
            else:
                drawings.make(args.drawings, args.make_drawings, seed=args.seed, families=families)
            what = (f"{args.make_drawings} drawings {'in all' if args.total else 'per family'} "
                    f"({', '.join(families or drawings.FAMILIES)}; seed {args.seed})")
        print(f"wrote {what} and labels.csv to {args.drawings}", file=sys.stderr)
        if not args.rounds:
            return
    if args.rounds < 1:
        raise ValueError("--rounds must be >= 1")
    threshold = args.threshold or settings.threshold
    if args.fresh_max < 0:
        raise ValueError("--fresh-max must be >= 0")
    home = campaign_home(args.home, settings.home)
    print(f"the campaign's flags and rounds go to {home} (DADC_HOME {settings.home} is only read, for MNIST)",
          file=sys.stderr)
    result = simulate.simulate(args.drawings, args.rounds, home, threshold, args.seed_round or ROUND0,
                               seed=args.seed, log=lambda m: print(m, file=sys.stderr), fresh_max=args.fresh_max,
                               mnist_home=settings.home)
    print(simulate.summary(result), file=sys.stderr)
    print(json.dumps({**result, "home": str(home)}))


def campaign_home(given, app_home):
    """simulate's own home, held (app.lock) for the run: `given` if it is new or empty, else a new
    folder under DADC_HOME/simulations. Never an app's home: a campaign's flags and rounds would
    mix with the visitors' and change what the app serves."""
    from pathlib import Path

    from . import files

    if given is None:
        home = Path(app_home) / "simulations" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        home = next(h for h in (Path(f"{home}{'-' + str(i) if i else ''}") for i in range(1000)) if not h.exists())
    else:
        home = Path(given)
        if home.resolve() == Path(app_home).resolve():
            raise ValueError(f"--home {home} is DADC_HOME, an app's home: give simulate a new or empty folder")
        if home.exists() and (not home.is_dir() or any(home.iterdir())):
            raise ValueError(f"--home {home} is not an empty folder: simulate needs a home of its own, "
                             f"new or empty, so that it never writes into an app's flags or rounds")
    home.mkdir(parents=True, exist_ok=True)
    try:
        files.hold_app(home)  # no app starts on the campaign's home while it runs
    except files.Busy:
        raise ValueError(f"--home {home} is in use by another process") from None
    return home


def simulate_arguments(p):
    """`simulate`'s flags."""
    from .campaign.simulate import FRESH_MAX

    p.add_argument("--drawings", required=True, help="folder of PNG canvases with labels.csv (file,label)")
    p.add_argument("--rounds", type=int, default=0, help="rounds to run")
    p.add_argument("--threshold", type=int, default=None, help="flags per round (default DADC_THRESHOLD)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the drawings made, of the split into flagged / unseen halves and of fresh drawings")
    p.add_argument("--seed-round", default=None, help="round-0 checkpoint dir (default models/round-000)")
    p.add_argument("--home", default=None,
                   help="the campaign's own home (its flags and rounds): a new or empty folder, never an app's "
                        "DADC_HOME (refused); default a new folder DADC_HOME/simulations/<UTC time>. DADC_HOME "
                        "is only read, for its MNIST cache")
    p.add_argument("--make-drawings", type=int, default=0, metavar="N",
                   help="first write N style-varied mouse-like drawings per family (dadc.synth.drawings) into --drawings")
    p.add_argument("--total", action="store_true",
                   help="with --make-drawings: N drawings in all, spread evenly over the families")
    p.add_argument("--families", default=None, help="with --make-drawings: comma-separated families (default all)")
    p.add_argument("--fresh-max", type=int, default=FRESH_MAX, metavar="M",
                   help="when the pool holds fewer than --threshold drawings that fool the serving round, the "
                        "simulated people draw up to M fresh ones a round from the campaign's families "
                        f"(drawings.make campaigns only; default {FRESH_MAX}; 0: stop when the pool runs dry)")
    p.add_argument("--mnist-canvases", action="store_true",
                   help="with --make-drawings: N MNIST test digits pasted on canvases instead")
    p.add_argument("--generator", choices=("drawings", "pen"), default="drawings",
                   help="with --make-drawings: dadc.synth.drawings (default), or dadc.synth.pen: N pen-model "
                        "drawings in all, a generator kept out of all tuning (docs/SIMULATE.md)")

    p.set_defaults(run=cmd_simulate)


def parser():
    p = argparse.ArgumentParser(prog="python -m dadc", description="DADC studio: MNIST data, training, evaluation.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("data", help="fetch and verify MNIST into DADC_HOME/mnist").set_defaults(run=cmd_data)
    train_arguments(sub.add_parser(
        "train", help="train a net (PGD adversarial training by default); writes a checkpoint dir"))
    eval_arguments(sub.add_parser("eval", help="clean and robust accuracy of a checkpoint on the MNIST test set"))

    x = sub.add_parser("export", help="write the flagged examples as a parquet dataset (train/validation)")
    x.add_argument("out", help="folder to write (must not exist, or be empty)")
    x.set_defaults(run=cmd_export)

    i = sub.add_parser("import", help="add drawings (PNGs + labels.csv) or a parquet export of another campaign "
                                      "to the flagged examples (duplicates and bad rows skipped)")
    i.add_argument("source", help="a folder with labels.csv (file,label), or an export folder / .parquet file")
    i.set_defaults(run=cmd_import)

    simulate_arguments(sub.add_parser("simulate", help="headless DADC rounds on drawings (PNGs + labels.csv)"))

    sub.add_parser("migrate", help="rewrite DADC_DATASET_REPO from the earlier layout (images as files) into "
                                   "parquet shards, in one commit").set_defaults(run=cmd_migrate)

    r = sub.add_parser("rollback", help="serve an earlier round (from the app's next start)")
    r.add_argument("round", help="e.g. round-002")
    r.set_defaults(run=cmd_rollback)

    sub.add_parser("retrain", help="one retraining round now, in the foreground, on the flagged examples "
                                   "(DADC_ROUND_* settings; recorded in the history)").set_defaults(run=cmd_retrain)

    t = sub.add_parser("trainer", help="train rounds from every replica's flags (DADC_DATASET_REPO) and promote "
                                       "them on DADC_MODEL_REPO, apart from serving (see README: Scaling out)")
    t.add_argument("--once", action="store_true", help="one pass (pull, train if DADC_THRESHOLD new, push), then exit")
    t.add_argument("--force", action="store_true", help="train even under the threshold")
    t.add_argument("--every", type=float, default=60.0, help="seconds between passes without --once (default 60)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default: a GPU when torch sees one)")
    t.set_defaults(run=cmd_trainer)
    return p


# what a train flag's help says beyond its default
TRAIN_NOTES = {"batch_size": "; per process: under torchrun with K processes the global batch is K times it",
               "device": "; cuda under torchrun: each process its own GPU, cuda:LOCAL_RANK"}


def train_arguments(t):
    """`train`'s flags: one per TrainConfig field, then the run's own (recipe.TRAIN_OPTIONS and more)."""
    from .model.training import RECIPES, TrainConfig

    # every default is None here: "not given", so that a --recipe's value applies (see recipe.train_settings)
    for f in fields(TrainConfig):
        kind = f.type if f.type in (int, float, str, bool) else float  # `float | None` -> float
        if kind is bool:
            t.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"default {f.default}")
        else:
            t.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None,
                           help=f"default {f.default}" + TRAIN_NOTES.get(f.name, ""))
    t.add_argument("--recipe", choices=sorted(RECIPES), help="a named recipe (dadc.model.training.RECIPES); "
                                                              "flags given on the command line win over it")
    t.add_argument("--human", action="store_true", help="mix in the flagged human examples under DADC_HOME")
    t.add_argument("--init", help="start from this checkpoint (fine-tuning) instead of random weights")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--val-n", type=int, help="hold out MNIST train's last N (the gate's slice) and keep the epoch "
                                             "with the best PGD-10 accuracy on it (default 0: off)")
    t.add_argument("--val-robust-n", type=int, help="examples of that slice attacked each epoch (default 1000)")
    t.add_argument("--eval-n", type=int, help="test examples for the metrics written with it (default 10000)")
    t.add_argument("--eval-eps", type=float, help="default 0.3")
    t.add_argument("--eval-steps", type=int, help="default 40")
    t.add_argument("--eval-alpha", type=float, help="default 0.01")
    t.add_argument("--eval-aa-n", type=int, help="AutoAttack on the first N test examples (default 0: off)")
    t.add_argument("--eval-aa-attacks", help="AutoAttack's attacks (default apgd-ce,apgd-t; empty: standard)")
    t.add_argument("--eval-drawings-n", type=int, help="measure N generated drawings per family (default 0: off)")
    t.add_argument("--eval-drawings-seed", type=int, help="their seed (default 4242; training never draws it)")
    t.set_defaults(run=cmd_train)


def eval_arguments(e):
    """`eval`'s flags: the checkpoint, the attack and its budget, or a folder of drawings instead."""
    e.add_argument("--checkpoint", required=True, help="a checkpoint directory (model.safetensors, config.json)")
    e.add_argument("--n", type=int, default=10000, help="the first N MNIST test examples (default 10000: all)")
    e.add_argument("--attack", choices=["pgd", "autoattack"], default="pgd", help="default pgd")
    e.add_argument("--norm", choices=["linf", "l2"], default="linf", help="default linf")
    e.add_argument("--eps", type=float, default=0.3, help="the attack's budget (default 0.3)")
    e.add_argument("--steps", type=int, default=40, help="PGD steps (default 40)")
    e.add_argument("--alpha", type=float, default=None, help="PGD step size (default 2.5 * eps / steps)")
    e.add_argument("--restarts", type=int, default=1, help="PGD restarts; per example the one that fools "
                                                           "the model counts (default 1)")
    e.add_argument("--aa-attacks", help="AutoAttack's attacks, e.g. apgd-ce,apgd-t (default: the standard "
                                        "version: apgd-ce,apgd-t,fab-t,square)")
    e.add_argument("--drawings", help="instead of MNIST: a folder of canvases with labels.csv (file,label"
                                      "[,family,style]), read through the app's preprocessing")
    e.add_argument("--styles", action="store_true", help="with --drawings: a line per style too (default: "
                                                          "per family, then the three weakest styles)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(run=cmd_eval)


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        settings = config.from_env()
        config.keep_state_in_home(settings)
        args.run(args, settings)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # one clear line, not a traceback wall; DADC_DEBUG=1 shows the traceback
        if config.debug():
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
