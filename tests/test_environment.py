"""The first cell's set-up: where it runs, Colab's widget manager and secrets, the model it suggests."""

from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace

import psutil
import pytest

from gemma_widgets.course import environment
from gemma_widgets.host import hardware as machine
from gemma_widgets.precisions import auto_precision
from gemma_widgets.presets import resolve_preset

SECRET = "hf_not_a_real_token_0123456789"


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("GEMMA_MODEL", "HF_TOKEN", "COLAB_RELEASE_TAG", "BINDER_LAUNCH_HOST", "BINDER_REQUEST",
                 "MEM_LIMIT"):
        monkeypatch.setenv(name, "")  # so that teardown restores the variable, set or not
        monkeypatch.delenv(name)
    # Only HF_TOKEN counts here, not a login saved on this machine.
    monkeypatch.setattr(environment, "get_token", lambda: os.environ.get("HF_TOKEN"))
    return monkeypatch


@pytest.fixture
def fake_colab(clean_env):
    """``google.colab`` modules that record the widget-manager call and hold an HF_TOKEN secret."""
    calls = []
    secrets = {"HF_TOKEN": SECRET}

    def get(name):
        if name not in secrets:
            raise KeyError(name)  # Colab raises SecretNotFoundError
        return secrets[name]

    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    colab.output = SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("widgets"))
    colab.userdata = SimpleNamespace(get=get)
    google.colab = colab
    clean_env.setitem(sys.modules, "google", google)
    clean_env.setitem(sys.modules, "google.colab", colab)
    clean_env.setitem(sys.modules, "google.colab.output", colab.output)
    clean_env.setitem(sys.modules, "google.colab.userdata", colab.userdata)
    return SimpleNamespace(calls=calls, secrets=secrets)


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], memory_gb: float,
             online: bool = True) -> None:
    import torch
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", not online)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a: SimpleNamespace(total_memory=int(memory_gb * 1e9)))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(memory_gb * 1e9), int(memory_gb * 1e9)))


def test_where_tells_the_three_places_apart(clean_env):
    assert environment.where() == "local"
    clean_env.setenv("BINDER_LAUNCH_HOST", "https://mybinder.org/")
    assert environment.where() == "binder"
    clean_env.setenv("COLAB_RELEASE_TAG", "release-colab_20261101-060000_RC00")
    assert environment.where() == "colab"


def test_colab_setup_enables_widgets_and_reads_the_secret_without_printing_it(fake_colab, capsys):
    env = environment.setup()
    out = capsys.readouterr().out
    assert fake_colab.calls == ["widgets"]
    assert os.environ["HF_TOKEN"] == SECRET
    assert env.place == "colab" and env.has_token
    assert "HF token set" in out
    assert SECRET not in out and SECRET not in repr(env)


def test_colab_without_the_secret_still_sets_up(fake_colab, capsys):
    fake_colab.secrets.clear()
    env = environment.setup()
    assert fake_colab.calls == ["widgets"]
    assert "HF_TOKEN" not in os.environ
    assert not env.has_token
    assert "HF token not set" in capsys.readouterr().out


def test_a_token_already_in_the_environment_wins_over_colab_secrets(fake_colab):
    os.environ["HF_TOKEN"] = "hf_from_env"
    environment._colab_setup()
    assert os.environ["HF_TOKEN"] == "hf_from_env"


def test_cpu_machine_gets_the_bundled_model_and_says_why(clean_env, capsys):
    import torch

    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    env = environment.setup()
    assert (env.suggested_model, env.gpu) == ("bundled", None)
    assert env.suggested_precision == auto_precision(resolve_preset("bundled"))
    assert f"Suggested: bundled in {env.suggested_precision} (no GPU" in capsys.readouterr().out


def test_t4_gets_a_gemma_2_model_in_a_precision_it_computes_well(clean_env):
    """A T4 (compute capability 7.5) emulates bf16 slowly, though is_bf16_supported() says True."""
    clean_env.setenv("HF_TOKEN", SECRET)
    fake_gpu(clean_env, "Tesla T4", (7, 5), 15.8)
    env = environment.describe()
    assert env.suggested_model in environment.GPU_CANDIDATES
    assert env.suggested_precision == auto_precision(resolve_preset(env.suggested_model))
    assert env.suggested_precision != "bf16"
    assert "no native bf16" in env.reason and "compute capability 7.5" in str(env)
    assert SECRET not in str(env) + env.suggestion


