"""How the command line names the options the core's messages refer to.

The core names an option by its Python parameter (``base.errors.option``); every command
runs inside ``errors.speaking(flag_words)``, so that the same message reads ``--force``
here and ``force=True`` to a library user. A parameter's flag is its name with dashes
(``base_lr`` -> ``--base-lr``) unless ``FLAGS`` says otherwise; ``False`` is the
``--no-`` form.
"""

from __future__ import annotations

from optstate.base.errors import NAMED, Option

# Python parameter -> its flag, where the flag is not the parameter's name with dashes.
FLAGS = {
    "groups": "--group",  # inspect: groups=[0, 2] is --group 0 --group 2
    "params": "--param",
    "output": "-o",
    "values": "--set",  # set: values={"betas": ...}; inspect's values=True is never named
    "values['lr']": "--lr",
    "scheduler_values": "--scheduler-set",
    # simulate and compare read these from command-line texts (sim/spec_text.py)
    "shapes": "--shape",
    "scheduler_args": "--scheduler-arg",
    "assignments": "--set",
    "settings": "--set",  # compare: "lr=0.1" for every optimizer, "adam.lr=0.1" for one
    "cache_dir": "--cache",  # timeline: cache_dir=DIR is --cache DIR
    "use_cache": "--cache",  # timeline: use_cache=False is --no-cache
}


def flag_words(opt: Option) -> str:
    """``--force``, ``--no-stats``, ``--key 'opt.v1'``, ``--lr VALUE``, ``--ignore a
    --ignore b`` (a list): ``opt`` as typed."""
    flag = FLAGS.get(opt.name, "--" + opt.name.replace("_", "-"))
    if opt.value is True:
        return flag
    if opt.value is False:
        return "--no-" + flag.removeprefix("--")
    if opt.value is NAMED and opt.shown is None:
        return flag
    if isinstance(opt.value, (list, tuple)) and opt.shown is None:  # a repeated option
        return " ".join(f"{flag} {item}" for item in opt.value)
    return f"{flag} {opt.shown if opt.shown is not None else opt.value}"
