"""The ``autoprune`` command line (typer). Nothing imports this module."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from autoprune.errors import AutopruneError

__all__ = ["Device", "Runs", "Threads", "apply_cmd", "bench", "export", "front", "main", "search", "sensitivity",
           "sync", "ui"]

app = typer.Typer(
    name="autoprune", no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
    help="Find how much to prune each layer of a PyTorch model.\n\n"
         "Typical session:\n\n"
         "  [bold]autoprune search search_spaces/digits_cnn.yaml[/bold]   (Optuna study + MLflow runs in runs/)\n\n"
         "  [bold]autoprune front --study digits_cnn[/bold]   (the Pareto table again)\n\n"
         "  [bold]autoprune export --study digits_cnn --min-accuracy 0.9 -o policy.json[/bold]\n\n"
         "  [bold]autoprune apply policy.json --space search_spaces/digits_cnn.yaml -o pruned.pt[/bold]\n\n"
         "  [bold]autoprune ui --study digits_cnn[/bold]   (MLflow UI on runs/)",
)

Runs = Annotated[Path, typer.Option("--runs", help="Folder for the study journal, MLflow store and caches.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1 …")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, help="torch threads per process (default: 1 for a "
                                             "model under 5 M parameters, whose ops are too short to split; else "
                                             "the cores shared by the workers).")]


@app.command()
def search(
    space: Annotated[Path, typer.Argument(help="Search space YAML (see search_spaces/template.yaml).")],
    trials: Annotated[int | None, typer.Option("--trials", "-n", min=1, help="Trials to add (default: the YAML's).")
                      ] = None,
    timeout: Annotated[float | None, typer.Option(min=0.0, help="Stop starting new trials after this many seconds.")
                       ] = None,
    max_epochs: Annotated[float | None, typer.Option(
        "--max-epochs", min=0.0, help="Compute budget: stop starting trials once the study has spent this many "
        "fine-tune epochs (every ladder rung of every trial, earlier runs of the study included; the last trial may "
        "overshoot by its own epochs). With it, --trials is only a cap.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default runs/optuna.journal), e.g. "
                                                "postgresql+psycopg://user@127.0.0.1:5432/db")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: the YAML's name); same = resume.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes sharing the study storage.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed for sampler and fine-tune (default: the YAML's).")] = None,
    sampler: Annotated[str | None, typer.Option(
        help="tpe | nsga2 | random | gp | rl | evolution (default: the YAML's).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI",
                                                     help="MLflow server (default sqlite under runs/).")] = None,
    no_track: Annotated[bool, typer.Option("--no-track", metavar="", help="Do not log to MLflow.")] = False,
    device: Device = "auto",
    threads: Threads = None,
    runs: Runs = Path("runs"),
) -> None:
    """Search per-layer sparsity and schedules; rerun the same command to add trials to the same study."""
    from autoprune.api import search as run
    from autoprune.cli.console import SIZE_CAPTION, RichProgress, out, table

    try:
        result = run(space, n_trials=trials, timeout=timeout, max_epochs=max_epochs, storage=storage, study=study,
                     workers=workers, seed=seed, sampler=sampler, device=device, runs_dir=runs,
                     tracking_uri=tracking_uri, track=not no_track, progress=RichProgress(), threads=threads)
    except KeyboardInterrupt as stop:
        raise typer.Exit(_interrupted(stop)) from None
    metric = result.primary
    out.print(table(f"Pareto front of study '{result.study_name}' (dense val {metric} "
                    f"{result.dense_val[metric]:.4f}, test {result.dense_test[metric]:.4f})", result.front,
                    caption=SIZE_CAPTION))
    s = result.summary
    if s["stopped_on_rung"]:
        rungs = ", ".join(f"{n} on rung {r}" for r, n in s["stopped_on_rung"].items())
        out.print(f"{s['trials']} trials in the study: {s['complete']} reached the production fine-tune (the front "
                  f"uses only those), {s['pruned']} stopped lower ({rungs}), {s['failed']} failed; "
                  f"{s['finetune_epochs']:.0f} fine-tune epochs in all; this run took {s['wall_s']:.1f}s.")
    else:
        out.print(f"{s['trials']} trials in the study ({s['complete']} complete, {s['pruned']} stopped early saving "
                  f"{s['early_stop_saved_s']:.1f}s, {s['failed']} failed); this run took {s['wall_s']:.1f}s, "
                  f"{s['mean_eval_s']:.3f}s per evaluation.")
    if max_epochs is not None and s["finetune_epochs"] >= max_epochs - 1e-9:
        out.print(f"the --max-epochs budget ({max_epochs:g} fine-tune epochs) is spent: rerunning adds no trials; "
                  "raise it to search on.")
    if s["fail_reasons"]:
        out.print(f"failed trials' reasons: {'; '.join(s['fail_reasons'][:3])}")
    if s.get("trials_here"):
        out.print(f"search machinery (sampling, projection, storage, tracking hand-over, progress): "
                  f"{s['overhead_s_per_trial'] * 1e3:.1f} ms per trial = {s['overhead_share_of_eval']:.1%} of the "
                  f"evaluation time.")


@app.command()
def sensitivity(
    space: Annotated[Path, typer.Argument(help="Search space YAML.")],
    device: Device = "auto",
    runs: Runs = Path("runs"),
) -> None:
    """Per-layer accuracy-vs-ratio curves (one layer pruned at a time, no fine-tune); cached, CSV + PNG."""
    from autoprune.api import load_space
    from autoprune.cli.console import RichProgress, out, table
    from autoprune.pruning.sensitivity import load_or_scan
    from autoprune.workspace import load_workspace

    sp = load_space(space)
    ws = load_workspace(sp, device, runs)
    bar = RichProgress()
    bar.start(len(ws.layers) * len(sp.sensitivity.ratios), "sensitivity")
    try:
        curves, path, hit = load_or_scan(runs / "sensitivity", ws.model, ws.splits, ws.layers, sp.sensitivity.ratios,
                                         sp.criteria[0], sp.granularity, sp.sensitivity.bn_batches, bar.advance,
                                         task=ws.task)
    finally:
        bar.stop()
    rows = [{"layer": f, "weights": ws.sizes[f], "tolerated@2pt": curves.tolerated_ratio(f),
             **{f"{r:g}": a for r, a in zip(curves.ratios, accs, strict=True)}} for f, accs in curves.scores.items()]
    out.print(table(f"Validation {curves.metric} with one layer pruned (dense {curves.dense_score:.4f})", rows))
    out.print(f"{'cached: ' if hit else ''}{path.with_suffix('.csv')}\n{path.with_suffix('.png')}")


@app.command()
def front(
    study: Annotated[str, typer.Option(help="Study name (the space's name unless --study was given to search).")],
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default runs/optuna.journal).")] = None,
    runs: Runs = Path("runs"),
) -> None:
    """Print the Pareto table of an existing study."""
    from autoprune.cli.console import SIZE_CAPTION, out, table
    from autoprune.study import front_table

    rows = front_table(study, storage, runs)
    out.print(table(f"Pareto front of study '{study}'", rows, caption=SIZE_CAPTION))


@app.command()
def export(
    study: Annotated[str, typer.Option(help="Study name.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the policy JSON.")] = Path("policy.json"),
    trial: Annotated[int | None, typer.Option(help="Export this trial number.")] = None,
    max_size: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Most accurate front point with size ≤ "
                                                   "this (fraction of the dense model's size metric, 0–1).")] = None,
    min_accuracy: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Smallest front point with "
                                                       "validation accuracy ≥ this (0–1).")] = None,
    min_metric: Annotated[float | None, typer.Option(help="Smallest front point whose validation primary metric "
                                                     "is ≥ this (tasks that maximize it, e.g. accuracy).")] = None,
    max_metric: Annotated[float | None, typer.Option(help="Smallest front point whose validation primary metric "
                                                     "is ≤ this (tasks that minimize it, e.g. regression's MSE)."
                                                     )] = None,
    knee: Annotated[bool, typer.Option("--knee", metavar="", help="The front's knee (best trade-off).")] = False,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default runs/optuna.journal).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI")] = None,
    runs: Runs = Path("runs"),
) -> None:
    """Pick a point on the Pareto front by its validation metric and write its versioned policy (test only
    reported)."""
    from autoprune.api import export as do_export
    from autoprune.cli.console import out as console

    pol = do_export(study, out, trial=trial, max_size=max_size, min_accuracy=min_accuracy, knee=knee,
                    storage=storage, runs_dir=runs, tracking_uri=tracking_uri, min_metric=min_metric,
                    max_metric=max_metric)
    exp = ", ".join(f"{k} {v:.4f}" for k, v in pol.expected.items())
    console.print(f"wrote {out}: trial {pol.provenance['trial']} of '{study}' ({exp})")


@app.command(name="apply")
def apply_cmd(
    policy: Annotated[Path, typer.Argument(help="Policy JSON from `autoprune export`.")],
    space: Annotated[Path | None, typer.Option(help="Space YAML naming the model, checkpoint and data.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name or module:callable (instead of --space).")] = None,
    data: Annotated[str | None, typer.Option(help="Dataset name/file/callable (instead of --space).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Dense state_dict for --model.")] = None,
    finetune_epochs: Annotated[float | None, typer.Option(min=0.0, help="Fine-tune epochs (default: the policy's).")
                               ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Pruned model file.")] = Path("pruned.pt"),
    onnx: Annotated[Path | None, typer.Option(help="Also export ONNX here.")] = None,
    torchscript: Annotated[Path | None, typer.Option(help="Also export TorchScript here.")] = None,
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic quantization after pruning.")] = None,
    hf_folder: Annotated[Path | None, typer.Option(help="Language models: also save a Hugging Face folder here "
                                                   "(save_pretrained, safetensors; transformers loads it).")] = None,
    criterion: Annotated[str | None, typer.Option(help="Prune with this criterion instead of the policy's, at the "
                                                  "policy's ratios (e.g. sparsegpt for ratios searched with Wanda's "
                                                  "level database).")] = None,
    calibration: Annotated[str | None, typer.Option(help="SparseGPT's calibration inputs: dense (every layer sees "
                                                    "the dense model's, the search's database) or sequential (each "
                                                    "block sees the already-pruned blocks' outputs, the paper's).")
                           ] = None,
    no_track: Annotated[bool, typer.Option("--no-track", metavar="", help="Do not log the model to MLflow (by "
                                           "default it goes to the study's parent run).")] = False,
    register: Annotated[str | None, typer.Option(help="Also register the model in MLflow's registry under this "
                                                 "name, alias @pruned on the new version.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI")] = None,
    device: Device = "auto",
    threads: Threads = None,
    runs: Runs = Path("runs"),
) -> None:
    """Prune the real model with a policy: fine-tune, make permanent, shrink, save; before/after table."""
    from autoprune.cli.apply import run_apply
    from autoprune.deploy.apply import ApplyOptions

    run_apply(policy, ApplyOptions(space=space, model=model, data=data, checkpoint=checkpoint,
                                   finetune_epochs=finetune_epochs, out=out, onnx=onnx, torchscript=torchscript,
                                   quantize=quantize, hf_folder=hf_folder, criterion=criterion,
                                   calibration=calibration, device=device,
                                   runs=runs, threads=threads, track=not no_track, register=register,
                                   tracking_uri=tracking_uri))


@app.command()
def sync(
    study: Annotated[str, typer.Option(help="Study name.")],
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default runs/optuna.journal).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI")] = None,
    runs: Runs = Path("runs"),
) -> None:
    """Backfill MLflow from the Optuna study (e.g. after the tracking server was down)."""
    from autoprune.api import sync as do_sync
    from autoprune.cli.console import out as console

    added = do_sync(study, storage=storage, runs_dir=runs, tracking_uri=tracking_uri)
    console.print(f"MLflow is in sync with study '{study}' ({added} child runs added)")


@app.command()
def ui(
    study: Annotated[str | None, typer.Option(help="Print where this study's front is: its run page (plot and "
                                                "table), its runs table, the Pareto PNG.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")] = None,
    runs: Runs = Path("runs"),
) -> None:
    """Serve the MLflow UI on runs/ and print where the study's front is; Ctrl-C stops it and its workers."""
    import signal
    import time

    from autoprune.cli.console import out as console
    from autoprune.tracking.logger import default_tracking_uri
    from autoprune.tracking.records import study_urls
    from autoprune.tracking.ui import start_server, stop_server, wait_ready

    proc = start_server(default_tracking_uri(runs), runs / "artifacts", host, port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` ends the server group on a kill too
    try:
        if not wait_ready(host, port, proc):
            raise AutopruneError(f"mlflow ui did not start on {host}:{port} (port in use?)")
        urls = study_urls(None, runs, study, host, port)
        console.print(f"MLflow UI: {urls['landing']}", soft_wrap=True)  # the front, with no further click
        for key, label in (("run", "front table and search settings (run page)"), ("plot", "Pareto plot (PNG)"),
                           ("runs", "all trials (runs table)")):
            if key in urls:
                console.print(f"{label}: {urls[key]}", soft_wrap=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while proc.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
    finally:
        stop_server(proc)


@app.command()
def bench(
    space: Annotated[list[Path] | None, typer.Option(help="Space YAML(s) to benchmark (repeatable).")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds (dense model, fine-tune, sampler).")] = 3,
    trials: Annotated[int, typer.Option(min=1, help="Trial budget of each search method.")] = 200,
    sparsities: Annotated[str, typer.Option(help="Comma-separated global sparsity levels.")] = "0.8,0.9,0.95,0.97,0.98",
    quick: Annotated[bool, typer.Option("--quick", metavar="",
                                        help="CI smoke: 1 seed, 12 trials, 2 levels.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default runs/bench/<time>).")] = None,
    latency: Annotated[bool, typer.Option("--latency", metavar="",
                                          help="Only time channel-pruned ResNet-20 vs dense.")] = False,
    channel_ratio: Annotated[float, typer.Option(help="--latency: channel ratio per conv layer.")] = 0.3,
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods (default: all but tpe_naive, "
                                                "autoprune_tpe, autoprune_evo, owl, alpha, random_search, "
                                                "erk_tuned, global_tuned, *_seq): uniform, global, lamp, erk, "
                                                "sensitivity, owl, alpha, random, agp_uniform, lamp_cubic3, "
                                                "lamp_tuned, erk_tuned, global_tuned (recipe grid-searched on "
                                                "validation, cut to the search's fine-tune epochs), tpe_naive, "
                                                "autoprune (the space's sampler), autoprune_rl, autoprune_tpe, "
                                                "autoprune_evo, random_search (random candidates, same ladder); "
                                                "uniform_seq, owl_seq, alpha_seq (SparseGPT, sequential "
                                                "calibration), autoprune_seq (the search's answer re-pruned "
                                                "so).")] = None,
    final_epochs: Annotated[float | None, typer.Option(help="Production fine-tune epochs (the ladder's last rung; "
                                                       "every method is scored after it). Default: the space's.")
                            ] = None,
    rank_correlation: Annotated[int | None, typer.Option(
        help="Instead: run N candidates per target through every rung and print the Spearman rank correlation "
             "of each rung's scores (and proxies: losses, divergence to dense) with the production score.")] = None,
    criterion: Annotated[str | None, typer.Option(
        help="Prune with this criterion (e.g. sparsegpt) instead of the space's first; the space's other criteria "
             "stay (Wanda for OWL's outliers and the level database).")] = None,
    max_epochs: Annotated[str | None, typer.Option(
        "--max-epochs", help="Each search's compute budget in fine-tune epochs (all rungs), or 'grid': what a tuned "
        "heuristic's whole recipe grid costs over the levels, so the search and the *_tuned rows spend equal "
        "compute. --trials stays a cap.")] = None,
    incumbents: Annotated[bool, typer.Option(
        "--incumbents", help="Also re-score on test every candidate that became the search's best on validation "
        "(and the uniform baseline): do its later validation gains carry to test? (incumbents-<space>.csv)")
                          ] = False,
    threads: Threads = None,
) -> None:
    """Search (TPE and RL controller) vs heuristics, every method scored after the production fine-tune.

    Heuristics (uniform / global / LAMP / ERK / sensitivity / random / AGP / LAMP iterative) use the space's
    default recipe (the first choice of each list) at the production epochs; searches run the space's ladder.
    """
    if latency:
        from autoprune.bench.latency import channel_speedup
        from autoprune.cli.console import out as con
        from autoprune.cli.console import table as tab

        con.print(tab(f"ResNet-20 (CIFAR size, 3×32×32), {channel_ratio:.0%} of channels removed per conv, CPU",
                      channel_speedup(channel_ratio)))
        return
    from autoprune.cli.bench import BenchOptions, run_bench

    run_bench(space or [Path("search_spaces/digits_cnn.yaml")], BenchOptions(
        seeds=seeds, trials=trials, sparsities=sparsities, quick=quick, out_dir=out_dir, methods=methods,
        final_epochs=final_epochs, rank_correlation=rank_correlation, criterion=criterion, max_epochs=max_epochs,
        threads=threads, incumbents=incumbents))


def _interrupted(stop: KeyboardInterrupt) -> int:
    """Say in one line that the command stopped and what was kept; the exit code of Ctrl-C (130) or SIGTERM (143)."""
    from autoprune.processes import Terminated

    word, rc = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
    print(f"{word}: finished trials are kept in the study; rerun the same command to resume", file=sys.stderr)
    return rc


def main() -> None:
    """Console entry point: user errors (bad flags included) become one line on stderr and exit code 2.
    Ctrl-C and SIGTERM end the command the same way: the running trial is marked interrupted, helpers end."""
    from autoprune.processes import interrupt_on_sigterm

    interrupt_on_sigterm()
    try:
        rc = app(standalone_mode=False)  # parse errors are raised to here, not printed as a usage box
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(_interrupted(KeyboardInterrupt()))
    except typer.TyperException as err:  # a bad flag or value: one line naming the command and the option
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(0)
        message = err.format_message() if hasattr(err, "format_message") else str(err)  # names the option
        where = f"{ctx.command_path}: " if ctx is not None else ""
        print(f"error: {where}{' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
    except AutopruneError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        sys.exit(_interrupted(stop))
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