def test_a100_gets_gemma_2_9b_in_bf16(clean_env):
    clean_env.setenv("HF_TOKEN", SECRET)
    fake_gpu(clean_env, "NVIDIA A100-SXM4-40GB", (8, 0), 42.5)
    env = environment.describe()
    assert (env.suggested_model, env.suggested_precision) == ("google/gemma-2-9b-it", "bf16")
    assert "native bf16" in env.reason


def test_gpu_without_token_stays_on_the_bundled_model_and_says_how_to_get_more(clean_env):
    fake_gpu(clean_env, "Tesla T4", (7, 5), 15.8)
    env = environment.describe()
    assert env.suggested_model == "bundled"
    assert "HF_TOKEN" in env.reason


def test_offline_gpu_machine_without_cached_gemma_2_stays_on_the_bundled_model(clean_env):
    clean_env.setenv("HF_TOKEN", SECRET)
    fake_gpu(clean_env, "NVIDIA L4", (8, 9), 23.7, online=False)
    env = environment.describe()
    assert env.suggested_model == "bundled"
    assert "offline" in env.reason


def test_gemma_model_variable_overrides_the_suggestion(clean_env):
    clean_env.setenv("GEMMA_MODEL", "tiny-random-gemma2")
    env = environment.describe()
    assert env.suggested_model == "tiny-random-gemma2"
    assert "GEMMA_MODEL" in env.reason


def test_memory_limit_takes_a_container_limit_below_the_machine(clean_env, tmp_path):
    total = psutil.virtual_memory().total
    limit = tmp_path / "memory.max"
    limit.write_text("2147483648\n")
    assert machine.memory_limit_bytes((str(limit),)) == 2147483648
    limit.write_text("max\n")  # cgroup v2: no limit
    assert machine.memory_limit_bytes((str(limit),)) == total
    clean_env.setenv("MEM_LIMIT", "1073741824")  # what Binder's spawner sets
    assert machine.memory_limit_bytes(()) == 1073741824


def test_a_binder_sized_limit_makes_notebooks_take_their_light_path(clean_env):
    clean_env.setenv("MEM_LIMIT", str(2 * 1024**3))
    assert environment.describe().small_memory
    clean_env.delenv("MEM_LIMIT")
    assert environment.describe().small_memory == (machine.memory_limit_bytes() / 1e9 < 4)


def _fake_pip(monkeypatch, returncode: int, stderr: str = "") -> list:
    """Stub pip (record its arguments) and pretend no optional package is installed."""
    calls = []
    monkeypatch.setattr(environment.subprocess, "run",
                        lambda args, **kw: calls.append(args) or SimpleNamespace(returncode=returncode,
                                                                                  stderr=stderr))
    monkeypatch.setattr(environment, "installed", lambda module: False)
    return calls


def test_extras_on_colab_are_installed_with_colabs_packages_pinned(fake_colab, monkeypatch, capsys):
    error = "ERROR: Cannot install openvino because these package versions have conflicting dependencies."
    calls = _fake_pip(monkeypatch, returncode=1, stderr=f"noise\n{error}\n")
    status = environment.install_extras("openvino")
    ((args),) = calls
    assert args[-3:] == ["openvino", "openvino-genai", "openvino-tokenizers"] and "-c" in args
    assert status == {"openvino": error}
    assert f"openvino: not available: {error}" in capsys.readouterr().out  # one line, and the notebook goes on


def test_extras_elsewhere_are_checked_not_installed(clean_env, monkeypatch, capsys):
    calls = _fake_pip(monkeypatch, returncode=0)
    assert environment.install_extras("bnb") == {"bnb": "bitsandbytes not installed (pip install bitsandbytes)"}
    assert calls == [] and "bnb: not available" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Unknown extra"):
        environment.install_extras("cuda")


def test_colab_constraints_pin_what_is_installed():
    from importlib.metadata import version

    assert environment.colab_constraints() == [f"{name}=={version(name)}" for name in environment.COLAB_PACKAGES]


def test_quiet_keeps_the_profilers_start_and_stop_markers_off_stderr():
    """Notebook 05 profiles a decode step; without quiet() kineto prints 'USDT: ... profiler_start'."""
    import subprocess

    code = ("from gemma_widgets.course.environment import quiet; quiet()\n"
            "import torch\nfrom torch.profiler import ProfilerActivity, profile\n"
            "with profile(activities=[ProfilerActivity.CPU]) as prof:\n    torch.ones(4) @ torch.ones(4)\n"
            "print(len(prof.key_averages()) > 0)")
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert "profiler_start" not in done.stderr and "USDT" not in done.stderr, done.stderr
