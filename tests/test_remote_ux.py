"""Remote storage as a new user meets it (issue #21, review R1): URLs refused at once when no
object store reads them as meant (credentials in them, a query string, no bucket), a missing
bucket named as such, the credentials hint when there are none, a DCP folder's parts named
directly, a remote Trainer folder's params named from its model.safetensors header, outputs
ending in '/', the help of inspect and diff."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tests.conftest import ROOT
from tests.test_remote import FIXTURES, adam_state, error_lines, without_where


def one_error(r, *needles: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("ux")
    state = adam_state([(4, 3), (3,)])
    torch.save(state, d / "adam.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(d / "adam_dcp"), no_dist=True)
    return d


# ------------------------------------------------------------------ URLs refused at once

def test_credentials_in_the_url_are_refused_and_never_echoed(cli):
    r = cli("inspect", "s3://AKIAEXAMPLE:s3cr3tValue@bucket/k.pt")
    line = one_error(r, "credentials cannot be given in the URL", "s3://bucket/k.pt")
    assert "s3cr3t" not in r.stderr and "AKIAEXAMPLE" not in r.stderr, r.stderr
    assert "AWS_" in r.stderr and line


def test_a_query_string_on_s3_is_refused_as_such(cli):
    r = cli("inspect", "s3://bucket/k.pt?X-Amz-Signature=abc123")
    one_error(r, "query string", "not supported", "s3://bucket/k.pt")
    assert "abc123" not in r.stderr and "does not exist" not in r.stderr


@pytest.mark.parametrize("url", ["s3://", "s3:///k.pt", "gs://"])
def test_a_url_without_a_bucket(cli, url):
    one_error(cli("inspect", url), f"Error: {url}: the URL names no bucket")


def test_a_missing_bucket_is_named(cli, s3, s3_bucket):
    one_error(cli("inspect", f"s3://{s3_bucket}-typo/run/adam.pt"),
              f"the bucket {s3_bucket}-typo does not exist")
    # the bucket is there, the key is not: no word about the bucket
    line = one_error(cli("inspect", f"s3://{s3_bucket}/run/adam.pt"), "does not exist")
    assert "bucket" not in line


def test_no_credentials_gets_the_credentials_hint(s3, s3_bucket):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "optstate", "inspect",
                        f"s3://{s3_bucket}/adam.pt"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "credentials" in r.stderr.lower() and "Hint:" in r.stderr, r.stderr
    assert "AWS_PROFILE" in r.stderr, r.stderr


# ------------------------------------------------------------------ a DCP folder's parts

@pytest.mark.parametrize("part", [".metadata", "__0_0.distcp"])
def test_a_dcp_part_named_directly_says_give_the_folder(cli, s3, s3_bucket, small, part):
    local = small / "adam_dcp"
    assert (local / part).is_file()
    one_error(cli("inspect", local / part), "DCP checkpoint folder", str(local))
    url = s3.put_dir(local, f"s3://{s3_bucket}/run/adam_dcp")
    one_error(cli("inspect", f"{url}/{part}"), "DCP checkpoint folder", url)


# ------------------------------------------------------- a remote Trainer folder's model

def test_a_remote_trainer_folder_names_params_from_model_safetensors(cli, s3, s3_bucket,
                                                                     tmp_path):
    """No config.json (or none transformers can build): locally the params are named from
    model.safetensors; remotely too, from its header read by range requests."""
    local = tmp_path / "checkpoint-10"
    shutil.copytree(FIXTURES / "runs" / "hf_trainer" / "checkpoint-10", local)
    (local / "config.json").unlink()
    url = s3.put_dir(local, f"s3://{s3_bucket}/run/checkpoint-10")
    r_here, r_there = (cli("inspect", where, "--json", "--no-stats") for where in (local, url))
    assert r_here.exit_code == 0 and r_there.exit_code == 0, (r_here.stderr, r_there.stderr)
    here, there = json.loads(r_here.stdout), json.loads(r_there.stdout)
    names = [p.get("name") for p in here["params"]]
    assert any(names), here["params"][:2]
    assert [p.get("name") for p in there["params"]] == names
    a, b = without_where(here, local, url), without_where(there, local, url)
    assert json.dumps(b).count("optstate-remote-") == 0, b.get("naming")
    assert a == b


# ----------------------------------------------------------------------------- the help

@pytest.mark.parametrize("command", ["inspect", "diff"])
def test_help_mentions_urls_extras_endpoint_and_workers(cli, command):
    out = " ".join(cli(command, "--help", env={"COLUMNS": "80"}).stdout.split())
    for word in ("s3://", "gs://", "az://", "hf://", "http", "optstate[s3]",
                 "AWS_ENDPOINT_URL_S3", "--workers", "torchrun"):
        assert word in out, (word, out)


# ------------------------------------------------------------------------------ outputs

def test_an_existing_remote_dcp_folder_hint_says_remove_it_not_force(cli, s3, s3_bucket,
                                                                        small):
    url = s3.put_dir(small / "adam_dcp", f"s3://{s3_bucket}/out/a_dcp")
    for extra in ((), ("--force",)):
        r = cli("convert", small / "adam.pt", url, *extra)
        one_error(r, url, "already exists")
        assert "--force" not in r.stderr.split("Hint:")[-1], r.stderr
        assert "remove it first" in r.stderr, r.stderr


def test_a_set_output_ending_in_a_slash_is_refused(cli, s3, s3_bucket, small, tmp_path):
    for out in (f"s3://{s3_bucket}/out/dir/", f"{tmp_path}/nodir/"):
        one_error(cli("set", small / "adam.pt", "-o", out, "--lr", "1e-4"),
                  "give a file name")
    assert s3.keys(s3_bucket) == [] and not (tmp_path / "nodir").exists()


def test_model_as_a_url_says_what_is_read_remotely_instead(cli, small):
    r = cli("inspect", small / "adam.pt", "--model", "s3://b/run/model.safetensors")
    one_error(r, "--model takes a local file")
    assert "model.safetensors name its params" in r.stderr, r.stderr


@pytest.mark.parametrize("option, value", [
    ("--save", "s3://b/run/x.pt"), ("--config", "s3://b/run.toml"), ("--plot", "s3://b/p.png")])
def test_simulate_options_that_name_local_files_refuse_urls(cli, tmp_path, option, value):
    """simulate writes and reads local files: a URL there was once the local path 's3:/b/...'
    ('cannot write s3:/b/run/x.pt: folder s3:/b does not exist'). Now one line naming the
    option, and nothing written."""
    args = ["simulate", "--steps", "1", option, value]
    if option != "--save":
        args += ["--save", str(tmp_path / "ok.pt")]
    line = one_error(cli(*args), f"{option} takes a local file, not a URL: {value}")
    assert "s3:/b" not in line.replace("s3://b", "")
    assert list(tmp_path.iterdir()) == []


def test_a_config_url_gets_the_plain_hint_not_the_model_one(cli, small):
    r = cli("check", small / "adam.pt", "--config", "s3://b/run.toml")
    one_error(r, "--config takes a local file")
    assert "copy it to a local file first" in r.stderr
    assert "model.safetensors" not in r.stderr, r.stderr


def test_a_missing_folder_is_named_as_typed(cli, s3, s3_bucket):
    one_error(cli("inspect", f"s3://{s3_bucket}/nothing/"),
              f"s3://{s3_bucket}/nothing/ does not exist")


@pytest.mark.parametrize("url", ["hf://gpt2@main/model.safetensors",
                                 "abfs://container@account.dfs.core.windows.net/run/a.pt"])
def test_an_at_sign_that_is_not_credentials_is_kept(url):
    """hf://REPO@REVISION and abfs://CONTAINER@ACCOUNT are how those stores are named."""
    from optstate.io.remote import _check_url

    _check_url(url.split(":", 1)[0], url, url.split("://", 1)[1])  # raises nothing
