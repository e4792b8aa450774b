"""``optstate simulate``: build a real torch optimizer, step it, save its state."""

from __future__ import annotations

from typing import Annotated

import typer

from optstate.cli import (
    UNSAFE_HELP,
    OptstateCommand,
    app,
    errors_to_exit,
    print_json,
    stdout_console,
    warn,
    warn_unsafe,
)

_RUN = "Run"
_SAVE = "Saving and resuming"
_OPT = "Optimizer"


@app.command(no_args_is_help=False, cls=OptstateCommand)
def simulate(
    config: Annotated[str | None, typer.Option(
        "--config", "-c", help="TOML or JSON run config; flags below override it.",
        rich_help_panel=_OPT)] = None,
    optimizer: Annotated[str | None, typer.Option(
        "--optimizer", "-O", help="Any torch.optim class, case-insensitive: SGD, Adam, AdamW, "
        "RMSprop, Adagrad, Adadelta, Adamax, NAdam, RAdam, ASGD, Rprop, LBFGS, SparseAdam, "
        "Adafactor, Muon. \\[default: SGD]",
        rich_help_panel=_OPT)] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate. \\[default: torch's]",
        rich_help_panel=_OPT)] = None,
    momentum: Annotated[float | None, typer.Option(
        help="Momentum (SGD, RMSprop). \\[default: torch's]", rich_help_panel=_OPT)] = None,
    weight_decay: Annotated[float | None, typer.Option(
        help="Weight decay. \\[default: torch's]", rich_help_panel=_OPT)] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Any other hyperparameter, repeatable; tuples "
        "comma-separated: --set betas=0.9,0.95 --set amsgrad=true.",
        rich_help_panel=_OPT)] = None,
    shape: Annotated[list[str] | None, typer.Option(
        metavar="SHAPE", help="Shape of a parameter of the first group, repeatable: "
        "--shape 2x2 --shape 3. \\[default: one 2x2]", rich_help_panel=_OPT)] = None,
    group: Annotated[list[str] | None, typer.Option(
        metavar="SPEC", help="Add a param group (as add_param_group does): shapes and "
        "overrides separated by spaces, e.g. --group \"3x3 lr=1e-4\". Repeatable.",
        rich_help_panel=_OPT)] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="An LR scheduler from torch.optim.lr_scheduler, e.g. StepLR.",
        rich_help_panel=_OPT)] = None,
    scheduler_arg: Annotated[list[str] | None, typer.Option(
        metavar="KEY=VALUE", help="Scheduler argument, repeatable: --scheduler-arg "
        "step_size=5.", rich_help_panel=_OPT)] = None,
    steps: Annotated[int | None, typer.Option(
        help="Optimizer steps to take. \\[default: 10]", rich_help_panel=_RUN)] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed for initial weights and noise. \\[default: 0]", rich_help_panel=_RUN)] = None,
    grad: Annotated[str | None, typer.Option(
        help="Gradient source: constant (every element --grad-value, the tutorial's ones), "
        "normal (seeded noise), quadratic (of 0.5·||w − v||², v = --grad-value), "
        "rosenbrock (2-D, on pairs of elements), none (no gradient). \\[default: constant]",
        rich_help_panel=_RUN)] = None,
    grad_value: Annotated[float | None, typer.Option(
        help="constant: the gradient value; quadratic: the optimum. \\[default: 1.0]",
        rich_help_panel=_RUN)] = None,
    init: Annotated[str | None, typer.Option(
        help="Initial weights: normal (seeded), zeros, ones, constant (--init-value). "
        "\\[default: normal]", rich_help_panel=_RUN)] = None,
    init_value: Annotated[float | None, typer.Option(
        help="Value for --init constant. \\[default: 0.0]", rich_help_panel=_RUN)] = None,
    zero_grad: Annotated[str | None, typer.Option(
        help="What zero_grad() does before each step. none: grads become None (torch >= 2.0 "
        "default), so a step with no gradient skips the param and creates no state. zeros: "
        "grads are zero-filled (older torch, the tutorial), so the step still runs and "
        "creates zero momentum buffers. never: zero_grad is not called and gradients "
        "accumulate (the classic bug). \\[default: none]", rich_help_panel=_RUN)] = None,
    save: Annotated[str | None, typer.Option(
        help="Write optimizer.state_dict() here with torch.save (with a scheduler or "
        "--with-params: a container, see README).", rich_help_panel=_SAVE)] = None,
    save_every: Annotated[int | None, typer.Option(
        metavar="N", help="Also save every N steps, as NAME.step00000N.EXT "
        "(run.step000003.pt).", rich_help_panel=_SAVE)] = None,
    with_params: Annotated[bool, typer.Option(
        "--with-params", help="Save parameter values too, so --resume continues the exact "
        "trajectory.", rich_help_panel=_SAVE)] = False,
    resume: Annotated[str | None, typer.Option(
        help="Load this saved state (safely) into the optimizer and continue for --steps "
        "more steps. Reads what inspect reads: a bare state, the tutorial's container, a "
        "Lightning .ckpt, a Hugging Face Trainer folder (or a URL: s3://bucket/ckpt.pt).",
        rich_help_panel=_SAVE)] = None,
    unsafe: Annotated[bool, typer.Option(
        "--unsafe", help=f"With --resume: {UNSAFE_HELP}", rich_help_panel=_SAVE)] = False,
    record_every: Annotated[str | None, typer.Option(
        metavar="N", help="Record the history (loss, parameter norm, lr) at the start, "
        "at every multiple of N steps and at the last step; 1: every step. auto: the "
        "smallest N that keeps the history to 1000 records and its norms to 5e7 parameter "
        "elements read in all (10 000 steps of a 2x2: every 10th). \\[default: auto]",
        rich_help_panel=_RUN)] = None,
    plot: Annotated[str | None, typer.Option(
        help="Draw loss, learning rate and parameter norm over steps (for a 2-D objective "
        "also the trajectory on its contour plot) to this .png, .svg or .pdf; needs "
        "matplotlib: pip install 'optstate\\[plot]'.", rich_help_panel=_SAVE)] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite existing output files.", rich_help_panel=_SAVE)] = False,
    world_size: Annotated[int | None, typer.Option(
        help="Run sharded on N processes of this machine (torch.distributed, gloo, CPU, "
        "FSDP2); --save then writes a DCP folder (torch.distributed.checkpoint), e.g. "
        "--world-size 2 --save run_dcp/, or one consolidated torch.save file for a name "
        "ending in .pt .pth .pkl .bin .ckpt.", rich_help_panel=_RUN)] = None,
    json_: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    r"""Step a real torch optimizer on synthetic gradients and save its state.

    With no flags: SGD (torch's default lr) on one 2x2 parameter, gradient
    ones, 10 steps, the PyTorch tutorial's setting. Runs are seeded: the same
    flags give the same state bit for bit, and k steps + --resume + N-k steps
    equal N steps.

    Example:
      optstate simulate --lr 0.1 --momentum 0.9 --steps 10 --save sgd.pkl

    AdamW with two param groups and a scheduler, then 10 more steps of it:
      optstate simulate -O adamw --set betas=0.9,0.95 \
        --group "3 weight_decay=0" --scheduler StepLR \
        --scheduler-arg step_size=5 --with-params --save run.pt
      optstate simulate -O adamw --set betas=0.9,0.95 \
        --group "3 weight_decay=0" --scheduler StepLR \
        --scheduler-arg step_size=5 --resume run.pt --steps 10
    """
    with errors_to_exit():
        from optstate.base.errors import ConfigError
        from optstate.io.remote import local_only
        from optstate.io.source import open_source
        from optstate.sim.config import RunSpec, read_config_file, spec_from_dict
        from optstate.sim.report import simulate_report
        from optstate.sim.simulate import parse_record_every
        from optstate.sim.simulate import simulate as run
        from optstate.sim.spec_text import spec_from_flags

        # simulate writes and reads local files (a URL here once became the path 's3:/b/k')
        config, plot = local_only(config, "--config"), local_only(plot, "--plot")
        save = local_only(save, "--save", hint="save it to a local file, then copy it to "
                          "object storage with your usual tool")
        every = parse_record_every(record_every)
        base = spec_from_dict(read_config_file(config), str(config)) if config else RunSpec()
        spec = spec_from_flags(
            base, optimizer=optimizer, assignments=set_, shapes=shape, groups=group,
            common={"lr": lr, "momentum": momentum, "weight_decay": weight_decay},
            scheduler=scheduler, scheduler_args=scheduler_arg, steps=steps, seed=seed,
            grad=grad, grad_value=grad_value, init=init, init_value=init_value,
            zero_grad=zero_grad,
        )
        if plot is not None:  # a missing matplotlib or an existing file: fail before stepping
            from optstate.render.plot import check_plot_target

            check_plot_target(plot, force)
        from optstate.render.progress import Progress, progress_wanted

        wanted = progress_wanted(json=json_)
        if world_size is not None:  # one process per rank: sim/distributed.simulate_sharded
            from optstate.sim.distributed import simulate_sharded

            with Progress("stepping", enabled=wanted):  # a spinner: the ranks report nothing
                result = simulate_sharded(spec, world_size=world_size, save=save,
                                          force=force, resume=resume, save_every=save_every,
                                          with_params=with_params, record_every=every)
        else:
            resume_obj = None
            if resume is not None:
                if unsafe:
                    warn_unsafe()
                from optstate.io.remote import cli_path

                resume_obj = open_source(cli_path(resume), mmap=False, unsafe=unsafe)
                if resume_obj.read is not None:  # a URL: its tensors read now, once
                    from optstate.io.lazy import materialize

                    resume_obj.obj = materialize(resume_obj.obj)
                    resume_obj.siblings = materialize(resume_obj.siblings)
            elif unsafe:
                raise ConfigError("--unsafe only changes how --resume loads its file; "
                                  "there is no --resume")
            with Progress("stepping", enabled=wanted) as progress:
                on_step = progress.steps(spec.steps) if progress is not None else None
                result = run(spec, resume=resume_obj, save=save, save_every=save_every,
                             with_params=with_params, force=force, record_every=every,
                             on_step=on_step)
        report = simulate_report(result)
        if world_size is not None:
            report["world_size"] = world_size
        if plot is not None:
            from optstate.render.plot import write_run_plot

            report["plot"] = str(write_run_plot(report, plot, force=force))
    for w in report["warnings"]:
        warn(w)
    if json_:
        from optstate.render.json_view import dumps

        print_json(dumps(report))
    else:
        from optstate.render.simulate_view import simulate_view

        stdout_console().print(simulate_view(report))
        if plot is not None:
            stdout_console().print(f"wrote {report['plot']}", style="green")

