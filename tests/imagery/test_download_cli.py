"""``torchbearer download`` in the foreground: options → scenes in the cache, clear errors otherwise."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from tests.imagery.conftest import SAMPLE_AOI
from torchbearer.imagery.cli import download

app = typer.Typer()
app.command()(download)
app.command("version")(lambda: None)  # a second command keeps `download` a named sub-command


def test_download_command_fetches_into_the_cache(services, env, monkeypatch, tmp_path):
    for key, value in services.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TORCHBEARER_PROJECT", str(tmp_path))
    monkeypatch.setenv("TORCHBEARER_DATA", str(tmp_path / "data"))
    aoi = ",".join(map(str, SAMPLE_AOI))
    args = ["download", f"--aoi={aoi}", "--dates", "2022-10-01/2022-10-10", "--max-cloud", "80", "--resolution", "60"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stack = result.stdout.strip().splitlines()[-1]
    assert stack.startswith(str(tmp_path / "data" / "cache")) and stack.endswith("_60m.tif")


def test_download_command_errors(services, env, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHBEARER_PROJECT", str(tmp_path))
    monkeypatch.delenv("COPERNICUS_USER", raising=False)
    monkeypatch.delenv("COPERNICUS_PASSWORD", raising=False)
    result = CliRunner().invoke(app, ["download", "--aoi", "1,2,3", "--dates", "2022-10-01/2022-10-10"])
    assert result.exit_code == 2 and "needs 4 numbers" in result.output
    result = CliRunner().invoke(app, ["download", f"--aoi={','.join(map(str, SAMPLE_AOI))}", "--dates", "2022-10-01"])
    assert result.exit_code == 1 and "COPERNICUS_USER and COPERNICUS_PASSWORD" in result.output
