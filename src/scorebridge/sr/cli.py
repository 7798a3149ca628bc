"""CLI of the super-resolution stage (see scorebridge.cli), called by workflow/rules/sr.smk.

sr-train     train the score-based prior (scorebridge.sr.train) -> checkpoint.pt
sr-sample    posterior ensembles of the held-out times (scorebridge.sr.sample) -> samples.zarr
sr-evaluate  scores, figures (scorebridge.sr.evaluate) -> metrics.json, figures/

Each command turns its `--spec` into typed options once, here
(`scorebridge.sr.options.resolve_spec`), and runs inside the job's MLflow run
(`tracking.job_run`: tracked with `--experiments`, else untracked).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os

__all__ = ["train_cli", "sample_cli", "evaluate_cli"]

log = logging.getLogger(__name__)


def _experiment(args):
    """The `--spec` entry as typed options (errors name `sr.<experiment>.<key>`)."""
    from ..config import parse_spec
    from .options import resolve_spec

    return resolve_spec(parse_spec(args.spec), where=f"sr.{args.experiment}")


def _job(args, rule: str, exp, datasets: dict, *, active: bool = True, system_metrics: bool = False):
    """The job's run: MLflow with `--experiments`, else untracked; None where not `active`
    (the other DDP ranks). `system_metrics`: sample the machine into the run."""
    from ..tracking import job_run

    if not active:
        return contextlib.nullcontext(None)
    return job_run(
        args.experiments,
        kind="sr",
        experiment=args.experiment,
        rule=rule,
        wildcards={"experiment": args.experiment},
        spec=dataclasses.asdict(exp),
        datasets=datasets,
        system_metrics=system_metrics,
    )


def train_cli(argv: list[str]) -> int:
    """``scorebridge sr-train``: train the score-based prior of one experiment."""
    from ..cli import job_parser
    from .train import report_training, train_prior

    p = job_parser("sr-train", "Training of the score-based prior: `scorebridge sr-train` (rule sr_train).")
    p.add_argument("--era5", required=True, help="ERA5 zarr store")
    p.add_argument("--checkpoint-dir", default=None, help="folder of step checkpoints (resume from the newest)")
    p.add_argument("--figure", default=None, help="the training loss curve to write (PNG)")
    p.add_argument("--out", required=True, help="the trained prior (checkpoint.pt)")
    args = p.parse_args(argv)
    exp = _experiment(args)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with _job(args, "sr_train", exp, {"era5": args.era5}, active=rank0, system_metrics=True) as run:  # only rank 0 logs
        summary = train_prior(exp, args.era5, args.checkpoint_dir, args.out, run=run, experiment=args.experiment)
        if rank0 and run is not None:
            report_training(summary, args.out, run)
            from ..tracking.models import log_prior_model

            log_prior_model(run, args.out)  # the prior as an MLflow model that samples
        if rank0 and args.figure:
            from .diagnostic_figures import training_loss

            training_loss(summary["losses"], args.figure, run=run)
        if rank0:
            print(
                json.dumps(
                    {k: v for k, v in summary.items() if k not in ("train_times", "test_times", "losses")}, indent=1
                )
            )
    return 0


def sample_cli(argv: list[str]) -> int:
    """``scorebridge sr-sample``: posterior ensembles of the held-out times -> samples.zarr."""
    import torch

    from ..cli import job_parser
    from .data import open_era5
    from .prior import load_prior
    from .sample import run_sampling

    p = job_parser("sr-sample", sample_cli.__doc__, experiment_default="default")
    p.add_argument("--era5", required=True, help="ERA5 zarr (truth; the coarse input is its coarse-graining)")
    p.add_argument("--obs", default=None, help="collocated radiosonde observations zarr")
    p.add_argument("--checkpoint", required=True, help="the prior written by sr-train")
    p.add_argument("--device", default=None, help="override sample.device (auto, cpu, cuda)")
    p.add_argument("--out", required=True, help="samples.zarr to write")
    a = p.parse_args(argv)
    exp = _experiment(a)
    torch.manual_seed(exp.run_seed)
    if exp.sample.threads:
        torch.set_num_threads(int(exp.sample.threads))
    ds = open_era5(a.era5)
    prior = load_prior(
        a.checkpoint,
        device=a.device or exp.sample.device,
        precision=exp.sample.precision,
        channels_last=exp.sample.channels_last,
    )
    with _job(a, "sr_sample", exp, {"era5": a.era5, **({"obs": a.obs} if a.obs else {})}, system_metrics=True) as run:
        run_sampling(prior, ds, exp, a.obs, device=prior.device, out=a.out, checkpoint=a.checkpoint, run=run)
    return 0


def evaluate_cli(argv: list[str]) -> int:
    """``scorebridge sr-evaluate``: metrics.json, figures and MLflow for one SR experiment."""
    import numpy as np

    from ..cli import job_parser
    from ..io import write_json
    from .evaluate import evaluate, log_summary

    p = job_parser("sr-evaluate", evaluate_cli.__doc__, experiment_default="default")
    p.add_argument("--era5", required=True, help="ERA5 zarr (the truth)")
    p.add_argument("--obs", default=None, help="collocated radiosonde observations zarr")
    p.add_argument("--samples", required=True, help="samples.zarr written by sr-sample")
    p.add_argument("--figures", required=True, help="directory for the figures")
    p.add_argument("--out", required=True, help="metrics.json to write")
    a = p.parse_args(argv)
    exp = _experiment(a)
    with _job(
        a, "sr_evaluate", exp, {"era5": a.era5, "samples": a.samples, **({"obs": a.obs} if a.obs else {})}
    ) as run:
        # each figure written atomically into the folder (sr_train's loss curve lives there too)
        result = evaluate(a.samples, a.era5, a.obs, options=exp.evaluate, figures=a.figures, run=run)
        scalars = {
            k: float(v)
            for k, v in result["metrics"].items()
            if isinstance(v, (int, float)) and v is not None and np.isfinite(v)
        }
        run.log_metrics(scalars)
        write_json(a.out, result)
        run.log_artifact(a.out)
    log_summary(result)
    return 0
